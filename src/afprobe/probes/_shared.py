"""Fitting many probe problems that share their activations: same objective as :mod:`afprobe.probes._batched`,
without a copy of the activations per problem.

A permutation test fits the same (position, training rows) with many label vectors: the shuffled labels keep every
training set balanced, so the weights, the standardization and the kernel ``K = Z Z^T`` of the training rows are
the same for all of them. :func:`fit_logistic_shared` builds each distinct kernel once (on the training rows only,
plus the cross-kernel to every row for the scores) and runs the batched Newton solver with problems indexing their
kernel; :func:`fit_mass_mean_shared` reads class means straight from the position's activations. Both give the
numbers of :func:`~afprobe.probes._batched.fit_logistic_batched` / ``fit_mass_mean_batched`` on the same problems
(tested), at a fraction of the memory and time when problems outnumber distinct training sets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from afprobe.probes._batched import _newton_dual


def _standardized(x: Tensor, w: Tensor, standardize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(Z, mean, sd)`` of the rows ``x [n, d]`` with the weighted statistics of weights ``w [n]`` (as
    :func:`~afprobe.probes._batched.standardize_batched`)."""
    d = x.shape[1]
    if not standardize:
        return x, x.new_zeros(d), x.new_ones(d)
    wn = (w / w.sum())[None, :]
    mean = (wn @ x)[0]
    z = x - mean
    sd = (wn @ (z * z))[0].sqrt_()
    sd = torch.where(sd > 1e-6 * mean.abs().clamp_min(1.0), sd, torch.ones_like(sd))
    return z / sd, mean, sd


def _group_rows(pos: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, group)``: the distinct (position, weight vector) pairs and each problem's index among them."""
    table = np.column_stack([pos.astype(np.float64), weights])
    keys, group = np.unique(table, axis=0, return_inverse=True)
    return keys, group.reshape(-1)


def _class_stats(y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(single, prior)``: problems whose training rows hold one class only, and the log-odds prior."""
    n1, n0 = (w * y).sum(1), (w * (1 - y)).sum(1)
    return (n1 <= 0) | (n0 <= 0), torch.log((n1 + 0.5) / (n0 + 0.5))


def fit_logistic_shared(
    X: Tensor,
    pos: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    C: float = 1.0,
    standardize: bool = True,
    max_iter: int = 50,
    tol: float = 1e-6,
    max_elements: int = 2**24,
) -> tuple[Tensor, Tensor]:
    """``(scores [b, n], coef [b, d])`` of L2 logistic regressions, problem ``i`` fitted on ``X[pos[i]]`` with
    labels ``y[i]`` and sample weights ``weights[i]`` (0 outside its training rows); scores on every row.

    Works in the span of the training rows (needs at most as many of them as features); problems whose
    position and weights coincide share one kernel. ``max_elements`` caps problems x rows^2 per Newton batch."""
    dev, dt = X.device, X.dtype
    n, d = X.shape[1:]
    keys, group = _group_rows(pos, weights)
    G = len(keys)
    train = [np.flatnonzero(k[1:] > 0) for k in keys]
    m = max(len(t) for t in train)
    K = X.new_zeros(G, m, m)  # training kernels, zero-padded
    Kx = X.new_zeros(G, n, m)  # every row against the training rows
    means, sds = X.new_zeros(G, d), X.new_ones(G, d)
    idx = np.zeros((G, m), dtype=np.int64)
    for g, (k, tr) in enumerate(zip(keys, train, strict=True)):
        t = torch.as_tensor(tr, device=dev)
        x = X[int(k[0])]
        w = torch.as_tensor(k[1:], device=dev, dtype=dt)
        z_tr, means[g], sds[g] = _standardized(x[t], w[t], standardize)
        z = (x - means[g]) / sds[g]
        Kx[g, :, : len(tr)] = z @ z_tr.T
        K[g, : len(tr), : len(tr)] = Kx[g, t, : len(tr)]
        idx[g, : len(tr)] = tr
    live = torch.as_tensor(np.arange(m)[None, :] < np.array([len(t) for t in train])[:, None], device=dev)
    gi = torch.as_tensor(group, device=dev)
    rows = torch.as_tensor(idx, device=dev)[gi]  # [b, m]
    yt = torch.as_tensor(y, device=dev, dtype=dt).gather(1, rows)
    wt = torch.as_tensor(weights, device=dev, dtype=dt).gather(1, rows) * live[gi].to(dt)
    single, prior = _class_stats(yt, wt)
    yt = torch.where(single[:, None], torch.full_like(yt, 0.5), yt)  # optimum coef 0, intercept 0
    b = len(group)
    alpha, icpt = X.new_zeros(b, m), X.new_zeros(b)
    chunk = max(1, max_elements // (m * m))
    for s in range(0, b, chunk):
        sl = slice(s, s + chunk)
        alpha[sl], icpt[sl], _ = _newton_dual(K, yt[sl], wt[sl], C, max_iter, tol, group=gi[sl])
    scores = X.new_empty(b, n)
    for s in range(0, b, chunk):
        sl = slice(s, s + chunk)
        scores[sl] = torch.bmm(Kx[gi[sl]], alpha[sl, :, None])[..., 0] + icpt[sl, None]
    scores = torch.where(single[:, None], prior[:, None].expand(b, n), scores)
    coef = X.new_zeros(b, d)
    for g, (k, tr) in enumerate(zip(keys, train, strict=True)):
        members = torch.as_tensor(np.flatnonzero(group == g), device=dev)
        a = alpha[members, : len(tr)]
        raw = a @ X[int(k[0])][torch.as_tensor(tr, device=dev)] - means[g] * a.sum(1, keepdim=True)
        coef[members] = raw / sds[g].square()
    coef = torch.where(single[:, None], torch.zeros_like(coef), coef)
    return scores, coef


def fit_mass_mean_shared(
    X: Tensor, pos: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> tuple[Tensor, Tensor]:
    """``(scores [b, n], coef [b, d])`` of difference-of-means probes (threshold halfway), problem ``i`` on
    ``X[pos[i]]`` with labels ``y[i]`` and weights ``weights[i]``."""
    dev, dt = X.device, X.dtype
    b, n = y.shape
    yt = torch.as_tensor(y, device=dev, dtype=dt)
    wt = torch.as_tensor(weights, device=dev, dtype=dt)
    single, prior = _class_stats(yt, wt)
    scores, coef = X.new_empty(b, n), X.new_empty(b, X.shape[2])
    for p in np.unique(pos):
        members = torch.as_tensor(np.flatnonzero(pos == p), device=dev)
        w1, w0 = wt[members] * yt[members], wt[members] * (1 - yt[members])
        mu1 = (w1 / w1.sum(1, keepdim=True).clamp_min(1e-30)) @ X[int(p)]
        mu0 = (w0 / w0.sum(1, keepdim=True).clamp_min(1e-30)) @ X[int(p)]
        c = torch.where(single[members, None], torch.zeros_like(mu1), mu1 - mu0)
        icpt = torch.where(single[members], torch.sign(prior[members]), -(c * (mu1 + mu0) / 2).sum(1))
        coef[members] = c
        scores[members] = c @ X[int(p)].T + icpt[:, None]
    return scores, coef
