"""Batched L-BFGS on problems that share one X (``afprobe.probes._lbfgs``): the same optimum as Newton and
scikit-learn, the same stopping rule with bfloat16 products, the probe stage's accuracy within a point of
scikit-learn's, and the solver chosen by shape (shared-kernel Newton for n << d, L-BFGS for large n or n >= d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afprobe.probes import (
    LabelSets,
    LogisticProbe,
    ProbeConfig,
    choose_solver,
    cross_validate_layer,
    fit_logistic_batched,
    fit_logistic_lbfgs,
    grouped_folds,
    shuffled_labels,
)
from afprobe.probes._evaluate import Problems, solver_for


def shared_problems(n: int, d: int, seed: int = 0):
    """One X (heterogeneous scales and offsets) and 5 problems on it: two label vectors, fold masks, random
    weights, and one single-class problem."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=d) + 3 * rng.normal(size=d)
    y1 = (X[:, 0] / 5 + X[:, 1] / 3 + rng.normal(scale=1.5, size=n) > 0).astype(float)
    y2 = rng.integers(0, 2, n).astype(float)
    Y = np.stack([y1, y1, y2, y1, y1])
    W = rng.uniform(0.5, 2.0, size=(5, n))
    W[1, : n // 5] = 0.0  # a held-out fold
    W[3, y1 == 1] = 0.0  # one class only: coef 0, intercept the prior's sign
    return torch.tensor(X), torch.tensor(Y), torch.tensor(W)


@pytest.mark.parametrize("shape", [(160, 24), (50, 120)], ids=["n>d", "n<d"])
@pytest.mark.parametrize("standardize", [True, False])
def test_lbfgs_has_newtons_and_sklearns_optimum(shape, standardize) -> None:
    X, Y, W = shared_problems(*shape)
    lb = fit_logistic_lbfgs(X, Y, W, C=0.5, standardize=standardize, tol=1e-11, max_iter=5000)
    nt = fit_logistic_batched(X[None].expand(len(Y), -1, -1), Y, W, C=0.5, standardize=standardize, tol=1e-13)
    torch.testing.assert_close(lb.coef, nt.coef, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lb.intercept, nt.intercept, rtol=1e-5, atol=1e-6)
    assert bool((lb.coef[3] == 0).all()) and float(lb.intercept[3]) < 0  # single class (0): its prior
    for b in (0, 1, 2):
        keep = W[b].numpy() > 0
        ref = LogisticProbe(C=0.5, standardize=standardize, tol=1e-10, max_iter=20_000).fit(
            X.numpy()[keep], Y[b].numpy()[keep].astype(int), sample_weight=W[b].numpy()[keep]
        )
        np.testing.assert_allclose(lb.coef[b].numpy(), ref.coef_[0], rtol=1e-4, atol=1e-5)


def _gradient_ratio(X, Y, W, fit, C=1.0) -> np.ndarray:
    """Each problem's largest standardized-gradient coordinate over ``C * sum(w)`` (scikit-learn's ``gtol``
    scale), computed in float64 from scratch."""
    X, Y, W = X.double(), Y.double(), W.double()
    out = []
    for b in range(len(Y)):
        wn = W[b] / W[b].sum()
        mean = wn @ X
        sd = (wn @ (X - mean) ** 2).sqrt()
        Z = (X - mean) / sd
        v = fit.coef[b].double() * sd
        f = X @ fit.coef[b].double() + fit.intercept[b].double()
        g = C * W[b] * (torch.sigmoid(f) - Y[b])
        grad = torch.cat([Z.T @ g + v, g.sum()[None]])
        out.append(float(grad.abs().max() / (C * W[b].sum())))
    return np.array(out)


def test_bfloat16_products_meet_the_same_stopping_rule() -> None:
    """With ``fast_products`` the iterations use X in bfloat16, yet every problem ends with its exact gradient
    under ``tol`` (checked here in float64) and the same accuracy as float32 products."""
    X, Y, W = shared_problems(300, 200, seed=1)
    keep = [0, 1, 2, 4]
    X, Y, W = X.float(), Y[keep].float(), W[keep].float()
    fast = fit_logistic_lbfgs(X, Y, W, tol=1e-4, fast_products=True)
    plain = fit_logistic_lbfgs(X, Y, W, tol=1e-4)
    assert (_gradient_ratio(X, Y, W, fast) <= 1.05).all()  # float32 rounding of the check itself
    assert (_gradient_ratio(X, Y, W, plain) <= 1.05).all()
    cos = torch.nn.functional.cosine_similarity(fast.coef, plain.coef, dim=1)
    assert bool((cos > 0.99).all())
    agree = (
        ((X @ fast.coef.T + fast.intercept > 0) == (X @ plain.coef.T + plain.intercept > 0)).float().mean()
    )
    assert float(agree) > 0.99


def test_preconditioning_keeps_the_optimum_and_cuts_the_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Activations with a few directions of large variance (a low-rank nuisance, as requests and formats make
    them): iterating in coordinates where those directions have scale 1 reaches the same coefficients in fewer
    iterations."""
    rng = np.random.default_rng(3)
    n, d = 600, 300
    nuisance = (rng.normal(size=(n, 8)) * np.geomspace(30, 3, 8)) @ rng.normal(size=(8, d))
    y = rng.integers(0, 2, n)
    X = torch.tensor(nuisance + rng.normal(size=(n, d)) + 0.3 * np.outer(2 * y - 1, rng.normal(size=d)))
    Y = torch.tensor(np.stack([y, rng.permutation(y)])).double()
    import afprobe.probes._lbfgs as lbfgs

    monkeypatch.setattr(lbfgs, "PRECONDITION_MIN_ROWS", n)  # (the default starts at 4,000 rows)
    pre = fit_logistic_lbfgs(X, Y, tol=1e-9, max_iter=5000)
    plain = fit_logistic_lbfgs(X, Y, tol=1e-9, max_iter=5000, precondition=0)
    torch.testing.assert_close(pre.coef, plain.coef, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pre.intercept, plain.intercept, atol=1e-5, rtol=1e-4)
    assert pre.n_iter * 1.5 < plain.n_iter


def _stage(n_requests: int, d: int, signal: float, seed: int = 0) -> tuple[np.ndarray, LabelSets]:
    """Paired prompts (8 per request), a planted tier direction, request-level nuisance; the task labels and two
    within-request permutation draws (the null: fitted at every position)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_requests), 8).astype(str)
    y = np.tile(np.arange(8) % 2, n_requests)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    X = rng.normal(size=(n_requests, d))[np.repeat(np.arange(n_requests), 8)] + rng.normal(size=(len(y), d))
    X += np.outer(np.where(y == 1, signal, -signal), u) + 5.0
    folds = grouped_folds(groups, 5, 0)
    null = np.stack([shuffled_labels(y, groups, s) for s in (1, 2)])
    return X.astype(np.float32), LabelSets(y, folds, null, 2, 2, "test")


