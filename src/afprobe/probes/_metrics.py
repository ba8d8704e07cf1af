"""Grouped folds, shuffled labels, and accuracy / AUROC with bootstrap confidence intervals over requests."""

from __future__ import annotations

import numpy as np

from afprobe._errors import AfprobeError
from afprobe._stats import request_resample_counts


def grouped_folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold id per row such that every group (request) falls in one fold only.

    Groups are shuffled (seeded) and dealt largest first into the currently smallest fold, so folds come out
    balanced in rows even when groups differ in size.
    """
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(uniq) < n_folds:
        fix = f"set folds={len(uniq)} or cache more requests" if len(uniq) >= 2 else "cache more requests"
        raise AfprobeError(
            f"{len(uniq)} request(s) is fewer than the {n_folds} cross-validation folds (folds are grouped by "
            f"request): {fix}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    sizes = np.zeros(n_folds, dtype=np.int64)
    for g in order:
        k = int(np.argmin(sizes))
        fold_of_group[g] = k
        sizes[k] += counts[g]
    return fold_of_group[inverse]


def shuffled_labels(y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """The shuffled-label baseline: labels permuted at random among the prompts of each request.

    Permuting within requests (rather than across the whole file) keeps every request, and so every grouped
    fold, as balanced as the real labels; a global permutation would leave each held-out fold's balance
    anti-correlated with its training folds' and push the baseline below chance.
    """
    rng = np.random.default_rng(seed)
    out = np.array(y, copy=True)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = y[rng.permutation(idx)]
    return out


def balanced_weights(y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per-row weights ``[..., n]``: 0 outside ``train``; inside, each class sums to half the training rows."""
    tr = train.astype(np.float64)
    n1 = (tr * y).sum(-1, keepdims=True)
    n0 = (tr * (1 - y)).sum(-1, keepdims=True)
    total = n0 + n1
    w1 = np.divide(total, 2 * n1, out=np.ones_like(n1), where=n1 > 0)
    w0 = np.divide(total, 2 * n0, out=np.ones_like(n0), where=n0 > 0)
    return tr * np.where(y == 1, w1, w0)


def accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean((scores > 0).astype(np.int64) == y))


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is missing."""
    return float(weighted_auroc(y, scores, np.ones((1, len(y))))[0])


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of ``weights`` ``[k, n]`` (row multiplicities, e.g. bootstrap counts) at once.

    Exact with ties: scores are sorted once and equal scores grouped, so a positive and a negative with the
    same score count one half.
    """
    order = np.argsort(scores, kind="stable")
    s, yy, w = scores[order], y[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(np.where(yy, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(yy, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class RequestBootstrap:
    """Resample requests with replacement ``n`` times (seeded); the same resamples serve every curve, so
    intervals at different layers are paired."""

    def __init__(self, groups: np.ndarray, n: int, seed: int, ci: float = 0.95):
        inverse, counts = request_resample_counts(groups, n, seed)
        self.weights = counts[:, inverse]  # [n, prompt]: how often each prompt's request was drawn
        self.q = (100 * (1 - ci) / 2, 100 * (1 + ci) / 2)

    def accuracy_ci(self, y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
        correct = ((scores > 0).astype(np.int64) == y).astype(np.float64)
        acc = self.weights @ correct / self.weights.sum(1)
        return _interval(acc, self.q)

    def auroc_ci(self, y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
        return _interval(weighted_auroc(y, scores, self.weights), self.q)


def _interval(values: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, q)
    return float(lo), float(hi)
