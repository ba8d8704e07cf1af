"""Grouped folds, the shuffled-label baseline, and accuracy / AUROC with bootstrap intervals over requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from afprobe import AfprobeError
from afprobe.probes import (
    ProbeConfig,
    RequestBootstrap,
    accuracy,
    auroc,
    cross_validate_layer,
    grouped_folds,
    shuffled_labels,
)
from afprobe.probes._labels import LabelSets
from afprobe.probes._metrics import balanced_weights, weighted_auroc


def design(n_requests: int, formats: int = 2, prompts: int = 2, seed: int = 0) -> np.ndarray:
    """Request id per prompt: every request appears as ``formats`` pairs (free, paid), in shuffled order."""
    groups = np.repeat([f"req{i:03d}" for i in range(n_requests)], formats * prompts)
    return np.random.default_rng(seed).permutation(groups)


@pytest.mark.parametrize("n_requests", [5, 6, 13, 40])
@pytest.mark.parametrize("n_folds", [2, 5])
def test_grouped_folds_never_split_a_request(n_requests: int, n_folds: int) -> None:
    groups = design(n_requests, seed=n_requests)
    folds = grouped_folds(groups, n_folds, seed=1)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1, f"request {g} is in more than one fold"
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 4  # balanced up to one request
    np.testing.assert_array_equal(folds, grouped_folds(groups, n_folds, seed=1))  # deterministic


def test_fewer_requests_than_folds_is_one_clear_error() -> None:
    with pytest.raises(AfprobeError, match=r"3 request\(s\) is fewer than the 5 cross-validation folds") as e:
        grouped_folds(design(3), 5)
    assert "\n" not in str(e.value)


def test_shuffled_labels_keep_each_requests_balance() -> None:
    groups = design(10, formats=4)
    y = np.tile([1, 0], len(groups) // 2)
    s = shuffled_labels(y, groups, seed=0)
    assert not np.array_equal(s, y)
    for g in np.unique(groups):
        assert s[groups == g].sum() == y[groups == g].sum()


def test_balanced_weights() -> None:
    y = np.array([1, 1, 1, 0, 0, 1])
    train = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    w = balanced_weights(y, train)
    assert w[4] == w[5] == 0
    assert w[:3].sum() == pytest.approx(w[3]) == pytest.approx(2.0)


def test_weighted_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    w = rng.integers(0, 4, size=(7, 60)).astype(float)
    got = weighted_auroc(y, s, w)
    want = [roc_auc_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, want)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert accuracy(np.array([1, 0, 1]), np.array([0.3, -1.0, -0.1])) == pytest.approx(2 / 3)


def test_bootstrap_resamples_requests_and_brackets_the_estimate() -> None:
    groups = design(30)
    rng = np.random.default_rng(1)
    y = np.tile([1, 0], len(groups) // 2)
    scores = rng.normal(size=len(y)) + 0.8 * (2 * y - 1)
    boot = RequestBootstrap(groups, 500, seed=0)
    for g in np.unique(groups):  # a request's prompts are drawn together
        assert np.ptp(boot.weights[:, groups == g], axis=1).max() == 0
    lo, hi = boot.accuracy_ci(y, scores)
    assert lo < accuracy(y, scores) < hi and hi - lo < 0.3
    lo, hi = boot.auroc_ci(y, scores)
    assert lo < auroc(y, scores) < hi


def request_memory_data(n_requests: int = 40, d: int = 64):
    """Each request has its own strong random vector and nothing else: its label can only be memorized."""
    rng = np.random.default_rng(0)
    groups = np.repeat([f"r{i}" for i in range(n_requests)], 4)
    centres = rng.normal(size=(n_requests, d)) * 3
    X = centres[np.repeat(np.arange(n_requests), 4)] + rng.normal(size=(len(groups), d))
    return X.astype(np.float32), groups


@pytest.mark.parametrize("probe", ["torch_logistic", "mass_mean", "logistic"])
def test_grouped_folds_do_not_leak_but_prompt_folds_would(probe: str) -> None:
    """Labels random per request are learnable only by memorizing requests. Under request-grouped folds the
    probe stays near chance; the same probe with folds that split requests scores far above it, so this test
    fails if grouping is lost anywhere between the folds and the fitted problems."""
    X, groups = request_memory_data()
    cfg = ProbeConfig(probes=[probe])
    uniq = np.unique(groups)
    label_of = dict(zip(uniq, np.random.default_rng(0).permutation(np.arange(len(uniq)) % 2), strict=True))
    y = np.array([label_of[g] for g in groups])
    leaky = np.arange(len(groups)) % 5  # prompt-level folds: every request on both sides
    accs = []
    for folds in (grouped_folds(groups, 5), leaky):
        sets = LabelSets(y, folds, np.zeros((0, len(y)), dtype=np.int64), 0, 0, "none")
        fit = cross_validate_layer(probe, X[None], sets, [0], cfg, torch.device("cpu"))
        accs.append(accuracy(y, fit.oof[0, 0]))
    grouped_acc, leaky_acc = accs
    assert leaky_acc > 0.8
    assert grouped_acc < 0.65


@pytest.mark.parametrize("probe", ["torch_logistic", "mass_mean"])
def test_shuffled_labels_give_chance(probe: str) -> None:
    """With a real tier signal in the activations, the same probe on shuffled labels is at chance."""
    rng = np.random.default_rng(0)
    groups = np.repeat([f"r{i}" for i in range(30)], 8)
    y = np.tile([1, 0], len(groups) // 2)
    u = rng.normal(size=48)
    X = (rng.normal(size=(len(y), 48)) + np.outer(2 * y - 1, u) * 0.5).astype(np.float32)
    folds = grouped_folds(groups, 5)
    null = np.stack([shuffled_labels(y, groups, s) for s in range(8)])
    sets = LabelSets(y, folds, null, 8, 8, "within requests")
    fit = cross_validate_layer(probe, X[None], sets, [0], ProbeConfig(), torch.device("cpu"))
    assert accuracy(y, fit.oof[0, 0]) > 0.9
    shuffled = [accuracy(null[i], fit.oof[1 + i, 0]) for i in range(len(null))]
    assert abs(np.mean(shuffled) - 0.5) < 0.06
