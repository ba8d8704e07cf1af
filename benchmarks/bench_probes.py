"""Batched torch logistic probe vs a loop of scikit-learn ``LogisticRegression``, side by side in one run.

Both fit the same model on the embedded model's cache: every layer x every named position, L2 logistic
regression with C=1 on standardized features (scikit-learn: ``StandardScaler`` + lbfgs, ``max_iter=1000`` so it
converges; torch: :func:`afprobe.probes.fit_logistic_batched`, exact Newton, all problems in one call). One
request-grouped split (4/5 of requests train, 1/5 test). Each side is warmed up once, then timed ``--rounds``
times (median kept). Accuracy is held-out accuracy per (layer, position), averaged.

    .venv/bin/python benchmarks/bench_probes.py                      # builds a small embedded cache first
    .venv/bin/python benchmarks/bench_probes.py runs/x/activations.h5
    .venv/bin/python -m benchmarks --only probes
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import ModelConfig
from afprobe.probes import fit_logistic_batched, grouped_folds
from afprobe.scenarios import ScenarioConfig


def build_cache(out: Path, limit: int) -> Path:
    cfg = CacheRunConfig(
        model=ModelConfig(device="cpu", dtype="float32"),
        scenario=ScenarioConfig(limit=limit),
        cache=CacheConfig(batch_size=16),
    )
    return CacheRunner(cfg, out, progress=False).run()


def load_problems(path: Path, seed: int) -> dict[str, Any]:
    """``X[layer * position, prompt, d_model]``, labels and a request-grouped train/test split."""
    with ActivationReader(path) as r:
        X = np.stack([r.layer(layer) for layer in r.layers])  # [layer, prompt, position, d]
        n_layers, n, n_pos, d = X.shape
        X = X.transpose(0, 2, 1, 3).reshape(n_layers * n_pos, n, d)
        y = r.labels
        test = grouped_folds(np.asarray(r.meta["request_id"]).astype(str), 5, seed) == 0
        return {
            "X": X,
            "y": y,
            "test": test,
            "n_layers": n_layers,
            "n_positions": n_pos,
            "d_model": d,
            "model": r.attrs.get("model_name", r.model_id),
        }


def fit_sklearn(X: np.ndarray, y: np.ndarray, test: np.ndarray, C: float) -> tuple[np.ndarray, int]:
    accs = np.zeros(len(X))
    not_converged = 0
    for b, x in enumerate(X):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            scaler = StandardScaler().fit(x[~test])
            lr = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(x[~test]), y[~test])
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        accs[b] = lr.score(scaler.transform(x[test]), y[test])
    return accs, not_converged


def fit_torch(X: np.ndarray, y: np.ndarray, test: np.ndarray, C: float, device: torch.device) -> np.ndarray:
    Xtr = torch.from_numpy(np.ascontiguousarray(X[:, ~test])).to(device)
    ytr = torch.from_numpy(y[~test]).to(device=device, dtype=Xtr.dtype)
    fit = fit_logistic_batched(Xtr, ytr, C=C)
    scores = fit.decision(torch.from_numpy(np.ascontiguousarray(X[:, test])).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    pred = (scores > 0).cpu().numpy()
    return np.asarray((pred == y[test]).mean(1))


def median_time(fn: Any, rounds: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main(
    activations: str | Path | None = None,
    *,
    rounds: int = 3,
    quick: bool = False,
    limit: int = 8,
    C: float = 1.0,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Print the table and return the measurements (``times_s``: sklearn first, the reference).

    ``threads`` caps torch's and the BLAS libraries' CPU threads for both sides (default 1: the same single
    core each, which also keeps the ratio steady on a shared machine); ``None`` leaves the defaults. On a CPU the
    comparison is then repeated with both libraries at their default threading (``speedup_default_threads``).
    """
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = (
            Path(activations)
            if activations
            else build_cache(Path(tmp) / "activations.h5", 4 if quick else limit)
        )
        data = load_problems(path, seed)
    X, y, test = data["X"], data["y"], data["test"]
    rounds = 1 if quick else rounds

    def both(n_threads: int | None) -> tuple[float, float, np.ndarray, np.ndarray, int, int]:
        old_threads = torch.get_num_threads()
        try:
            if n_threads:
                torch.set_num_threads(n_threads)
            with threadpool_limits(n_threads) if n_threads else nullcontext():
                t_sk, (acc_sk, not_conv) = median_time(lambda: fit_sklearn(X, y, test, C), rounds)
                t_th, acc_th = median_time(lambda: fit_torch(X, y, test, C, dev), rounds)
            return t_sk, t_th, acc_sk, acc_th, not_conv, torch.get_num_threads()
        finally:
            torch.set_num_threads(old_threads)

    t_sk, t_th, acc_sk, acc_th, not_conv, used_threads = both(threads)
    # the same comparison with both libraries at their default threading (what a user gets on this machine)
    default = both(None) if threads and not quick and dev.type == "cpu" else None
    gap = acc_th - acc_sk
    speedup = t_sk / t_th
    ok = speedup >= 20 and abs(float(gap.mean())) <= 0.01
    res = {
        "model": data["model"],
        "problems": len(X),
        "layers": data["n_layers"],
        "positions": data["n_positions"],
        "d_model": data["d_model"],
        "train_prompts": int((~test).sum()),
        "test_prompts": int(test.sum()),
        "device": str(dev),
        "cpu_threads": used_threads,
        "times_s": {"sklearn LogisticRegression loop": t_sk, f"batched torch probe ({dev})": t_th},
        "speedup": speedup,
        **(
            {"speedup_default_threads": default[0] / default[1], "default_threads": default[5]}
            if default
            else {}
        ),
        "sklearn_accuracy": float(acc_sk.mean()),
        "torch_accuracy": float(acc_th.mean()),
        "accuracy_gap_points": float(100 * gap.mean()),
        "max_abs_gap_points": float(100 * np.abs(gap).max()),
        "sklearn_not_converged": int(not_conv),
        "target": ">=20x faster, mean held-out accuracy within 1 point",
        "verdict": "met" if ok else "not met",
    }
    print(
        f"{res['model']}: {res['layers']} layers x {res['positions']} positions = {res['problems']} probes, "
        f"d_model {res['d_model']}, {res['train_prompts']} train / {res['test_prompts']} test prompts "
        f"(request-grouped), C={C}, median of {rounds}"
    )
    print(f"{'method':<44}{'time (s)':>10}{'held-out acc':>14}")
    print(f"{'scikit-learn LogisticRegression, loop':<44}{t_sk:>10.3f}{acc_sk.mean():>14.4f}")
    print(f"{'afprobe batched torch probe (' + str(dev) + ')':<44}{t_th:>10.3f}{acc_th.mean():>14.4f}")
    print(
        f"speed-up {speedup:.1f}x; accuracy gap {res['accuracy_gap_points']:+.2f} points "
        f"(max |gap| over probes {res['max_abs_gap_points']:.2f}); sklearn not converged: {not_conv}; "
        f"target {res['verdict']}"
    )
    if default:
        print(
            f"with both libraries at their default threading ({default[5]} torch threads): sklearn "
            f"{default[0]:.3f} s, batched torch {default[1]:.3f} s, speed-up {default[0] / default[1]:.1f}x"
        )
    return res


def _cli() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("activations", nargs="?", type=Path, help="an activation file (default: build one)")
    ap.add_argument("--limit", type=int, default=8, help="requests for the cache built when none is given")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both sides (0: library defaults)")
    a = ap.parse_args()
    return main(
        a.activations,
        rounds=a.rounds,
        quick=a.quick,
        limit=a.limit,
        C=a.C,
        device=a.device,
        seed=a.seed,
        threads=a.threads or None,
    )


if __name__ == "__main__":
    _cli()
