"""The headline without peeking: nested selection of the best site, its stability, and the max-statistic
permutation test over every probe tried.

- **Nested selection**: inside each outer fold, the site (layer, position after the cue) is chosen by an inner
  cross-validation over the other outer folds only, then scored on the outer fold it never saw; the pooled
  outer-fold scores give the headline AUROC and accuracy, unbiased by the choice (its mean over null data is
  chance, tested). How often the outer folds agree on the site is its stability.
- **Permutation test**: the statistic is the maximum cross-validated AUROC over the whole family (every probe type
  x layer x position after the cue); its null comes from refitting every probe of the family on labels swapped
  within pairs (:mod:`afprobe.probes._labels`). The p-value of the maximum says whether the tier is decodable at
  all; each layer's (and site's) p-value, adjusted by the same max-statistic null, says where, with the family-wise
  error rate controlled across layers, positions and probe types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from afprobe._stats import maxstat_adjusted, permutation_p
from afprobe.probes._metrics import RequestBootstrap, accuracy, auroc

MIN_NESTED_FOLDS = 3


def set_metrics(y_sets: np.ndarray, oof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(auroc, accuracy)`` of every label set and position, ``[set, position]``, from out-of-fold scores
    ``oof[set, position, prompt]`` against ``y_sets[set, prompt]`` (NaN where a set was not fitted; ties count one
    half, as :func:`~afprobe.probes._metrics.auroc`)."""
    y = y_sets[:, None, :].astype(np.float64)
    fitted = np.isfinite(oof).all(-1)
    ranks = rankdata(np.where(np.isfinite(oof), oof, 0.0), axis=-1)
    n1 = y.sum(-1)
    n0 = oof.shape[-1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    acc = ((oof > 0) == (y > 0.5)).mean(-1)
    return np.where(fitted, auc, np.nan), np.where(fitted, acc, np.nan)


def critical_value(null_max: np.ndarray, alpha: float) -> float | None:
    """The statistic the test needs to reach: ``p <= alpha`` exactly when the observed maximum is above it.
    None when the draws are too few for any observation to reach ``alpha``."""
    k = int(np.floor(alpha * (len(null_max) + 1) - 1 + 1e-9))
    if k < 0:
        return None
    ordered = np.sort(np.asarray(null_max, dtype=float))[::-1]
    return float(ordered[k]) if k < len(ordered) else float("-inf")


@dataclass
class Family:
    """AUROC of the task (``observed[probe, layer, candidate]``) and of each draw (``null[draw, probe, layer,
    candidate]``) over the family of the permutation test."""

    probes: list[str]
    layers: list[int]
    candidates: list[str]
    observed: np.ndarray
    null: np.ndarray


def permutation_test(family: Family, alpha: float, null_kind: str) -> dict[str, Any]:
    """The max-statistic test over the family, with per-layer and per-site adjusted p-values (None p-values
    when no draws were made)."""
    n_probes = int(np.prod(family.observed.shape))
    stat = float(np.nanmax(family.observed)) if n_probes else float("nan")
    B = len(family.null)
    out: dict[str, Any] = {
        "statistic": "maximum cross-validated AUROC over every probe tried",
        "family": {"probes": family.probes, "n_layers": len(family.layers), "positions": family.candidates},
        "n_probes": n_probes,
        "observed_max": stat,
        "n_permutations": B,
        "null": null_kind,
        "alpha": alpha,
        "correction": "max-statistic (Westfall-Young single-step): family-wise error rate over layers, positions "
        "and probe types",
    }
    if B == 0 or n_probes == 0:
        return out | {"p_value": None, "layer_p": {}, "site_p": None, "null_max_mean": None}
    null_max = np.nanmax(family.null.reshape(B, -1), axis=1)
    site_p = maxstat_adjusted(np.nan_to_num(family.observed, nan=-np.inf), family.null)
    layer_p = site_p.min(axis=(0, 2))
    return out | {
        "p_value": permutation_p(stat, null_max),
        "min_p": 1.0 / (B + 1),
        "critical_auroc": critical_value(null_max, alpha),
        "null_max_mean": float(null_max.mean()),
        "null_max_q95": float(np.quantile(null_max, 0.95)),
        "layer_p": {str(layer): float(p) for layer, p in zip(family.layers, layer_p, strict=True)},
        "site_p": site_p,
        "decodable_layers": [
            int(layer) for layer, p in zip(family.layers, layer_p, strict=True) if p <= alpha
        ],
    }


def pick_site(
    auc: np.ndarray, acc: np.ndarray, layers: Sequence[int], candidates: Sequence[str]
) -> tuple[int, int] | None:
    """``(layer index, candidate index)`` of the best ``auc[layer, candidate]`` (ties: accuracy, then the lower
    layer); None when nothing is finite."""
    best: tuple[float, float, int] | None = None
    where = None
    for li, layer in enumerate(layers):
        for ci in range(len(candidates)):
            if not np.isfinite(auc[li, ci]):
                continue
            key = (float(auc[li, ci]), float(acc[li, ci]), -int(layer))
            if best is None or key > best:
                best, where = key, (li, ci)
    return where


def nested_selection(
    task_oof: np.ndarray,
    inner: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    layers: Sequence[int],
    candidates: Sequence[str],
    boot: RequestBootstrap,
) -> dict[str, Any]:
    """Choose the site inside each outer fold from ``inner[layer, outer fold, candidate, prompt]`` (inner
    cross-validation scores on the other folds) and score it on that fold with ``task_oof[layer, candidate,
    prompt]`` (the ordinary out-of-fold scores); pool the outer folds."""
    n_folds = int(folds.max()) + 1
    scores = np.full(len(y), np.nan)
    chosen = []
    for f in range(n_folds):
        rows = folds != f
        auc = np.array([[auroc(y[rows], inner[li, f, ci, rows]) for ci in range(len(candidates))]
                        for li in range(len(layers))])  # fmt: skip
        acc = np.array([[accuracy(y[rows], inner[li, f, ci, rows]) for ci in range(len(candidates))]
                        for li in range(len(layers))])  # fmt: skip
        site = pick_site(auc, acc, layers, candidates)
        if site is None:
            continue
        li, ci = site
        held = folds == f
        scores[held] = task_oof[li, ci, held]
        chosen.append(
            {
                "fold": f,
                "layer": int(layers[li]),
                "position": candidates[ci],
                "inner_auroc": float(auc[li, ci]),
            }
        )
    ok = np.isfinite(scores)
    if not ok.all():
        return {"auroc": None, "accuracy": None, "folds": chosen}
    return {
        "auroc": auroc(y, scores),
        "auroc_ci": list(boot.auroc_ci(y, scores)),
        "accuracy": accuracy(y, scores),
        "accuracy_ci": list(boot.accuracy_ci(y, scores)),
        "folds": chosen,
        "scores": scores,
    }


def stability(chosen: list[dict[str, Any]], layer: int, position: str) -> dict[str, Any]:
    """How many outer folds chose the full-data site (same layer and position), the same layer, and the most
    frequent site (ties: the lowest layer, then the earliest fold's choice, so every run names the same one)."""
    sites = [(c["layer"], c["position"]) for c in chosen]
    if not sites:
        return {"n_folds": 0, "agreement": None, "layer_agreement": None, "modal": None}
    modal = max(sites, key=lambda s: (sites.count(s), -s[0]))  # max keeps the first of equals, in fold order
    return {
        "n_folds": len(sites),
        "agreement": sum(s == (layer, position) for s in sites) / len(sites),
        "layer_agreement": sum(s[0] == layer for s in sites) / len(sites),
        "modal": {"layer": modal[0], "position": modal[1], "count": sites.count(modal)},
        "folds": chosen,
    }