def _accuracy(labels: LabelSets, oof: np.ndarray) -> np.ndarray:
    """Held-out accuracy of each label set at position 0."""
    sets = np.vstack([labels.y[None], labels.null])
    return np.array([np.mean((oof[v, 0] > 0) == (sets[v] == 1)) for v in range(len(sets))])


def test_stage_matches_sklearn_within_a_point_and_the_null_stays_at_chance() -> None:
    """The probe stage's cross-validation with the L-BFGS solver: held-out accuracy within 1 point of
    scikit-learn's on every label set (the planted tier found, the permutation draws at chance), and the
    full-data direction is scikit-learn's."""
    X, labels = _stage(60, 400, signal=3.0)
    cfg = ProbeConfig(tol=1e-6)  # both at the optimum (at tol 1e-4 either may stop a point away from it)
    cpu = torch.device("cpu")
    lb = cross_validate_layer(
        "torch_logistic", X[None], labels, [0], cfg.model_copy(update={"solver": "lbfgs"}), cpu
    )
    sk = cross_validate_layer("logistic", X[None], labels, [0], cfg, cpu)
    a_lb, a_sk = _accuracy(labels, lb.oof), _accuracy(labels, sk.oof)
    assert np.abs(a_lb - a_sk).max() <= 0.01
    assert a_lb[0] > 0.85  # the task: planted, found
    assert np.abs(a_lb[1:] - 0.5).max() < 0.12  # the null draws: chance
    full, sk_full = lb.coef[0] / np.linalg.norm(lb.coef[0]), sk.coef[0] / np.linalg.norm(sk.coef[0])
    assert float(full @ sk_full) > 0.99


def test_solver_forced_by_config_gives_newtons_scores() -> None:
    """lbfgs and the shared-kernel Newton (n << d here) reach the same optimum on the stage's problems."""
    X, labels = _stage(12, 200, signal=0.8)
    cfg = ProbeConfig(torch_dtype="float64", tol=1e-10, newton_tol=1e-13, max_iter=5000)
    cpu = torch.device("cpu")
    X64 = X.astype(np.float64)[None]
    a = cross_validate_layer(
        "torch_logistic", X64, labels, [0], cfg.model_copy(update={"solver": "lbfgs"}), cpu
    )
    b = cross_validate_layer(
        "torch_logistic", X64, labels, [0], cfg.model_copy(update={"solver": "newton"}), cpu
    )
    np.testing.assert_allclose(a.oof, b.oof, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-4, atol=1e-6)


def _stage_problems(n: int, n_sets: int, n_folds: int = 5) -> Problems:
    """The shape of one position's problems in the stage: every fold of every label set, one full fit."""
    folds = np.arange(n) % n_folds
    train = [folds != f for _ in range(n_sets) for f in range(n_folds)] + [np.ones(n, dtype=bool)]
    y = np.tile(np.arange(n) % 2, (len(train), 1))
    return Problems(np.zeros(len(train), dtype=np.int64), y, np.stack(train))


@pytest.mark.parametrize(
    ("n", "d", "expected"),
    [
        (32, 64, "newton"),
        (200, 576, "newton"),  # the embedded model's default run
        (1000, 1024, "lbfgs"),
        (4000, 4096, "lbfgs"),
        (20000, 576, "lbfgs"),  # n >= d
        (3000, 1024, "lbfgs"),
    ],
)
def test_solver_by_shape(n: int, d: int, expected: str) -> None:
    """Newton while its work is small (the unit tests, the embedded model's caches); L-BFGS on the shared X at
    thousands of prompts or with more prompts than features."""
    cfg = ProbeConfig(fast_products="off")
    assert solver_for(cfg, n, d, _stage_problems(n, 11), torch.device("cpu")) == expected
    assert choose_solver(n, d, 56) == expected


def test_solver_config_overrides_the_shape() -> None:
    problems = _stage_problems(4000, 3)
    for forced in ("newton", "lbfgs"):
        cfg = ProbeConfig(solver=forced)
        assert solver_for(cfg, 4000, 4096, problems, torch.device("cpu")) == forced
    assert solver_for(ProbeConfig(), 32, 64, _stage_problems(32, 3), torch.device("cpu")) == "newton"
