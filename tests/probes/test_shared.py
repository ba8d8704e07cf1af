"""The shared-activation fitters give the numbers of the per-problem batched ones, problems sharing a kernel
or not, single-class training sets included."""

from __future__ import annotations

import numpy as np
import torch

from afprobe.probes._batched import fit_logistic_batched, fit_mass_mean_batched
from afprobe.probes._metrics import balanced_weights
from afprobe.probes._shared import fit_logistic_shared, fit_mass_mean_shared


def _problems(seed: int = 0):
    rng = np.random.default_rng(seed)
    P, n, d, b = 3, 40, 50, 14
    X = rng.normal(size=(P, n, d)) + rng.normal(size=d) * 3  # an offset: standardization matters
    pos = rng.integers(0, P, b)
    y = rng.integers(0, 2, (b, n))
    y[-1] = 1  # one problem whose training rows hold one class
    folds = np.arange(n) % 4
    train = np.stack([folds != (i % 4) for i in range(b)])
    train[3] = train[0]  # same rows and position as problem 0 ...
    pos[3] = pos[0]  # ... different labels: a shared kernel, unless balancing makes the weights differ
    return torch.as_tensor(X), pos, y, balanced_weights(y, train)


def test_shared_logistic_equals_the_batched_solver() -> None:
    X, pos, y, w = _problems()
    scores, coef = fit_logistic_shared(X, pos, y, w, C=0.5, max_iter=50, tol=1e-10)
    xb = X[torch.as_tensor(pos)]
    ref = fit_logistic_batched(xb, torch.as_tensor(y), torch.as_tensor(w), C=0.5, max_iter=50, tol=1e-10)
    torch.testing.assert_close(scores, ref.decision(xb), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(coef, ref.coef, atol=1e-7, rtol=1e-6)
    assert float(coef[-1].abs().max()) == 0.0  # one class: no direction, the prior as intercept


def test_shared_mass_mean_equals_the_batched_one() -> None:
    X, pos, y, w = _problems(1)
    scores, coef = fit_mass_mean_shared(X, pos, y, w)
    xb = X[torch.as_tensor(pos)]
    ref = fit_mass_mean_batched(xb, torch.as_tensor(y), torch.as_tensor(w))
    torch.testing.assert_close(scores, ref.decision(xb))
    torch.testing.assert_close(coef, ref.coef)


def test_problems_with_equal_rows_share_one_kernel() -> None:
    from afprobe.probes._shared import _group_rows

    pos = np.array([0, 0, 1, 0])
    w = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 1]], dtype=float)
    keys, group = _group_rows(pos, w)
    assert len(keys) == 3 and group[0] == group[1] and len(set(group[[0, 2, 3]].tolist())) == 3
