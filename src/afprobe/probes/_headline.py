"""From fitted layers to the numbers ``probe_results.json`` reports: one curve point per (probe, layer,
position) and the ``best`` block (nested-CV score, stability, permutation p-value, baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from afprobe.probes._metrics import RequestBootstrap, accuracy, auroc


@dataclass
class LayerScores:
    """What the summary needs of one (probe, layer): ``auroc[set, position]`` and ``accuracy[set, position]`` of
    the task (set 0) and every permutation draw, the task's out-of-fold scores ``oof[position, prompt]``, the
    nested inner scores ``inner[outer fold, position, prompt]`` (headline probe only), the full-data weight
    vectors ``coef[position, d]`` and the solver's convergence warnings."""

    auroc: np.ndarray
    accuracy: np.ndarray
    oof: np.ndarray
    inner: np.ndarray | None
    coef: np.ndarray
    warnings: int


def curve_point(
    probe: str,
    layer: int,
    pi: int,
    pos: str,
    relation: str,
    s: LayerScores,
    y: np.ndarray,
    boot: RequestBootstrap,
    n_curve: int,
    surface: dict[str, Any] | None,
) -> dict[str, Any]:
    """Metrics at one (probe, layer, position): the task's with bootstrap CIs over requests, the shuffled-label
    baseline (mean and sd over the first ``n_curve`` permutation draws) and the surface baseline."""
    scores = s.oof[pi]
    acc, auc = accuracy(y, scores), auroc(y, scores)
    sh_acc, sh_auc = s.accuracy[1 : 1 + n_curve, pi], s.auroc[1 : 1 + n_curve, pi]
    shuffled = float(np.mean(sh_acc))
    return {
        "probe": probe,
        "layer": layer,
        "position": pos,
        "relation": relation,
        "accuracy": acc,
        "accuracy_ci": list(boot.accuracy_ci(y, scores)),
        "auroc": auc,
        "auroc_ci": list(boot.auroc_ci(y, scores)),
        "shuffled_accuracy": shuffled,
        "shuffled_accuracy_sd": float(np.std(sh_acc)),
        "shuffled_auroc": float(np.nanmean(sh_auc)),
        "selectivity": acc - shuffled,
        "surface_accuracy": None if surface is None else surface["accuracy"],
        "surface_auroc": None if surface is None else surface["auroc"],
        "p_adjusted": None,
    }


def pick_best(rows: list[dict[str, Any]], probe: str, candidates: list[str]) -> dict[str, Any] | None:
    """The full-data choice: the highest cross-validated AUROC of ``probe`` among the positions after the cue
    (the site steering and patching use; its score is in-sample, biased by the choice)."""
    pool = [
        r for r in rows if r["probe"] == probe and r["position"] in candidates and np.isfinite(r["auroc"])
    ]
    if not pool:
        return None
    return max(pool, key=lambda r: (r["auroc"], r["accuracy"], -r["layer"]))


SELECTION_NESTED = (
    "nested cross-validation: inside each of the {k} outer folds the site (layer x position after the cue) is "
    "chosen by an inner cross-validation over the other {j} folds, then scored on the outer fold; `auroc` and "
    "`accuracy` pool the outer folds"
)
SELECTION_IN_SAMPLE = (
    "in-sample: with {k} folds there are no inner folds to choose in, so `auroc` and `accuracy` are the maximum of "
    "the curves, biased upward by the choice (set folds >= 3 for nested cross-validation)"
)


def best_block(
    full: dict[str, Any],
    nested: dict[str, Any] | None,
    stab: dict[str, Any] | None,
    test: dict[str, Any],
    surface: dict[str, Any] | None,
    n_folds: int,
    candidates: list[str],
) -> dict[str, Any]:
    """``best``: the full-data site (``layer``, ``position``), scored by nested CV when there is one."""
    scored = nested is not None and nested.get("auroc") is not None
    src = nested if scored and nested is not None else full
    out = {
        "layer": full["layer"],
        "position": full["position"],
        "probe": full["probe"],
        "auroc": src["auroc"],
        "auroc_ci": src["auroc_ci"],
        "accuracy": src["accuracy"],
        "accuracy_ci": src["accuracy_ci"],
        "selection": (SELECTION_NESTED if scored else SELECTION_IN_SAMPLE).format(k=n_folds, j=n_folds - 1),
        "nested": scored,
        "in_sample_auroc": full["auroc"],
        "in_sample_accuracy": full["accuracy"],
        "stability": stab,
        "p_value": test.get("p_value"),
        "n_permutations": test.get("n_permutations"),
        "n_probes_tested": test.get("n_probes"),
        "layer_p": test.get("layer_p", {}).get(str(full["layer"])),
        "shuffled_accuracy": full["shuffled_accuracy"],
        "selectivity": src["accuracy"] - full["shuffled_accuracy"],
        "selectivity_basis": "accuracy minus the same probe's accuracy on permuted labels (no control task: see "
        "docs/statistics.md)",
        "surface_auroc": None if surface is None else surface["auroc"],
        "surface_accuracy": None if surface is None else surface["accuracy"],
        "chosen_among": candidates,
    }
    return out
