"""A steering sweep of L layers x K coefficients: batched (several settings per forward pass, the shared prompt
prefix run once) vs one forward pass per setting, side by side in one run, on the embedded model.

Both sides score the same settings on the same prompts with the teacher-forced logit metric (log p(accept
prefix) - log p(reject prefix)) and must agree: the largest difference is printed and checked (<= 1e-3 nats).

    .venv/bin/python benchmarks/bench_steering.py [--layers 3] [--alphas 4] [--requests 2] [--rounds 2]
    .venv/bin/python -m benchmarks --only steering
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from afprobe.experiments import SteerSetting, median_norms, prepare_prompts, run_sweep
from afprobe.models import ModelConfig, load_model, make_backend
from afprobe.scenarios import ScenarioConfig, build_scenario, tokenize_prompts
from benchmarks._timing import print_table, time_side_by_side


def main(
    *,
    rounds: int = 2,
    quick: bool = False,
    n_layers: int = 3,
    n_alphas: int = 4,
    requests: int = 2,
    batch_size: int = 4,
) -> dict[str, Any]:
    torch.manual_seed(0)
    if quick:
        rounds, requests = 1, 1
    lm = load_model(ModelConfig(dtype="float32", device="cpu"))
    backend = make_backend(lm, "hooks")
    prompts = build_scenario(ScenarioConfig(limit=requests, system_prompts=["helpful_only"]))
    items = prepare_prompts(lm.tokenizer, tokenize_prompts(lm.tokenizer, prompts))
    layers = np.linspace(lm.n_layers // 4, 3 * lm.n_layers // 4, n_layers).round().astype(int).tolist()
    alphas = np.linspace(-2.0, 2.0, n_alphas).tolist()
    norms = median_norms(backend, items, layers, "from_cue")
    gen = torch.Generator().manual_seed(0)
    dirs = {
        layer: torch.nn.functional.normalize(torch.randn(lm.d_model, generator=gen), dim=0)
        for layer in layers
    }
    settings = [
        SteerSetting("probe", layer, a, 0, dirs[layer], norms[layer]) for layer in layers for a in alphas
    ]
    rows = 2 * batch_size  # each prompt is scored on two rows: the accept and the reject continuation
    out: dict[str, np.ndarray] = {}

    def batched() -> None:
        out["batched"] = run_sweep(backend, items, settings, batch_size=batch_size, max_rows=64).metric

    def loop() -> None:  # one forward pass per setting per batch, each over the whole prompt
        out["loop"] = run_sweep(
            backend, items, settings, batch_size=batch_size, max_rows=rows, share_prefix=False
        ).metric

    times = time_side_by_side(
        {"one forward per setting (loop)": loop, "batched sweep (afprobe)": batched}, rounds=rounds
    )
    diff = float(np.abs(out["batched"] - out["loop"]).max())
    speedup = times["one forward per setting (loop)"] / times["batched sweep (afprobe)"]
    mean_len = float(np.mean([len(it.tok.input_ids) for it in items]))
    ok = speedup >= 5 and diff <= 1e-3
    print_table(
        f"steering sweep: {len(layers)} layers x {len(alphas)} alphas = {len(settings)} settings on "
        f"{len(items)} prompts (~{mean_len:.0f} tokens), steered from the cue on, median of {rounds}",
        times,
        "one forward per setting (loop)",
    )
    print(f"speed-up {speedup:.1f}x (target >= 5x); max |batched - loop| = {diff:.2e} nats")
    return {
        "times_s": times,
        "speedup": speedup,
        "max_abs_diff_nats": diff,
        "settings": len(settings),
        "prompts": len(items),
        "mean_tokens": mean_len,
        "target": ">=5x, same metric within 1e-3 nats",
        "verdict": "met" if ok else "not met",
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--alphas", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    main(rounds=a.rounds, quick=a.quick, n_layers=a.layers, n_alphas=a.alphas, requests=a.requests)
