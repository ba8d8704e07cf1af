"""Probes at scale: the probe stage's work at one candidate (layer, position) of a 4,000-prompt x d_model 4,096
cache (5 folds x (task + 5 permutation draws) + 10 inner training sets of nested selection (one per pair of
outer folds, read on both) + 1 full-data fit = 41 problems on one X; the default permutation test adds more
draws of the same kind), fitted by afprobe's batched torch probe (solver chosen by shape: batched L-BFGS here)
and by the scikit-learn loop the stage runs for probe ``logistic``, side by side in one run, on synthetic
residual-stream-like activations (``benchmarks/_synthetic.py``).

scikit-learn takes seconds per problem at this size on one core, so it fits a stratified subset (every task fold,
two permutation folds, two inner folds, the full fit); its time for all problems is the per-kind mean times the
count of each kind (an extrapolation, stated). The shared-kernel Newton solver (``probes.solver: newton``, which
works in the span of the training rows) is timed on two problems and extrapolated (each builds its own kernels
there, so problems sharing training rows would cost it less: an upper estimate).
Accuracy: held-out accuracy of the same cross-validation problems, batched minus scikit-learn.

Times are CPU seconds of this process (``time.process_time``), each side pinned to the same number of threads
(default 1): on a machine shared with other jobs, wall-clock time measures the neighbours as much as the code.
Wall-clock seconds are reported beside them.

    .venv/bin/python benchmarks/bench_probe_scale.py [--quick] [--threads 1]
    .venv/bin/python -m benchmarks --only probe_scale
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from afprobe.probes import ProbeConfig
from afprobe.probes._evaluate import Problems, fit_problems, solver_for
from benchmarks._memory import measure_cpu
from benchmarks._synthetic import held_out_accuracy, stage_problems, synthetic_activations

TARGET = 20.0


def _subset(problems: Problems, idx: list[int]) -> Problems:
    return Problems(problems.pos[idx], problems.y[idx], problems.train[idx])


def main(
    *, quick: bool = False, n: int = 4000, d: int = 4096, threads: int | None = 1, seed: int = 0
) -> dict:
    if quick:
        n, d = 1000, 1024
    cfg = ProbeConfig()
    X, y, groups = synthetic_activations(n, d, seed=seed)
    problems, kinds, held = stage_problems(y, groups, cfg)
    cpu = torch.device("cpu")
    first = {k: [i for i, kk in enumerate(kinds) if kk == k] for k in ("task", "null", "inner", "full")}
    sk_idx = first["task"] + first["null"][:2] + first["inner"][:2] + first["full"]
    newton_idx = [first["task"][0], first["null"][0]]
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads) if threads else nullcontext():
            t_batched, wall_batched, mem_batched, fitted = measure_cpu(
                lambda: fit_problems("torch_logistic", X[None], problems, cfg, cpu)
            )
            sk_times, sk_scores, wall_sk = [], [], 0.0
            for i in sk_idx:
                t0, w0 = time.process_time(), time.perf_counter()
                sk_scores.append(
                    fit_problems("logistic", X[None], _subset(problems, [i]), cfg, cpu).scores[0]
                )
                sk_times.append(time.process_time() - t0)
                wall_sk += time.perf_counter() - w0
            newton_cfg = cfg.model_copy(update={"solver": "newton"})
            t0 = time.process_time()
            fit_problems("torch_logistic", X[None], _subset(problems, newton_idx), newton_cfg, cpu)
            t_newton_each = (time.process_time() - t0) / len(newton_idx)
    finally:
        torch.set_num_threads(old)
    counts = {k: len(v) for k, v in first.items()}
    per_kind = {
        k: float(np.mean([t for i, t in zip(sk_idx, sk_times, strict=True) if kinds[i] == k])) for k in counts
    }
    t_sklearn = sum(counts[k] * per_kind[k] for k in counts)
    keyed = [i for i in sk_idx if held[i] is not None]
    sub_held = [held[i] for i in keyed]
    acc_b = held_out_accuracy(fitted.scores[keyed], _subset(problems, keyed), sub_held)
    sk_keyed = np.stack([s for i, s in zip(sk_idx, sk_scores, strict=True) if held[i] is not None])
    acc_s = held_out_accuracy(sk_keyed, _subset(problems, keyed), sub_held)
    gap = 100 * (acc_b - acc_s)
    task = [j for j, i in enumerate(keyed) if kinds[i] == "task"]
    speedup = t_sklearn / t_batched
    ok = speedup >= TARGET and abs(float(gap.mean())) <= 1.0
    res = {
        "n_prompts": n,
        "d_model": d,
        "problems": len(problems),
        "solver": solver_for(cfg, n, d, problems, cpu),
        "cpu_threads": threads or torch.get_num_threads(),
        "times_s": {
            "scikit-learn loop (extrapolated from a stratified subset)": t_sklearn,
            "afprobe batched probe (auto solver)": t_batched,
            "afprobe shared-kernel Newton (extrapolated)": t_newton_each * len(problems),
        },
        "speedup": speedup,
        "speedup_vs_newton": t_newton_each * len(problems) / t_batched,
        "sklearn_cpu_seconds_per_problem": per_kind,
        "wall_seconds": {"batched": wall_batched, "sklearn_subset": wall_sk},
        "fast_products": cfg.fast_products,
        "sklearn_problems_timed": len(sk_idx),
        "batched_peak_mib": mem_batched,
        "task_accuracy_batched": float(acc_b[task].mean()),
        "task_accuracy_sklearn": float(acc_s[task].mean()),
        "accuracy_gap_points": float(gap.mean()),
        "max_abs_gap_points": float(np.abs(gap).max()),
        "target": f">={TARGET:.0f}x faster than the scikit-learn loop at 4000 x 4096, accuracy within 1 point",
        "verdict": "met" if ok and not quick else "not met" if not ok else "quick run (not the target size)",
    }
    print(
        f"probe stage at one (layer, position): {n} prompts x d_model {d}, {len(problems)} problems, solver "
        f"{res['solver']}, {res['cpu_threads']} thread(s)\n"
        f"  CPU seconds (wall-clock for the batched fit: {wall_batched:.1f} s)\n"
        f"  scikit-learn loop {t_sklearn:8.1f} s (extrapolated: {len(sk_idx)} problems timed, "
        f"{', '.join(f'{k} {v:.2f} s' for k, v in per_kind.items())} each)\n"
        f"  batched probe     {t_batched:8.1f} s (peak {mem_batched or float('nan'):.0f} MiB above baseline)\n"
        f"  Newton (shared)   {t_newton_each * len(problems):8.1f} s (extrapolated from {len(newton_idx)})\n"
        f"  speed-up {speedup:.1f}x (target {TARGET:.0f}x); held-out accuracy gap {gap.mean():+.2f} points "
        f"(max |gap| {np.abs(gap).max():.2f}); task accuracy batched {acc_b[task].mean():.4f} vs scikit-learn "
        f"{acc_s[task].mean():.4f}: {res['verdict']}"
    )
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both sides (0: library defaults)")
    a = ap.parse_args()
    main(quick=a.quick, n=a.n, d=a.d, threads=a.threads or None)
