"""Statistics shared by probes and experiments: resampling requests (the cluster bootstrap), gap status, ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def request_resample_counts(
    groups: Sequence[Any] | np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(inverse, counts)``: each item's request index (requests sorted by their ids as text) and an
    ``[n, n_requests]`` matrix of how often each request is drawn in ``n`` seeded resamples with replacement."""
    labels, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(n, len(labels)))
    counts = np.zeros((n, len(labels)))
    np.add.at(counts, (np.arange(n)[:, None], draws), 1.0)
    return inverse, counts


def _group_sums(values: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros(n_groups)
    np.add.at(out, inverse, values)
    return out


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    groups: Sequence[Any],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """``sum(numerator) / sum(denominator)`` and its percentile CI, resampling whole groups (requests)."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    value = float(num.sum() / den.sum()) if den.sum() != 0 else float("nan")
    if len(num) == 0:
        return float("nan"), (float("nan"), float("nan"))
    if len({str(g) for g in groups}) < 2:  # one request: nothing to resample
        return value, (float("nan"), float("nan"))
    inverse, w = request_resample_counts(groups, n_boot, seed)
    g = w.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = (w @ _group_sums(num, inverse, g)) / (w @ _group_sums(den, inverse, g))
    boots = boots[np.isfinite(boots)]
    if len(boots) == 0:
        return value, (float("nan"), float("nan"))
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return value, (float(lo), float(hi))


def bootstrap_mean(
    values: np.ndarray,
    groups: Sequence[Any],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` and its percentile CI, resampling whole groups (requests)."""
    v = np.asarray(values, dtype=float)
    return bootstrap_ratio(v, np.ones_like(v), groups, n_boot=n_boot, ci=ci, seed=seed)


MIN_REQUESTS = 5


def gap_status(gap: float, ci: tuple[float, float], min_gap: float, n_requests: int | None = None) -> str:
    """``none`` (|gap| below ``min_gap``), ``not significant`` (the CI spans 0, or fewer than ``MIN_REQUESTS``
    requests to resample) or ``significant``."""
    if not np.isfinite(gap) or abs(gap) < min_gap:
        return "none"
    lo, hi = ci
    if n_requests is not None and n_requests < MIN_REQUESTS:
        return "not significant"
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return "not significant"
    return "significant"


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as ``scipy.stats.rankdata``)."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the finite entries of both; NaN with fewer than 3 or a constant side."""
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def finite_or_none(x: float | None) -> float | None:
    """JSON-friendly: NaN and infinities become ``None``."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
