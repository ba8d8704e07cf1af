"""Probe estimators: the scikit-learn contract, agreement between the torch and scikit-learn logistic probes,
recovery of planted directions, and the batched (every layer at once) path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from beartype import beartype
from jaxtyping import jaxtyped
from sklearn.utils.estimator_checks import parametrize_with_checks

from afprobe.probes import (
    LogisticProbe,
    MassMeanProbe,
    TorchLogisticProbe,
    fit_logistic_batched,
    fit_mass_mean_batched,
)


# Every check applies and passes, none is skipped or expected to fail: the probes are binary
# (tags.classifier_tags.multi_class = False), which the checks honour by expecting a clear
# "Only binary classification is supported" error on multiclass data. (check_array_api_input skips itself
# unless SCIPY_ARRAY_API is set.)
@parametrize_with_checks([LogisticProbe(), TorchLogisticProbe(), MassMeanProbe()])
def test_sklearn_contract(estimator, check) -> None:
    check(estimator)


def planted(n: int, d: int, *, strength: float = 2.0, noise: float = 0.5, seed: int = 0, sample: int = 0):
    """Balanced 0/1 labels separated along a random unit direction ``u`` (fixed by ``seed``) by
    ``2 * strength``; ``sample`` draws fresh noise around the same direction."""
    u = np.random.default_rng(seed).normal(size=d)
    u /= np.linalg.norm(u)
    rng = np.random.default_rng([seed, sample + 1])
    y = np.arange(n) % 2
    X = rng.normal(scale=noise, size=(n, d)) + np.outer(np.where(y == 1, strength, -strength), u) + 3.0
    return X.astype(np.float64), y, u


@pytest.mark.parametrize("est", [LogisticProbe(), TorchLogisticProbe(), MassMeanProbe()], ids=type)
@pytest.mark.parametrize(
    ("shape", "noise", "standardize"),
    [
        ((1000, 32), 1.0, True),  # more prompts than features (the primal Newton path)
        # fewer prompts than features (the dual path). Here the planted signal dominates the variance, so
        # per-feature standardization would rescale it anisotropically: fit in the raw basis.
        ((100, 300), 0.1, False),
    ],
    ids=["n>d", "n<d"],
)
def test_planted_direction_is_recovered(est, shape, noise, standardize) -> None:
    if "standardize" in est.get_params():
        est.set_params(standardize=standardize)
    X, y, u = planted(*shape, strength=1.0, noise=noise)
    est.fit(X, y)
    assert est.direction_.shape == (shape[1],)
    assert np.linalg.norm(est.direction_) == pytest.approx(1.0)
    assert float(est.direction_ @ u) > 0.95  # and it points toward class 1 ("training")
    X_new, y_new, _ = planted(*shape, strength=1.0, noise=noise, sample=1)  # same direction, fresh noise
    assert est.score(X_new, y_new) > 0.8


@pytest.mark.parametrize("shape", [(150, 20), (40, 120)], ids=["primal", "dual"])
def test_torch_logistic_matches_sklearn(shape) -> None:
    """Same objective, same C: the Newton solution equals scikit-learn's lbfgs one (with sample weights)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=shape) * rng.uniform(0.2, 5.0, size=shape[1]) + rng.normal(size=shape[1])
    y = (X[:, 0] + X[:, 1] + rng.normal(scale=2.0, size=shape[0]) > 0).astype(int)
    w = rng.uniform(0.5, 2.0, size=shape[0])
    ref = LogisticProbe(C=0.5, tol=1e-10, max_iter=10_000).fit(X, y, sample_weight=w)
    got = TorchLogisticProbe(C=0.5, dtype="float64", tol=1e-12).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.intercept_, ref.intercept_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(X), atol=1e-6)


def test_unstandardized_and_float32_agree() -> None:
    X, y, _ = planted(80, 40, strength=0.5, noise=1.0)
    a = TorchLogisticProbe(standardize=False, dtype="float64").fit(X, y)
    b = LogisticProbe(standardize=False, tol=1e-10).fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-4, atol=1e-6)
    c = TorchLogisticProbe(dtype="float32").fit(X.astype(np.float32), y)
    d = TorchLogisticProbe(dtype="float64").fit(X, y)
    assert float(c.direction_ @ d.direction_) > 0.9999


def test_batched_fit_equals_one_at_a_time() -> None:
    """Every layer at once gives the same probes as a loop, including per-problem labels and masks."""
    Xs = np.stack([planted(64, 48, strength=0.3 * (k + 1), noise=1.0, seed=k)[0] for k in range(5)])
    y = np.arange(64) % 2
    w = np.ones((5, 64))
    w[2, :10] = 0.0  # a cross-validation mask on problem 2
    batched = TorchLogisticProbe(dtype="float64").fit(Xs, y, sample_weight=w)
    assert batched.coef_.shape == (5, 48) and batched.direction_.shape == (5, 48)
    for k in range(5):
        keep = w[k] > 0
        one = TorchLogisticProbe(dtype="float64").fit(Xs[k][keep], y[keep])
        np.testing.assert_allclose(batched.coef_[k], one.coef_[0], rtol=1e-5, atol=1e-7)
    scores = batched.decision_function(Xs)
    assert scores.shape == (5, 64)
    mm = MassMeanProbe().fit(Xs, y)
    for k in range(5):
        one = MassMeanProbe().fit(Xs[k], y)
        np.testing.assert_allclose(mm.coef_[k], one.coef_[0], rtol=1e-6)


