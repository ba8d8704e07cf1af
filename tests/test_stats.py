"""The shared statistics: permutation p-values, max-statistic and Holm corrections, bootstrap p-values, pair flips
and power by simulation, each against a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from afprobe._stats import (
    bootstrap_p_value,
    cluster_bootstrap_means,
    complete_pairs,
    holm,
    maxstat_adjusted,
    min_detectable_shift,
    pair_flips,
    permutation_p,
    request_resample_counts,
)


def test_permutation_p_counts_ties_against_the_observation_and_is_never_zero() -> None:
    null = np.array([0.1, 0.5, 0.5, 0.9])
    assert permutation_p(0.5, null) == pytest.approx(4 / 5)
    assert permutation_p(1.0, null) == pytest.approx(1 / 5)
    assert permutation_p(0.0, null) == pytest.approx(1.0)


def test_maxstat_adjusted_uses_the_family_maximum() -> None:
    obs = np.array([[0.9, 0.6], [0.55, 0.7]])
    null = np.array([[[0.5, 0.65], [0.6, 0.5]], [[0.8, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.58]]])
    # null maxima: 0.65, 0.8, 0.58
    expected = np.array([[1 / 4, 3 / 4], [4 / 4, 2 / 4]])
    np.testing.assert_allclose(maxstat_adjusted(obs, null), expected)
    raw = np.array([[permutation_p(obs[i, j], null[:, i, j]) for j in range(2)] for i in range(2)])
    assert (maxstat_adjusted(obs, null) >= raw).all() and (maxstat_adjusted(obs, null) > raw).any()


def test_holm_matches_a_hand_computation_and_skips_untested() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_pair_flips_swap_within_pairs_only() -> None:
    pairs = np.repeat(np.arange(6), 2)
    y = np.tile([1, 0], 6)
    assert complete_pairs(y, pairs) and not complete_pairs(np.ones(12), pairs)
    draws = pair_flips(y, pairs, 200, seed=1)
    assert draws.shape == (200, 12)
    assert (draws.reshape(200, 6, 2).sum(-1) == 1).all()  # one free and one paid per pair, always
    assert 0.4 < (draws != y).mean() < 0.6  # each pair flipped half the time
    with pytest.raises(ValueError, match="one row of each label"):
        pair_flips(np.ones(12, dtype=int), pairs, 2, 0)


def test_bootstrap_p_value_matches_the_percentile_interval() -> None:
    rng = np.random.default_rng(0)
    assert bootstrap_p_value(rng.normal(3.0, 1.0, 999)) < 0.05  # the interval excludes 0
    p = bootstrap_p_value(rng.normal(0.0, 1.0, 999))
    assert 0.5 < p <= 1.0
    assert bootstrap_p_value(np.full(99, 1.0)) == pytest.approx(2 / 100)  # floor 2 / (B + 1)


def test_cluster_bootstrap_means_uses_the_request_resamples() -> None:
    groups = ["a", "a", "b", "c", "c", "c"]
    v = np.arange(6.0)
    draws = cluster_bootstrap_means(v, groups, np.ones(6), n_boot=50, seed=3)[:, 0]
    inverse, w = request_resample_counts(groups, 50, 3)
    sums = np.bincount(inverse, weights=v)
    counts = np.bincount(inverse)
    np.testing.assert_allclose(draws, (w @ sums) / (w @ counts))


def test_min_detectable_shift_is_near_the_normal_theory_value() -> None:
    """With iid normal noise and a z-test the 80%-power shift at two-sided 5% is about 2.8 standard errors."""
    rng = np.random.default_rng(0)
    n = 40
    values = rng.normal(0.0, 1.0, n)
    groups = np.arange(n)

    def z_test(x: np.ndarray, g: np.ndarray) -> bool:
        return bool(abs(x.mean()) / (x.std(ddof=1) / np.sqrt(len(x))) > 1.96)

    delta = min_detectable_shift(values, groups, z_test, power=0.8, n_sims=300, seed=1, grid=48)
    se = values.std(ddof=1) / np.sqrt(n)
    assert delta is not None and 2.3 * se < delta < 3.4 * se
    assert min_detectable_shift(values[:1], groups[:1], z_test) is None
