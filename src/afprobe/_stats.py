"""Statistics shared by the stages (below them all, importing none): resampling requests, permutation p-values,
corrections for multiple comparisons, and power by simulation.

- :func:`request_resample_counts`: the cluster bootstrap's draws (requests resampled with replacement);
  :func:`bootstrap_ratio` / :func:`bootstrap_mean` their percentile intervals, :func:`gap_status` the gap's label.
- :func:`spearman`: rank correlation (ties averaged); :func:`finite_or_none` for JSON.
- :func:`pair_flips`: the permutation null of the tier labels (free and paid swapped within random pairs).
- :func:`permutation_p` and :func:`maxstat_adjusted`: p-values of an observed statistic against permuted ones,
  the second corrected for every hypothesis of a family at once (the single-step max-statistic method of Westfall &
  Young 1993, which controls the family-wise error rate under any dependence between the hypotheses).
- :func:`holm`: Holm's step-down correction of a few p-values (family-wise error rate).
- :func:`bootstrap_p_value`: the two-sided p-value that matches a percentile bootstrap interval.
- :func:`min_detectable_shift`: the smallest shift of a paired mean that a test detects with the asked power,
  simulated by resampling the measured per-request noise.

Every function is pure and seeded; docs/statistics.md states each test's null and correction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def complete_pairs(y: np.ndarray, pairs: np.ndarray) -> bool:
    """Whether every pair id holds exactly one row of each label (so swapping labels in a pair is a flip)."""
    _, inverse, counts = np.unique(np.asarray(pairs), return_inverse=True, return_counts=True)
    ones = np.bincount(inverse, weights=np.asarray(y, dtype=float), minlength=len(counts))
    return bool((counts == 2).all() and (ones == 1).all())


def pair_flips(y: np.ndarray, pairs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``[n, rows]``: ``n`` seeded draws of the labels with each pair's two labels swapped with probability 1/2,
    independently across pairs. Needs :func:`complete_pairs`.

    Under the null that a prompt's activations carry nothing of its tier, the two prompts of a pair are
    exchangeable, so every draw is as likely as the real labels: the permutation null of the tier."""
    if not complete_pairs(y, pairs):
        raise ValueError("pair_flips needs every pair to hold one row of each label")
    _, inverse = np.unique(np.asarray(pairs), return_inverse=True)
    flip = np.random.default_rng(seed).integers(0, 2, size=(n, int(inverse.max()) + 1))
    return np.asarray(y, dtype=np.int64)[None, :] ^ flip[:, inverse]


def permutation_p(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))``: never 0, exact (valid at every level) when the observed
    statistic is exchangeable with the null draws; ties count against the observation."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def maxstat_adjusted(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Family-wise adjusted p-values of every hypothesis: ``observed[...]`` against the null draws' maximum over
    the whole family, ``null[draw, ...]`` (single-step max-T). A hypothesis with adjusted p <= alpha is rejected
    with family-wise error rate <= alpha, whatever the dependence between hypotheses."""
    obs = np.asarray(observed, dtype=float)
    nmax = np.nanmax(np.asarray(null, dtype=float).reshape(len(null), -1), axis=1)
    counts = (nmax[:, None] >= obs.reshape(1, -1)).sum(0)
    return ((1 + counts) / (1 + len(nmax))).reshape(obs.shape)


def holm(p: Sequence[float | None] | np.ndarray) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error rate); ``None`` (not tested) stays ``None`` and does
    not count in the family."""
    vals = [(i, float(x)) for i, x in enumerate(p) if x is not None and np.isfinite(float(x))]
    out: list[float | None] = [None] * len(p)
    m, running = len(vals), 0.0
    for rank, (i, x) in enumerate(sorted(vals, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * x))
        out[i] = running
    return out


def bootstrap_p_value(draws: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of ``null`` from bootstrap draws of a statistic: twice the smaller tail beyond ``null``
    (at most 1), so the percentile interval at level ``1 - a`` excludes ``null`` about when p < a. With B draws it
    is never below ``1 / (B + 1)``."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    lo = (1 + np.sum(d <= null)) / (1 + len(d))
    hi = (1 + np.sum(d >= null)) / (1 + len(d))
    return float(min(1.0, 2 * min(lo, hi)))


def min_detectable_shift(
    values: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    detects: Callable[[np.ndarray, np.ndarray], bool],
    *,
    power: float = 0.8,
    n_sims: int = 200,
    seed: int = 0,
    grid: int = 24,
    offset: float = 0.0,
) -> float | None:
    """The smallest shift ``delta`` added to the centred ``values`` (one per pair) that ``detects(values,
    groups)`` flags in at least ``power`` of ``n_sims`` simulated studies of the same size, each drawing its
    requests with replacement from the measured ones (the measured noise, its clustering by request included).

    ``delta`` is bisected on the grid ``offset + k * SE / (grid / 8)``, ``k = 1..grid`` (up to 8 cluster standard
    errors of the mean beyond ``offset``, e.g. a test's own minimum effect; power grows with the shift); None when
    even the largest is not detected (or there are fewer than 2 requests)."""
    v = np.asarray(values, dtype=float)
    inverse, _ = request_resample_counts(groups, 1, 0)
    n_req = int(inverse.max()) + 1 if len(v) else 0
    if n_req < 2:
        return None
    centred = v - v.mean()
    members = [np.flatnonzero(inverse == g) for g in range(n_req)]
    sums = np.array([centred[m].sum() for m in members])
    se = float(np.sqrt(n_req / (n_req - 1) * np.sum(sums**2)) / len(v)) or float(np.abs(centred).max()) or 1.0
    rng = np.random.default_rng(seed)
    studies = []
    for _ in range(n_sims):
        pick = rng.integers(0, n_req, size=n_req)
        rows = np.concatenate([members[g] for g in pick])
        labels = np.concatenate([np.full(len(members[g]), k) for k, g in enumerate(pick)])
        studies.append((centred[rows], labels))
    deltas = offset + np.linspace(0.0, 8.0, grid + 1)[1:] * se

    def powered(i: int) -> bool:
        hits = sum(bool(detects(noise + deltas[i], lab)) for noise, lab in studies)
        return hits >= power * n_sims

    if not powered(len(deltas) - 1):
        return None
    lo, hi = -1, len(deltas) - 1  # bisection: power grows with the shift
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if powered(mid) else (mid, hi)
    return float(deltas[hi])


def cluster_bootstrap_means(
    values: np.ndarray, groups: Sequence[Any] | np.ndarray, masks: np.ndarray, *, n_boot: int, seed: int
) -> np.ndarray:
    """``[n_boot, n_masks]``: the mean of ``values`` over each row of ``masks [n_masks, items]`` in every resample
    of whole requests, all masks sharing the same resamples (so their differences are paired by request). The
    draws of :func:`request_resample_counts` with the same seed, as the experiments' percentile intervals use."""
    v = np.asarray(values, dtype=float)
    inverse, w = request_resample_counts(groups, n_boot, seed)
    g = w.shape[1]
    m = np.asarray(masks, dtype=float).reshape(-1, len(v))
    sums, counts = np.zeros((len(m), g)), np.zeros((len(m), g))
    for k in range(len(m)):
        np.add.at(sums[k], inverse, v * m[k])
        np.add.at(counts[k], inverse, m[k])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w @ sums.T) / (w @ counts.T)