def test_kernels_are_built_in_chunks_without_changing_them(monkeypatch) -> None:
    """The dual path never holds the standardized ``Z`` in full; chunk by chunk it gives the same kernels (with
    per-problem weights) and the same probes as one chunk."""
    from afprobe.probes import _batched

    g = torch.Generator().manual_seed(0)
    scale = torch.rand(50, generator=g, dtype=torch.float64)
    X = torch.randn(7, 30, 50, generator=g, dtype=torch.float64) * scale + 2
    w = torch.rand(7, 30, generator=g, dtype=torch.float64)
    w[3, :8] = 0.0
    y = (torch.arange(30) % 2).to(torch.float64)
    Z, mean, sd = _batched.standardize_batched(X, w)
    # 2 problems per chunk: 4 chunks, the last one short
    monkeypatch.setattr(_batched, "_CPU_CHUNK", 2 * 30 * 50)
    K, mean_k, sd_k = _batched.kernel_batched(X, w)
    torch.testing.assert_close(K, Z @ Z.transpose(1, 2))
    torch.testing.assert_close((mean_k, sd_k), (mean, sd))
    chunked = fit_logistic_batched(X, y, w, tol=1e-12)
    monkeypatch.setattr(_batched, "_CPU_CHUNK", 1 << 30)
    whole = fit_logistic_batched(X, y, w, tol=1e-12)
    torch.testing.assert_close(chunked.coef, whole.coef)


def test_newton_stops_at_the_precision_of_float32() -> None:
    """A tolerance float32 cannot resolve does not run to ``max_iter``: a problem leaves the batch once its line
    search lowers the objective by no more than rounding noise, and the answer is the float64 one."""
    X, y, _ = planted(64, 200, strength=0.3, noise=1.0)
    X32 = torch.as_tensor(X, dtype=torch.float32)[None].expand(3, -1, -1)
    y32 = torch.as_tensor(y, dtype=torch.float32)
    fit32 = fit_logistic_batched(X32, y32, tol=1e-14, max_iter=50)
    fit64 = fit_logistic_batched(torch.as_tensor(X)[None], torch.as_tensor(y, dtype=torch.float64), tol=1e-14)
    assert fit32.n_iter < 20
    cos = torch.nn.functional.cosine_similarity(fit32.coef.double(), fit64.coef, dim=1)
    assert bool((cos > 0.9999).all())


def test_newton_solves_by_lu_when_cholesky_fails(monkeypatch) -> None:
    """If rounding makes the symmetric Newton system numerically indefinite, the step is solved by LU instead,
    with the same result."""
    X, y, _ = planted(40, 90, strength=0.5, noise=1.0)
    Xt, yt = torch.as_tensor(X)[None], torch.as_tensor(y, dtype=torch.float64)
    ref = fit_logistic_batched(Xt, yt, tol=1e-12)
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(
        torch.linalg, "cholesky_ex", lambda M: (real(M)[0], torch.ones(M.shape[0], dtype=torch.int32))
    )
    got = fit_logistic_batched(Xt, yt, tol=1e-12)
    torch.testing.assert_close(got.coef, ref.coef)
    torch.testing.assert_close(got.intercept, ref.intercept)


def test_batched_single_class_problem_predicts_that_class() -> None:
    X = torch.randn(3, 20, 8, dtype=torch.float64)
    y = torch.zeros(3, 20, dtype=torch.float64)
    y[0, ::2] = 1.0
    y[2] = 1.0  # problem 1: all 0, problem 2: all 1
    for fit in (fit_logistic_batched(X, y), fit_mass_mean_batched(X, y)):
        assert torch.isfinite(fit.coef).all()
        dec = fit.decision(X)
        assert (dec[1] < 0).all() and (dec[2] > 0).all()
        assert torch.count_nonzero(fit.coef[1]) == 0


def test_batched_shapes_are_checked_at_run_time() -> None:
    """The jaxtyping annotations hold (checked with beartype, as in every test that opts in)."""
    checked = jaxtyped(typechecker=beartype)(fit_logistic_batched)
    X = torch.randn(4, 30, 6)
    y = (torch.arange(30) % 2).float()
    out = checked(X, y)
    assert out.coef.shape == (4, 6) and out.intercept.shape == (4,)
    with pytest.raises(ValueError, match="batched probes take labels 0 and 1"):
        fit_logistic_batched(X, y * 2)


def test_two_classes_required_and_binary_only() -> None:
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="one class"):
        LogisticProbe().fit(X, np.ones(10))
    with pytest.raises(ValueError, match="Only binary"):
        MassMeanProbe().fit(X, np.arange(10) % 3)


def test_string_labels_sign_points_to_second_class() -> None:
    X, y, u = planted(100, 10)
    labels = np.where(y == 1, "free", "paid")  # classes_ sorted: ["free", "paid"] -> + points to "paid"
    est = MassMeanProbe().fit(X, labels)
    assert list(est.classes_) == ["free", "paid"]
    assert float(est.direction_ @ u) < -0.95
    assert set(est.predict(X)) == {"free", "paid"}
