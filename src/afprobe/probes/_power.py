"""Power of the probe test at this file's sizes: the smallest held-out AUROC the permutation test detects.

Synthetic activations with the measured noise: the file's own activations at the headline site, with labels
swapped within random pairs (so the real tier signal is decoupled from them and becomes noise of the measured
structure), plus a planted tier direction (a random unit vector ``u``, ``+/- s * sd(X u)`` by label). At each
strength ``s`` the headline probe is cross-validated on the same request-grouped folds; a study *detects* when its
AUROC is above the permutation test's critical value (the family maximum the null draws had to beat). The
smallest strength detected in at least ``power`` of the studies, and the mean held-out AUROC there, are the
smallest effect this run could have found; a planted effect at one site is conservative, since the test's
maximum is over the whole family. The strength is bisected on a geometric grid, so only a handful of strengths
are simulated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from afprobe._stats import complete_pairs, pair_flips
from afprobe.probes._config import ProbeConfig
from afprobe.probes._evaluate import Problems, fit_problems
from afprobe.probes._metrics import auroc

STRENGTHS: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.002, 2.0, 25))


def _studies(
    X: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray,
    folds: np.ndarray,
    probe: str,
    strength: float,
    cfg: ProbeConfig,
    device: torch.device,
    seed: int,
    step: int,
) -> np.ndarray:
    """Held-out AUROC of ``cfg.power_sims`` simulated studies at one strength (see the module docstring)."""
    rng = np.random.default_rng([seed, 29, step])
    labels = pair_flips(y, pairs, cfg.power_sims, int(rng.integers(2**31)))
    n, d = X.shape
    n_folds = int(folds.max()) + 1
    Xs = []
    for lab in labels:
        v = rng.normal(size=d)
        u = v / float(np.linalg.norm(v))
        Xs.append(X + np.outer(strength * float(np.std(X @ u)) * (2.0 * lab - 1.0), u))
    k = np.repeat(np.arange(len(labels)), n_folds)
    problems = Problems(k, labels[k], np.stack([folds != f for f in range(n_folds)] * len(labels)))
    scores = fit_problems(probe, np.stack(Xs).astype(np.float32), problems, cfg, device).scores
    aucs = np.empty(len(labels))
    for i, lab in enumerate(labels):
        oof = np.empty(n)
        for f in range(n_folds):
            oof[folds == f] = scores[i * n_folds + f, folds == f]
        aucs[i] = auroc(lab, oof)
    return aucs


def auroc_power(
    X: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray,
    folds: np.ndarray,
    probe: str,
    critical: float | None,
    cfg: ProbeConfig,
    device: torch.device,
    *,
    seed: int,
    power: float = 0.8,
) -> dict[str, Any] | None:
    """Bisect the strength on a geometric grid (power grows with it), ``cfg.power_sims`` studies per strength
    tried, on ``X[prompt, d]`` (see the module docstring). None when there is no critical value, no simulations
    are asked for, or the pairs are incomplete."""
    if critical is None or cfg.power_sims == 0 or not complete_pairs(y, pairs):
        return None
    tried: dict[int, np.ndarray] = {}

    def at(i: int) -> float:
        if i not in tried:
            tried[i] = _studies(X, y, pairs, folds, probe, STRENGTHS[i], cfg, device, seed, i)
        return float(np.mean(tried[i] > critical))

    found: int | None = None
    lo, hi = -1, len(STRENGTHS) - 1
    if at(hi) >= power:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at(mid) >= power else (mid, hi)
        found = hi
    rows = [
        {"strength": STRENGTHS[i], "mean_auroc": float(a.mean()), "power": float(np.mean(a > critical))}
        for i, a in sorted(tried.items())
    ]
    mean = None if found is None else float(tried[found].mean())
    return {
        "power": power,
        "critical_auroc": critical,
        "n_sims": cfg.power_sims,
        "min_detectable_auroc": mean,
        "min_detectable_excess": None if mean is None else mean - 0.5,
        "min_detectable_strength": None if found is None else STRENGTHS[found],
        "curve": rows,
        "method": "the headline site's activations with labels swapped in random pairs, plus a planted random "
        "direction (+/- strength x its sd); detected = held-out AUROC above the permutation test's critical value",
    }
