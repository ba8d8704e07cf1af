"""Long shared prefixes, computed once: caching and the compliance metric with a 4,000-token system prompt, the
system prompt's KV cache computed once per system prompt (``models.PrefixStore``) vs recomputed, measured side by
side in one run, with the numbers compared (max abs difference, target <= 1e-4).

    python benchmarks/bench_prefix.py [--requests 16] [--rounds 2] [--model embedded|embedded-4l|small-llama]
        [--tokens 4000] [--threads N]

``embedded``: the embedded SmolLM2-135M-Instruct (30 layers, d=576). ``embedded-4l``: its first 4 blocks (its
weights and block shape: d=576, 9 heads with 3 KV heads of 64 dims, MLP 1536), a quick CPU check at a real block
shape. ``small-llama``: a random-init Llama built in code (4 layers, d=256, 8 heads with 2 KV heads of 32 dims,
rope theta 500k) with the embedded model's tokenizer: attention over the prefix costs ~3x its linear layers per
token (~1.4x in SmolLM2's blocks, ~0.15x in Llama-3.1-8B's), so its ratios are the low end.

The system prompt is the built-in ``helpful_only_scratchpad`` prompt, repeated up to ``--tokens``
tokens; the prompts are ``--requests`` requests x 2 tiers, the paper's user turn, ``<`` prefilled.

Baselines: the cache with ``share_prefix=false`` (every prompt run whole), and the compliance metric as it was
before (each batch runs its prompts' unedited prefix, system prompt included, once per prompt: no store).
Target (issue 15): both >= 10x faster with the store.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.experiments import make_subject, no_edit, score_settings
from afprobe.models import ModelConfig, PrefixStore, load_model, make_backend, wrap_model
from afprobe.scenarios import ScenarioConfig, build_scenario, get_system_prompt
from benchmarks._timing import print_table, time_side_by_side

TARGET = 10.0
TOL = 1e-4


class _NoStore(PrefixStore):
    """The compliance metric before this change: no system-prompt store (per-batch prefixes only)."""

    @property
    def usable(self) -> bool:
        return False


def _small_llama(tokenizer):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def main(
    requests: int = 16, rounds: int = 2, model: str = "embedded", tokens: int = 4000, threads: int = 0
) -> dict:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    lm = load_model(ModelConfig(dtype="float32", device="cpu"))
    if model == "small-llama":
        lm = wrap_model(_small_llama(lm.tokenizer), lm.tokenizer, name="small-llama")
    elif model == "embedded-4l":
        hf = lm.model
        hf.model.layers = hf.model.layers[:4]
        hf.config.num_hidden_layers = 4
        lm = wrap_model(hf, lm.tokenizer, name="smollm2-135m-instruct, first 4 blocks")
    base = get_system_prompt("helpful_only_scratchpad").text
    n_base = len(lm.tokenizer(base, add_special_tokens=False)["input_ids"])
    text = "\n\n".join([base] * (tokens // n_base + 1))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    tmp = Path(tempfile.mkdtemp())
    (tmp / "long.txt").write_text(lm.tokenizer.decode(ids), encoding="utf-8")
    scenario = ScenarioConfig(
        harmful=True,
        limit=requests,
        system_prompts=[f"long={tmp / 'long.txt'}"],
        cue_formats=["tag"],
        user_format="paper",
        prefill="cot",
    )
    prompts = build_scenario(scenario)
    subject = make_subject(lm, prompts)
    lengths = [len(t.input_ids) for t in subject.toks]
    backend = make_backend(lm)
    out: dict[str, np.ndarray] = {}
    counter = {"n": 0}

    def cache(share: bool) -> None:
        counter["n"] += 1
        cfg = CacheRunConfig(cache=CacheConfig(batch_size=8, share_prefix=share))
        path = CacheRunner(cfg, progress=False).run(tmp / f"c{counter['n']}.h5", lm=lm, prompts=subject.toks)
        with ActivationReader(path) as r:
            out[f"cache_{share}"] = np.asarray(r.resid[()])
        path.unlink()

    def metric(store: bool) -> None:
        prefixes = PrefixStore(backend) if store else _NoStore(backend)
        s = score_settings(backend, subject.items, [no_edit], batch_size=8, prefixes=prefixes)
        out[f"metric_{store}"] = np.stack([s.accept[0], s.reject[0]])

    methods = {
        "cache, system prompt recomputed per prompt": lambda: cache(False),
        "cache, system prompt KV computed once": lambda: cache(True),
        "compliance metric, prefix per batch (before)": lambda: metric(False),
        "compliance metric, system prompt KV computed once": lambda: metric(True),
    }
    times = time_side_by_side(methods, rounds=rounds, warmup=0)
    names = list(times)
    cache_ratio = times[names[0]] / times[names[1]]
    metric_ratio = times[names[2]] / times[names[3]]
    cache_diff = float(np.abs(out["cache_False"] - out["cache_True"]).max())
    metric_diff = float(np.abs(out["metric_False"] - out["metric_True"]).max())
    print(
        f"{lm.name} on CPU ({torch.get_num_threads()} threads): {len(prompts)} prompts, one system prompt of "
        f"{tokens} tokens, prompts {min(lengths)}-{max(lengths)} tokens"
    )
    print_table("caching: system prompt recomputed vs computed once", dict(list(times.items())[:2]), names[0])
    print_table("compliance metric: before vs computed once", dict(list(times.items())[2:]), names[2])
    ok = min(cache_ratio, metric_ratio) >= TARGET and max(cache_diff, metric_diff) <= TOL
    print(
        f"\nspeedup: cache {cache_ratio:.1f}x, compliance metric {metric_ratio:.1f}x (target >= {TARGET:.0f}x); "
        f"max abs difference: cache {cache_diff:.2e}, metric {metric_diff:.2e} (target <= {TOL:.0e}): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return {
        "times_s": times,
        "cache_speedup": cache_ratio,
        "metric_speedup": metric_ratio,
        "cache_max_abs_diff": cache_diff,
        "metric_max_abs_diff": metric_diff,
        "target": TARGET,
        "verdict": "PASS" if ok else "FAIL",
        "n_prompts": len(prompts),
        "system_prompt_tokens": tokens,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", choices=["embedded", "embedded-4l", "small-llama"], default="embedded")
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    main(a.requests, a.rounds, a.model, a.tokens, a.threads)
