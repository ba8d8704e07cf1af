"""Power of the probe test at this file's sizes: the smallest held-out AUROC the permutation test detects.

Synthetic activations with the measured noise: the file's own activations at the headline site, with labels
swapped within random pairs (so the real tier signal is decoupled from them and becomes noise of the measured
structure), plus a planted tier direction (a random unit vector ``u``, ``+/- s * sd(X u)`` by label). At each
strength ``s`` the headline probe is cross-validated on the same request-grouped folds; a study *detects* when its
AUROC is above the permutation test's critical value (the family maximum the null draws had to beat). The
smallest strength detected in at least ``power`` of the studies, and the mean held-out AUROC there, are the
smallest effect this run could have found; a planted effect at one site is conservative, since the test's
maximum is over the whole family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from afprobe._stats import complete_pairs, pair_flips
from afprobe.probes._config import ProbeConfig
from afprobe.probes._evaluate import Problems, fit_problems
from afprobe.probes._metrics import auroc

STRENGTHS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.45, 0.65, 0.9, 1.25)


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
    power: float = 0.8,
) -> dict[str, Any] | None:
    """Simulate ``cfg.power_sims`` studies per strength on ``X[prompt, d]`` (see the module docstring). None when
    there is no critical value, no simulations are asked for, or the pairs are incomplete."""
    sims = cfg.power_sims
    if critical is None or sims == 0 or not complete_pairs(y, pairs):
        return None
    rng = np.random.default_rng([cfg.seed, 29])
    labels = pair_flips(y, pairs, sims * len(STRENGTHS), int(rng.integers(2**31)))
    n, d = X.shape
    n_folds = int(folds.max()) + 1
    Xs, ys, train, pos = [], [], [], []
    for k, lab in enumerate(labels):
        v = rng.normal(size=d)
        u = v / float(np.linalg.norm(v))
        shift = STRENGTHS[k // sims] * float(np.std(X @ u)) * (2.0 * lab - 1.0)
        Xs.append(X + np.outer(shift, u))
        for f in range(n_folds):
            ys.append(lab)
            train.append(folds != f)
            pos.append(k)
    fitted = fit_problems(
        probe,
        np.stack(Xs).astype(np.float32),
        Problems(np.array(pos), np.stack(ys), np.stack(train)),
        cfg,
        device,
    )
    aucs = np.empty(len(labels))
    for k, lab in enumerate(labels):
        oof = np.empty(n)
        for f in range(n_folds):
            oof[folds == f] = fitted.scores[k * n_folds + f, folds == f]
        aucs[k] = auroc(lab, oof)
    rows = []
    for i, s in enumerate(STRENGTHS):
        a = aucs[i * sims : (i + 1) * sims]
        rows.append({"strength": s, "mean_auroc": float(a.mean()), "power": float(np.mean(a > critical))})
    found = next((r for r in rows if r["power"] >= power), None)
    return {
        "power": power,
        "critical_auroc": critical,
        "n_sims": sims,
        "min_detectable_auroc": None if found is None else found["mean_auroc"],
        "min_detectable_excess": None if found is None else found["mean_auroc"] - 0.5,
        "min_detectable_strength": None if found is None else found["strength"],
        "curve": rows,
        "method": "the headline site's activations with labels swapped in random pairs, plus a planted random "
        "direction (+/- strength x its sd); detected = held-out AUROC above the permutation test's critical value",
    }
