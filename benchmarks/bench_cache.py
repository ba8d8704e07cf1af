"""Caching overhead on CPU with the embedded model: afprobe's cache (HDF5 write included) vs the bare forward pass,
and the usual alternatives, over the same batches (16 prompts each), measured side by side in one run.

    python benchmarks/bench_cache.py [--batches 3] [--rounds 3]

Target (issue "Foundation"): afprobe cache <= 1.10x the bare forward.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from afprobe.activations import ActivationWriter, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import ModelConfig, load_model, make_backend, right_pad
from afprobe.scenarios import CUE_FORMATS, SYSTEM_PROMPTS, build_pairs, builtin_requests, tokenize_prompts
from benchmarks._timing import print_table, time_side_by_side

TARGET = 1.10


def main(batches: int = 3, rounds: int = 3, backend: str = "nnsight") -> dict:
    torch.manual_seed(0)
    lm = load_model(ModelConfig(dtype="float32", device="cpu"))
    prompts = build_pairs(builtin_requests()[:batches], list(CUE_FORMATS), list(SYSTEM_PROMPTS))
    toks = tokenize_prompts(lm.tokenizer, prompts)  # 16 prompts per request: one batch each
    pad = int(lm.tokenizer.pad_token_id)
    bs = 16
    data = [right_pad([t.input_ids for t in toks[i : i + bs]], pad) for i in range(0, len(toks), bs)]
    mean_len = sum(len(t.input_ids) for t in toks) / len(toks)
    layers = list(range(lm.n_layers + 1))
    tmp = Path(tempfile.mkdtemp())

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask in data:
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def bare_trunk() -> None:  # the stricter reference: no unembedding, like the cache itself
        with torch.inference_mode():
            for ids, mask in data:
                lm.model.model(input_ids=ids, attention_mask=mask, use_cache=False)

    counter = {"n": 0}

    def afprobe_cache(name: str) -> None:  # the runner's loop: forward, gather, float conversion, HDF5 write
        counter["n"] += 1
        cfg = CacheRunConfig(model=ModelConfig(backend=name), cache=CacheConfig(batch_size=bs))  # type: ignore[arg-type]
        runner = CacheRunner(cfg, progress=False)
        writer = ActivationWriter(
            tmp / f"c{counter['n']}.h5",
            run_key="bench",
            n_prompts=len(toks),
            layers=layers,
            position_names=cfg.cache.positions,
            d_model=lm.d_model,
            max_len=max(len(t.input_ids) for t in toks),
            dtype="float32",
            batch_size=bs,
            meta=_dummy_meta(len(toks)),
            attrs={"pad_token_id": pad},
        )
        runner._fill(writer, lm, toks, layers)
        writer.finalize()

    def hidden_states() -> None:
        with torch.inference_mode():
            for ids, mask in data:
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)

    nn = make_backend(lm, "nnsight")

    def nnsight_every_layer() -> None:
        with torch.inference_mode():
            for ids, mask in data:
                nn.run(ids, mask, read_layers=layers, read_positions=None, logits=True)

    tl_lm = copy.copy(lm)
    tl_lm.model = copy.deepcopy(lm.model)  # TransformerLens switches its module to eager attention
    tl = make_backend(tl_lm, "transformer_lens").bridge  # type: ignore[attr-defined]

    def tl_run_with_cache() -> None:
        with torch.inference_mode():
            for ids, mask in data:
                tl.run_with_cache(ids, attention_mask=mask)

    methods = {
        "bare forward (model(...), logits)": bare,
        "bare forward, trunk only (model.model(...), no logits)": bare_trunk,
        f"afprobe cache ({backend} backend, all {len(layers)} layers x 4 positions, HDF5)": lambda: (
            afprobe_cache(backend)
        ),
        "HF output_hidden_states=True": hidden_states,
        "nnsight saving every layer (full sequence)": nnsight_every_layer,
        "TransformerLens run_with_cache": tl_run_with_cache,
    }
    other = "hooks" if backend != "hooks" else "nnsight"
    methods[f"afprobe cache ({other} backend)"] = lambda: afprobe_cache(other)
    times = time_side_by_side(methods, rounds=rounds)
    print(
        f"embedded model on CPU ({torch.get_num_threads()} threads), {len(data)} batches x {bs} prompts, "
        f"mean prompt {mean_len:.0f} tokens"
    )
    print_table("caching vs bare forward", times, "bare forward (model(...), logits)")
    names = list(times)
    ratio = times[names[2]] / times[names[0]]
    strict = times[names[2]] / times[names[1]]
    verdict = "PASS" if max(ratio, strict) <= TARGET else "FAIL"
    print(
        f"\nafprobe cache / bare forward = {ratio:.3f}x; / trunk-only forward = {strict:.3f}x "
        f"(target <= {TARGET:.2f}x on both): {verdict}"
    )
    return {
        "times_s": times,
        "cache_ratio": ratio,
        "cache_ratio_vs_trunk": strict,
        f"cache_ratio_{other}_backend": times[names[-1]] / times[names[0]],
        "target": TARGET,
        "batches": len(data),
        "batch_size": bs,
        "mean_tokens": mean_len,
    }


def _dummy_meta(n: int) -> dict[str, list]:
    return {
        "pair_id": list(range(n)),
        "harmful": [True] * n,
        **{
            c: ["x"] * n
            for c in ("request_id", "tier", "cue_format", "system_prompt", "category", "request_text")
        },
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="nnsight")
    args = ap.parse_args()
    main(args.batches, args.rounds, args.backend)
