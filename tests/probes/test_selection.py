"""Known answers for the tested headline: on null data (no tier signal) the nested-CV headline averages chance
while the in-sample maximum does not, and the max-statistic permutation p-value is uniform; a planted signal is
found, at the layer it was planted in. Synthetic activations in memory, so many null draws take seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afprobe._stats import pair_flips
from afprobe.probes import ProbeConfig, cross_validate_layer, grouped_folds, make_label_sets
from afprobe.probes._evaluate import Problems, fit_problems
from afprobe.probes._metrics import RequestBootstrap
from afprobe.probes._selection import (
    Family,
    critical_value,
    nested_selection,
    permutation_test,
    set_metrics,
    stability,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of tiny fits: intra-op threads only add synchronization (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dataset(seed: int, *, n_requests: int = 12, formats: int = 2, layers: int = 3, positions: int = 2, d: int = 8,
            planted: dict[int, float] | None = None):  # fmt: skip
    """``X[layer, position, prompt, d]`` with request content and per-prompt noise; ``planted[layer]`` adds the tier
    along one direction at every position of that layer. Rows come as (free, paid) pairs."""
    rng = np.random.default_rng(seed)
    n = n_requests * formats * 2
    groups = np.repeat([f"r{i}" for i in range(n_requests)], formats * 2)
    pairs = np.repeat(np.arange(n // 2), 2)
    y = np.tile([1, 0], n // 2)
    X = rng.normal(size=(layers, positions, n, d)) + rng.normal(size=(n_requests, d)).repeat(formats * 2, 0)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    for layer, s in (planted or {}).items():
        X[layer] += s * (2 * y - 1)[:, None] * u
    return X.astype(np.float32), y, groups, pairs


def headline(X: np.ndarray, y, groups, pairs, cfg: ProbeConfig, probes: tuple[str, ...]) -> dict:
    """The probe stage's glue on in-memory layers: every probe at every layer, the family test, nested
    selection of the first probe."""
    folds = grouped_folds(groups, cfg.folds, 0)
    labels = make_label_sets(
        y, folds, pairs, groups, n_curve=cfg.baseline_repeats, n_test=cfg.permutations, seed=0
    )
    y_sets = np.vstack([y[None], labels.null])
    cand = list(range(X.shape[1]))
    auc, oof, inner = {}, [], []
    for probe in probes:
        rows = []
        for layer in range(X.shape[0]):
            fit = cross_validate_layer(probe, X[layer], labels, cand, cfg, CPU, nested=probe == probes[0])
            rows.append(set_metrics(y_sets, fit.oof)[0])
            if probe == probes[0]:
                oof.append(fit.oof[0])
                inner.append(fit.inner)
        auc[probe] = np.stack(rows)  # [layer, set, position]
    family = Family(
        list(probes),
        list(range(X.shape[0])),
        [f"p{i}" for i in cand],
        np.stack([auc[p][:, 0] for p in probes]),
        np.stack([auc[p][:, 1 : 1 + labels.n_test] for p in probes]).transpose(2, 0, 1, 3),
    )
    test = permutation_test(family, cfg.alpha, labels.null_kind)
    boot = RequestBootstrap(groups, 20, 0)
    nested = nested_selection(
        np.stack(oof), np.stack(inner), y, folds, family.layers, family.candidates, boot
    )
    return {"test": test, "nested": nested, "in_sample": float(family.observed[0].max())}


def test_nested_headline_is_unbiased_under_the_null_and_the_in_sample_maximum_is_not() -> None:
    cfg = ProbeConfig(permutations=0, baseline_repeats=1)
    draws = [headline(*dataset(seed), cfg, ("torch_logistic",)) for seed in range(40)]
    nested = np.array([d["nested"]["auroc"] for d in draws])
    in_sample = np.array([d["in_sample"] for d in draws])
    se = nested.std(ddof=1) / np.sqrt(len(nested))
    assert abs(nested.mean() - 0.5) < max(3 * se, 0.02), (nested.mean(), se)
    assert in_sample.mean() > 0.5 + 6 * se  # the maximum over 6 sites, scored on the folds that chose it


def test_permutation_p_value_is_uniform_under_the_null() -> None:
    cfg = ProbeConfig(permutations=19, baseline_repeats=1)
    p = np.array([headline(*dataset(100 + s), cfg, ("mass_mean",))["test"]["p_value"] for s in range(150)])
    grid = np.arange(1, 21) / 20
    ecdf = np.array([(p <= g + 1e-9).mean() for g in grid])
    assert np.abs(ecdf - grid).max() < 0.12, (
        ecdf
    )  # Kolmogorov-Smirnov at 150 draws, well inside 1.36/sqrt(150)
    assert (p <= 0.05 + 1e-9).mean() <= 0.1


def test_planted_layer_is_found_and_corrected_per_layer() -> None:
    cfg = ProbeConfig(permutations=39, baseline_repeats=2)
    out = headline(*dataset(7, planted={1: 2.5}), cfg, ("torch_logistic", "mass_mean"))
    test = out["test"]
    assert test["p_value"] == pytest.approx(1 / 40) and test["n_probes"] == 2 * 3 * 2
    assert test["layer_p"]["1"] == pytest.approx(1 / 40)
    assert test["layer_p"]["0"] > 0.2 and test["layer_p"]["2"] > 0.2
    assert test["decodable_layers"] == [1]
    assert {c["layer"] for c in out["nested"]["folds"]} == {1} and out["nested"]["auroc"] > 0.85


def test_critical_value_is_what_the_maximum_must_beat() -> None:
    null = np.linspace(0.5, 0.69, 20)  # 20 draws: p <= 0.05 needs no draw at or above the observation
    crit = critical_value(null, 0.05)
    assert crit == pytest.approx(0.69)
    assert critical_value(null[:10], 0.05) is None  # 10 draws can never give p <= 0.05
    rng = np.random.default_rng(0)
    null = rng.uniform(size=199)
    crit = critical_value(null, 0.05)
    from afprobe._stats import permutation_p

    assert permutation_p(crit + 1e-9, null) <= 0.05 < permutation_p(crit, null)


def test_label_sets_flip_pairs_and_fall_back_to_requests() -> None:
    _, y, groups, pairs = dataset(0)
    folds = grouped_folds(groups, 3)
    ls = make_label_sets(y, folds, pairs, groups, n_curve=2, n_test=5, seed=0)
    assert ls.null.shape == (5, len(y)) and "pairs" in ls.null_kind
    np.testing.assert_array_equal(
        ls.null, pair_flips(y, pairs, 5, int(np.random.SeedSequence([0, 17]).generate_state(1)[0]))
    )
    broken = pairs.copy()
    broken[:4] = 0  # a "pair" of four rows
    fb = make_label_sets(y, folds, broken, groups, n_curve=2, n_test=0, seed=0)
    assert "request" in fb.null_kind and fb.null.shape == (2, len(y))
    for g in np.unique(groups):
        assert (fb.null[:, groups == g].sum(1) == y[groups == g].sum()).all()


def test_stability_breaks_ties_by_layer_then_fold_order() -> None:
    """Five folds, five different sites: the modal site is the lowest layer's, and of the two sites at that layer
    the one the earlier fold chose (a set's order, which follows string hashing, once decided it: two identical
    runs named different sites)."""
    picks = [(24, "last"), (6, "user_end"), (7, "user_end"), (6, "last"), (27, "user_end")]
    chosen = [{"layer": la, "position": p} for la, p in picks]
    st = stability(chosen, 24, "last")
    assert st["modal"] == {"layer": 6, "position": "user_end", "count": 1}
    assert stability(chosen[::-1], 24, "last")["modal"]["position"] == "last"
    assert st["agreement"] == 0.2 and st["layer_agreement"] == 0.2


@pytest.mark.parametrize("probe", ["torch_logistic", "mass_mean"])
def test_each_pair_of_outer_folds_is_fitted_once_and_read_as_both_inner_folds(probe: str) -> None:
    """Outer fold f's inner fold g and outer fold g's inner fold f train on the same rows: the layer's batch fits
    that set once, and its scores on fold g and on fold f are what a fit of exactly those rows gives (to the
    solvers' tolerance: the batch and the lone fit stop at different iterates, ~1e-3 apart; reading another
    problem's scores on the second fold fails it)."""
    X, y, groups, pairs = dataset(3, n_requests=10)
    cfg = ProbeConfig(folds=4, baseline_repeats=1, permutations=0)
    folds = grouped_folds(groups, cfg.folds, 0)
    labels = make_label_sets(y, folds, pairs, groups, n_curve=1, n_test=0, seed=0)
    fit = cross_validate_layer(probe, X[0], labels, [1], cfg, CPU, nested=True)
    assert fit.inner is not None
    for f in range(cfg.folds):
        for g in range(f + 1, cfg.folds):
            train = (folds != f) & (folds != g)
            lone = Problems(np.array([1]), y[None], train[None])
            alone = fit_problems(probe, X[0], lone, cfg, CPU).scores[0]
            for outer, held in ((f, folds == g), (g, folds == f)):
                np.testing.assert_allclose(fit.inner[outer, 1, held], alone[held], rtol=5e-3, atol=5e-3)
        assert np.isnan(fit.inner[f, 1, folds == f]).all()  # an outer fold's own rows stay unscored
    assert np.isnan(fit.inner[:, 0]).all()  # position 0 is not a candidate
