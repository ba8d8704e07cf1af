"""Attribution patching (one forward + one backward pass per batch) vs exact activation patching over every
layer x named position of the embedded model, side by side in one run: exact patching done the usual way (one
forward pass per site) and as afprobe runs it (several sites per pass, the unpatched prefix and the blocks below
the patched layer shared). Also prints the rank correlation between the attribution and exact estimates.

    .venv/bin/python benchmarks/bench_patching.py [--pairs 2] [--rounds 1]
    .venv/bin/python -m benchmarks --only patching
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from afprobe.experiments import (
    PatchSetting,
    attribution_patching,
    collect,
    exact_patching,
    logit_scores,
    pair_indices,
    prepare_prompts,
    spearman,
)
from afprobe.models import ModelConfig, load_model, make_backend
from afprobe.scenarios import POSITION_NAMES, ScenarioConfig, build_scenario, tokenize_prompts
from benchmarks._timing import print_table, time_side_by_side


def main(*, rounds: int = 1, quick: bool = False, n_pairs: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    if quick:
        n_pairs = 1
    lm = load_model(ModelConfig(dtype="float32", device="cpu"))
    backend = make_backend(lm, "hooks")
    prompts = build_scenario(ScenarioConfig(limit=1, system_prompts=["helpful_only"]))
    items = prepare_prompts(lm.tokenizer, tokenize_prompts(lm.tokenizer, prompts))
    pairs = pair_indices([it.prompt for it in items])[:n_pairs]
    batch_size = len(pairs)  # every recipient in one batch: one pass per site in the usual way
    layers = list(range(lm.n_layers + 1))
    positions = list(POSITION_NAMES)
    store = collect(backend, items, pairs, layers, positions, 0, [], batch_size=batch_size)
    attribution_patching(backend, store, pairs, positions[:1], "denoise", batch_size=batch_size)  # warm-up
    settings = [PatchSetting(store, layer, q) for layer in layers for q in positions]
    out: dict[str, np.ndarray] = {}

    def exact_loop() -> None:
        out["loop"] = exact_patching(
            backend,
            store,
            pairs,
            settings,
            "denoise",
            batch_size=batch_size,
            max_rows=2 * batch_size,
            share_prefix=False,
        ).metric

    def exact() -> None:
        out["exact"] = exact_patching(
            backend, store, pairs, settings, "denoise", batch_size=batch_size
        ).metric

    def attribution() -> None:
        out["attribution"] = attribution_patching(
            backend, store, pairs, positions, "denoise", batch_size=batch_size
        )

    names = (
        "exact patching, one forward per site",
        "exact patching, afprobe batched",
        "attribution patching",
    )
    times = time_side_by_side(
        dict(zip(names, (exact_loop, exact, attribution), strict=True)), rounds, warmup=0
    )
    # the exact shift of each patch is the patched metric minus the unpatched paid run's; compare their means
    acc, rej = logit_scores(backend, items, batch_size=batch_size)
    paid = np.array([(acc - rej)[b] for _, b in pairs])
    exact_shift = (out["exact"] - paid[None, :]).mean(1)
    attr_shift = np.nanmean(out["attribution"], axis=2).reshape(-1)
    rho = spearman(exact_shift, attr_shift)
    diff = float(np.abs(out["exact"] - out["loop"]).max())
    speedup = times[names[0]] / times[names[2]]
    vs_batched = times[names[1]] / times[names[2]]
    print_table(
        f"patching every layer x position: {len(layers)} layers x {len(positions)} positions = "
        f"{len(settings)} sites on {len(pairs)} pairs, median of {rounds}",
        times,
        names[0],
    )
    print(
        f"attribution is {speedup:.1f}x cheaper than exact patching one pass per site (target >= 20x) and "
        f"{vs_batched:.1f}x cheaper than afprobe's batched exact patching; Spearman rho with exact = {rho:.3f}; "
        f"max |batched - per-site exact| = {diff:.2e} nats"
    )
    return {
        "times_s": times,
        "speedup": speedup,
        "speedup_vs_batched_exact": vs_batched,
        "spearman_rho": rho,
        "max_abs_diff_nats": diff,
        "sites": len(settings),
        "pairs": len(pairs),
        "target": ">=20x cheaper than exact patching (one forward pass per site)",
        "verdict": "met" if speedup >= 20 else "not met",
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    main(rounds=a.rounds, quick=a.quick, n_pairs=a.pairs)
