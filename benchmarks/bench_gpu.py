"""Caching overhead on a GPU at real shapes: a random-initialised Llama-3.1-8B (its config, bf16; no download).

    python benchmarks/bench_gpu.py [--batches 12] [--batch-size 16] [--seq 512] [--rounds 3]

Side by side over the same batches: the bare forward pass (trunk only: no unembedding, like the cache), the
full forward with logits, and afprobe's cache runner (every layer x 4 positions, device-to-host copies and
HDF5 writes to local disk included). Reports tokens/s, the cache's throughput as a fraction of the bare
forward's (target >= 0.95), the bare forward's model FLOP/s as a fraction of the GPU's dense bf16 peak, and the
peak GPU memory of each cached batch (flat: no growth per batch).

Skips cleanly without CUDA. ``--shape tiny --device cpu`` runs the same code on a small config (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from afprobe.activations import ActivationWriter, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import make_tiny_tokenizer, wrap_model
from afprobe.scenarios import TokenizedPrompt
from benchmarks._timing import print_table

TARGET = 0.95
POSITIONS = ["cue", "system_end", "user_end", "last"]

# Dense bf16 tensor-core peak (FLOP/s) by device-name fragment, most specific first.
BF16_PEAK = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "tiny": {
        "vocab_size": 259,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    },
}


def bf16_peak(name: str) -> float | None:
    for fragment, peak in BF16_PEAK:
        if fragment.lower() in name.lower():
            return peak
    return None


def forward_flops_per_token(cfg: Any, seq: int) -> float:
    """2 x (non-embedding parameters) + attention scores and values (2 x 2 x layers x seq/2 x d, causal)."""
    d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * ff  # q, o; k, v; gate, up, down
    return 2 * layers * per_layer + 2 * 2 * layers * (seq / 2) * d


def build_model(shape: str, device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def synthetic_prompts(n: int, seq: int, vocab: int) -> list[TokenizedPrompt]:
    """Prompts of ``seq`` random tokens (the cache reads only ids and positions)."""
    g = torch.Generator().manual_seed(0)
    toks = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        pos = {"cue": seq // 4, "system_end": seq // 2, "user_end": seq - 8, "last": seq - 1}
        toks.append(TokenizedPrompt(prompt=None, text="", input_ids=ids, positions=pos))  # type: ignore[arg-type]
    return toks


def main(
    batches: int = 12,
    batch_size: int = 16,
    seq: int = 512,
    rounds: int = 3,
    shape: str = "llama-3.1-8b",
    device: str | None = None,
    quick: bool = False,
) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "none")
    if device == "none":
        print("no CUDA device: the GPU benchmark is skipped (run it on a GPU machine)")
        return {"skipped": "no CUDA device"}
    if quick:
        batches, rounds = min(batches, 3), min(rounds, 2)
    on_cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    model = build_model(shape, device, dtype)
    lm = wrap_model(model, make_tiny_tokenizer(), name=f"random-{shape}")
    toks = synthetic_prompts(batches * batch_size, seq, model.config.vocab_size)
    ids = torch.tensor([t.input_ids for t in toks], device=device)
    data = [ids[i : i + batch_size] for i in range(0, len(toks), batch_size)]
    layers = list(range(lm.n_layers + 1))
    cfg = CacheRunConfig(cache=CacheConfig(batch_size=batch_size))
    tmp = Path(tempfile.mkdtemp())
    sync: Callable[[], None] = torch.cuda.synchronize if on_cuda else (lambda: None)
    counter = {"n": 0}
    memory: list[int] = []

    def bare_trunk() -> None:
        with torch.inference_mode():
            for x in data:
                model.model(input_ids=x, use_cache=False)
        sync()

    def bare_logits() -> None:
        with torch.inference_mode():
            for x in data:
                model(input_ids=x, use_cache=False, logits_to_keep=1)
        sync()

    prepared: dict[str, Any] = {}

    def prepare_cache() -> None:  # untimed: file creation is a once-per-run cost, not a per-batch one
        counter["n"] += 1
        runner = CacheRunner(cfg, progress=False)
        prepared["runner"], prepared["path"] = runner, tmp / f"c{counter['n']}.h5"
        prepared["writer"] = _writer(prepared["path"], len(toks), layers, lm.d_model, seq, batch_size)
        if on_cuda:
            _track_memory(prepared["writer"], memory)

    def afprobe_cache() -> None:
        prepared["runner"]._fill(prepared["writer"], lm, toks, layers)
        sync()

    def finish_cache() -> None:
        prepared["writer"].finalize()
        prepared["path"].unlink()

    methods = {
        "bare forward, trunk only (no unembedding)": (None, bare_trunk, None),
        "bare forward with logits (last token)": (None, bare_logits, None),
        f"afprobe cache (all {len(layers)} layers x 4 positions, HDF5)": (
            prepare_cache,
            afprobe_cache,
            finish_cache,
        ),
    }
    times = time_with_setup(methods, rounds=rounds)
    name = torch.cuda.get_device_name(0) if on_cuda else f"{device} ({shape} smoke test)"
    tokens = batches * batch_size * seq
    names = list(times)
    tps = {k: tokens / v for k, v in times.items()}
    throughput = tps[names[2]] / tps[names[0]]
    flops = forward_flops_per_token(model.config, seq) * tps[names[0]]
    peak = bf16_peak(name) if on_cuda else None
    print(
        f"\n{name}: random-init {shape} in {str(dtype).removeprefix('torch.')}, {batches} batches x "
        f"{batch_size} prompts x {seq} tokens"
    )
    print_table("caching vs bare forward (GPU)", times, names[0])
    for k, v in tps.items():
        print(f"{k:58s} {v:12,.0f} tokens/s")
    verdict = "PASS" if throughput >= TARGET else "FAIL"
    print(f"\ncache throughput / bare forward = {throughput:.3f} (target >= {TARGET}): {verdict}")
    mfu = flops / peak if peak else None
    if peak and mfu is not None:
        print(
            f"bare forward: {flops / 1e12:.1f} TFLOP/s = {mfu:.1%} of the {peak / 1e12:.0f} TFLOP/s bf16 peak"
        )
    growth = (max(memory[2:]) - memory[1]) if len(memory) > 2 else None
    if growth is not None:
        print(f"peak GPU memory per cached batch: growth after batch 2 = {growth / 2**20:.1f} MiB")
    return {
        "device": name,
        "times_s": times,
        "tokens_per_s": tps,
        "cache_throughput_ratio": throughput,
        "bare_forward_fraction_of_bf16_peak": mfu,
        "bare_forward_tflops": flops / 1e12,
        "memory_growth_mib": None if growth is None else growth / 2**20,
        "target": TARGET,
        "verdict": verdict,
        "shape": shape,
        "batch_size": batch_size,
        "seq": seq,
    }


Step = Callable[[], None] | None


def time_with_setup(
    methods: dict[str, tuple[Step, Callable[[], None], Step]], rounds: int
) -> dict[str, float]:
    """Median seconds of each method's middle callable, in interleaved rounds after one warm-up round; the
    setup and teardown around it are not timed."""
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds + 1):
        for name, (setup, fn, teardown) in methods.items():
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            if r:
                samples[name].append(time.perf_counter() - t0)
            if teardown:
                teardown()
    return {name: statistics.median(s) for name, s in samples.items()}


def _writer(out: Path, n: int, layers: list[int], d: int, seq: int, bs: int) -> ActivationWriter:
    return ActivationWriter(
        out,
        run_key="bench",
        n_prompts=n,
        layers=layers,
        position_names=POSITIONS,
        d_model=d,
        max_len=seq,
        dtype="float32",
        batch_size=bs,
        meta={
            "pair_id": list(range(n)),
            "harmful": [True] * n,
            **{
                c: ["x"] * n
                for c in ("request_id", "tier", "cue_format", "system_prompt", "category", "request_text")
            },
        },
        attrs={"pad_token_id": 0},
    )


def _track_memory(writer: ActivationWriter, memory: list[int]) -> None:
    real = writer.write_batch

    def write_batch(*args: Any, **kwargs: Any) -> None:  # per batch: the peak since the previous batch
        real(*args, **kwargs)
        memory.append(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()

    writer.write_batch = write_batch  # type: ignore[method-assign]
    memory.clear()
    torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu with --shape tiny")
    a = ap.parse_args()
    t0 = time.perf_counter()
    main(a.batches, a.batch_size, a.seq, a.rounds, a.shape, a.device)
    print(f"({time.perf_counter() - t0:.0f} s)")
