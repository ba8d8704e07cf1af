"""Batched probe fitting in torch: one call fits many independent problems (layers, positions, folds) at once.

``fit_logistic_batched`` solves L2-regularized logistic regression exactly (scikit-learn's objective, so the same
``C`` gives the same model) with Newton steps and a line search. A Newton step costs ``min(n, d)^3`` per problem:
when there are fewer prompts than features it works in the span of the prompts (the representer theorem: the
optimal weight vector is a combination of the training rows), so only ``n x n`` kernels are factorized (Cholesky
of a symmetric positive definite system); otherwise in feature space. Rows with ``sample_weight`` 0 take no part in
the fit, so cross-validation folds of different sizes batch together as masks over the same rows.

Where the time goes, and why it is laid out this way: the kernels ``K = Z Z^T`` of the standardized features are
built a few problems at a time from the raw ``X``, so the standardized copy of ``X`` never exists in full (on a CPU
each chunk stays in cache, and no large temporary is allocated); the line search also tries steps up to 4 times the
Newton step, which saves about a quarter of the factorizations on nearly separable probes (measured on the
embedded model's caches), where Newton's quadratic model underestimates how far the optimum lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

_STEPS = 2.0 ** -torch.arange(-2, 10, dtype=torch.float64)  # line-search candidates 4, 2, 1, 1/2, ..., 1/512
_ARMIJO = 1e-4
_CPU_CHUNK = 1 << 19  # elements of X per kernel chunk on a CPU (2 MiB of float32: stays in cache)
_DEVICE_CHUNK = 1 << 28


@dataclass
class BatchedLinear:
    """Per-problem linear rules ``decision = x @ coef + intercept`` in the raw (unstandardized) feature space."""

    coef: Float[Tensor, "batch d"]
    intercept: Float[Tensor, " batch"]
    n_iter: int = 0

    def decision(self, X: Float[Tensor, "batch n d"]) -> Float[Tensor, "batch n"]:
        return torch.einsum("bnd,bd->bn", X.to(self.coef.dtype), self.coef) + self.intercept[:, None]


def standardize_batched(
    X: Float[Tensor, "batch n d"], w: Float[Tensor, "batch n"], standardize: bool = True
) -> tuple[Float[Tensor, "batch n d"], Float[Tensor, "batch d"], Float[Tensor, "batch d"]]:
    """``(Z, mean, sd)``: weighted mean and standard deviation per problem and feature (two-pass, so float32 is
    accurate; constant features get scale 1) and ``Z = (X - mean) / sd``, in three passes over ``X``. With
    ``standardize=False``, ``Z`` is ``X`` itself (not a copy), the mean 0 and the scale 1."""
    b, _, d = X.shape
    if not standardize:
        ones = torch.ones(b, d, dtype=X.dtype, device=X.device)
        return X, torch.zeros_like(ones), ones
    wn = (w / w.sum(1, keepdim=True)).to(X.dtype)[:, None, :]  # [batch, 1, n]
    mean = torch.bmm(wn, X)[:, 0]
    Z = X - mean[:, None, :]
    sd = torch.bmm(wn, Z * Z)[:, 0].sqrt_()
    sd = torch.where(sd > 1e-6 * mean.abs().clamp_min(1.0), sd, torch.ones_like(sd))
    Z.mul_(sd.reciprocal()[:, None, :])
    return Z, mean, sd


def kernel_batched(
    X: Float[Tensor, "batch n d"], w: Float[Tensor, "batch n"], standardize: bool = True
) -> tuple[Float[Tensor, "batch n n"], Float[Tensor, "batch d"], Float[Tensor, "batch d"]]:
    """``(K, mean, sd)`` with ``K = Z Z^T`` for the ``Z`` of :func:`standardize_batched`, built a chunk of problems
    at a time so that ``Z`` is never held in full."""
    b, n, d = X.shape
    chunk = max(1, (_CPU_CHUNK if X.device.type == "cpu" else _DEVICE_CHUNK) // (n * d))
    K = X.new_empty(b, n, n)
    mean, sd = X.new_empty(b, d), X.new_empty(b, d)
    for i in range(0, b, chunk):
        sl = slice(i, i + chunk)
        Z, mean[sl], sd[sl] = standardize_batched(X[sl], w[sl], standardize)
        torch.bmm(Z, Z.transpose(1, 2), out=K[sl])
    return K, mean, sd


def _prepare(X: Tensor, y: Tensor, sample_weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if X.ndim != 3:
        raise ValueError(f"X must be [batch, n, d], got shape {tuple(X.shape)}")
    b, n, _ = X.shape
    y = y.to(X.dtype).expand(b, n) if y.ndim == 1 else y.to(X.dtype)
    w = (
        torch.ones(b, n, dtype=X.dtype, device=X.device)
        if sample_weight is None
        else sample_weight.to(X.dtype)
    )
    w = w.expand(b, n) if w.ndim == 1 else w
    if y.shape != (b, n) or w.shape != (b, n):
        raise ValueError(f"y and sample_weight must be [n] or [batch, n] for X of shape {tuple(X.shape)}")
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError("batched probes take labels 0 and 1")
    if bool((w < 0).any()) or bool((w.sum(1) <= 0).any()):
        raise ValueError("sample weights must be non-negative with a positive total in every problem")
    n1 = (w * y).sum(1)
    n0 = (w * (1 - y)).sum(1)
    single = (n1 <= 0) | (n0 <= 0)
    return y, w, single, torch.log((n1 + 0.5) / (n0 + 0.5))


def fit_logistic_batched(
    X: Float[Tensor, "batch n d"],
    y: Float[Tensor, "*batch n"],
    sample_weight: Float[Tensor, "*batch n"] | None = None,
    *,
    C: float = 1.0,
    standardize: bool = True,
    max_iter: int = 50,
    tol: float = 1e-6,
) -> BatchedLinear:
    """Fit ``batch`` independent L2 logistic regressions: minimize ``C * sum_i w_i CE_i + ||coef||^2 / 2`` on
    standardized features (intercept unpenalized), scikit-learn's ``LogisticRegression`` objective.

    A problem whose training rows hold one class only gets ``coef = 0`` and an intercept of that class's sign.
    Stops when every problem's Newton decrement is below ``tol`` (relative to its objective) or after ``max_iter``.
    """
    y, w, single, prior = _prepare(X, y, sample_weight)
    y = torch.where(single[:, None], torch.full_like(y, 0.5), y)  # soft labels: optimum coef 0, intercept 0
    n, d = X.shape[1:]
    if n <= d:
        K, mean, sd = kernel_batched(X, w, standardize)
        alpha, intercept, n_iter = _newton_dual(K, y, w, C, max_iter, tol)
        # coef = Z^T alpha / sd, with Z = (X - mean) / sd, read from X itself
        coef = (torch.einsum("bnd,bn->bd", X, alpha) - mean * alpha.sum(1, keepdim=True)) / sd.square()
    else:
        Z, mean, sd = standardize_batched(X, w, standardize)
        w_std, intercept, n_iter = _newton_primal(Z, y, w, C, max_iter, tol)
        coef = w_std / sd
    intercept = intercept - (coef * mean).sum(1)
    coef = torch.where(single[:, None], torch.zeros_like(coef), coef)
    intercept = torch.where(single, prior.to(intercept.dtype), intercept)
    return BatchedLinear(coef, intercept, n_iter)


def fit_mass_mean_batched(
    X: Float[Tensor, "batch n d"],
    y: Float[Tensor, "*batch n"],
    sample_weight: Float[Tensor, "*batch n"] | None = None,
) -> BatchedLinear:
    """Difference of class means (mass-mean probe): ``coef = mean(x | 1) - mean(x | 0)``, threshold halfway."""
    y, w, single, prior = _prepare(X, y, sample_weight)
    w1, w0 = w * y, w * (1 - y)
    mu1 = torch.einsum("bn,bnd->bd", w1, X) / w1.sum(1, keepdim=True).clamp_min(1e-30)
    mu0 = torch.einsum("bn,bnd->bd", w0, X) / w0.sum(1, keepdim=True).clamp_min(1e-30)
    coef = torch.where(single[:, None], torch.zeros_like(mu1), mu1 - mu0)
    intercept = -(coef * (mu1 + mu0) / 2).sum(1)
    intercept = torch.where(single, torch.sign(prior).to(X.dtype), intercept)
    return BatchedLinear(coef, intercept)


def _loss_terms(f: Tensor, y: Tensor, w: Tensor, C: float) -> Tensor:
    return C * (w * (torch.nn.functional.softplus(f) - y * f)).sum(-1)


def _line_search(
    f: Tensor, df: Tensor, y: Tensor, w: Tensor, C: float, pen: tuple[Tensor, Tensor, Tensor], dec: Tensor
) -> tuple[Tensor, Tensor]:
    """``(t, progress)`` per problem: the step ``t`` in 4, 2, 1, 1/2, ..., 1/512 with the lowest objective among those
    meeting the Armijo condition (0 where none does), and whether it lowers the objective by more than rounding
    noise (where it does not, the problem is at its optimum to the precision of the dtype). The penalty along the
    step is the quadratic ``pen[0] + t pen[1] + t^2 pen[2]``."""
    t = _STEPS.to(f.device, f.dtype)[:, None]  # [T, 1]
    obj = (
        _loss_terms(f[None] + t[..., None] * df[None], y[None], w[None], C)
        + pen[0]
        + t * pen[1]
        + t**2 * pen[2]
    )
    obj0 = _loss_terms(f, y, w, C) + pen[0]
    slack = 10 * torch.finfo(f.dtype).eps * obj0.abs()
    armijo = obj <= obj0 - _ARMIJO * t * dec + slack  # [T, batch]
    obj = torch.where(armijo, obj, torch.full_like(obj, torch.inf))
    best, i = obj.min(0)
    return torch.where(best.isfinite(), t[i, 0], torch.zeros_like(dec)), obj0 - best > slack


def _newton_dual(
    K: Tensor, y: Tensor, w: Tensor, C: float, max_iter: int, tol: float, group: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """Newton in the span of the rows: ``coef = Z^T alpha`` and ``f = K alpha + b`` for the kernels ``K = Z Z^T``.

    The Newton system ``[[DK + I, D1], [1^T DK, 1^T D1]] [d_alpha; d_b] = -[g + alpha; 1^T g]`` (``D`` the
    curvatures, ``g`` the loss gradients) is solved through the Schur complement of its ``n x n`` block, and that
    block through ``(I + DK)^-1 = I - S M^-1 S K`` with ``S = D^(1/2)`` and ``M = I + S K S``, which is symmetric
    positive definite (eigenvalues at least 1), so one Cholesky factorization per step. Problems leave the batch once
    converged, so later iterations factorize only the slow ones. With ``group`` (one index per problem), ``K``
    holds one kernel per group and problem ``i`` uses ``K[group[i]]``: problems that differ only in their labels
    share a kernel, built once.
    """
    b, n = y.shape
    alpha, k_alpha, icpt = K.new_zeros(b, n), K.new_zeros(b, n), K.new_zeros(b)
    active = torch.arange(b, device=K.device)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        ya, wa, al, ka, ic = _take(active, b, y, w, alpha, k_alpha, icpt)
        ga = group[active] if group is not None else None
        f = ka + ic[:, None]
        p = torch.sigmoid(f)
        g = C * wa * (p - ya)
        D = C * wa * p * (1 - p)
        S = D.sqrt()
        r_a, r_b = g + al, g.sum(1)
        V = torch.stack([-r_a, D], -1)  # solve (I + DK) x = v for both columns
        if ga is None:
            Ka = _take(active, b, K)[0]
            KV = torch.bmm(Ka, V)
            M = Ka * S[:, :, None]
        else:  # one product per shared kernel; M is the only per-problem copy
            KV = _grouped_bmm(K, ga, V)
            M = K[ga].mul_(S[:, :, None])
        M.mul_(S[:, None, :]).diagonal(dim1=1, dim2=2).add_(1.0)
        sol = V - S[..., None] * _spd_solve(M, S[..., None] * KV)
        x1, x2, row = sol[..., 0], sol[..., 1], KV[..., 1]  # row = K D 1
        d_b = (-r_b - (row * x1).sum(1)) / (D.sum(1) + 1e-10 - (row * x2).sum(1))
        d_a = x1 - x2 * d_b[:, None]
        k_da = (torch.bmm(Ka, d_a[..., None]) if ga is None else _grouped_bmm(K, ga, d_a[..., None]))[..., 0]
        dec = -((r_a * k_da).sum(1) + r_b * d_b)
        pen = (0.5 * (al * ka).sum(1), (al * k_da).sum(1), 0.5 * (d_a * k_da).sum(1))
        t, progress = _line_search(f, k_da + d_b[:, None], ya, wa, C, pen, dec)
        alpha[active] = al + t[:, None] * d_a
        k_alpha[active] = ka + t[:, None] * k_da
        icpt[active] = ic + t * d_b
        active = active[progress & _not_done(dec, f, ya, wa, C, pen[0], tol)]
        if active.numel() == 0:
            break
    return alpha, icpt, it


def _grouped_bmm(K: Tensor, group: Tensor, V: Tensor) -> Tensor:
    """``K[group[i]] @ V[i]`` for every problem ``i``: one matrix product per distinct kernel, over all the
    problems that share it, instead of a copy of the kernel per problem."""
    out = torch.empty_like(V)
    for g in torch.unique(group).tolist():
        idx = (group == g).nonzero(as_tuple=True)[0]
        v = V[idx]
        L, n, c = v.shape
        out[idx] = (K[g] @ v.permute(1, 0, 2).reshape(n, L * c)).reshape(n, L, c).permute(1, 0, 2)
    return out


def _not_done(dec: Tensor, f: Tensor, y: Tensor, w: Tensor, C: float, pen: Tensor, tol: float) -> Tensor:
    """Problems whose Newton decrement (half of it estimates the distance to the optimal objective) is above
    ``tol`` relative to the objective."""
    return dec / 2 > tol * (_loss_terms(f, y, w, C) + pen).abs().clamp_min(1.0)


def _newton_primal(
    Z: Tensor, y: Tensor, w: Tensor, C: float, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, int]:
    """Newton in feature space, for problems with more rows than features (converged problems leave the batch)."""
    b, _, d = Z.shape
    coef, icpt = Z.new_zeros(b, d), Z.new_zeros(b)
    Za = torch.cat([Z, torch.ones_like(Z[..., :1])], -1)
    reg = torch.ones(d + 1, dtype=Z.dtype, device=Z.device)
    reg[d] = 1e-10
    active = torch.arange(b, device=Z.device)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        Zs, ya, wa, co, ic = _take(active, b, Za, y, w, coef, icpt)
        f = torch.einsum("bnd,bd->bn", Zs[..., :d], co) + ic[:, None]
        p = torch.sigmoid(f)
        g = C * wa * (p - ya)
        D = C * wa * p * (1 - p)
        grad = torch.einsum("bnd,bn->bd", Zs, g)
        grad[:, :d] += co
        H = Zs.transpose(1, 2) @ (D[:, :, None] * Zs) + torch.diag(reg)
        step = _spd_solve(H, -grad[..., None])[..., 0]
        d_c, d_b = step[:, :d], step[:, d]
        dec = -(grad * step).sum(1)
        pen = (0.5 * co.square().sum(1), (co * d_c).sum(1), 0.5 * d_c.square().sum(1))
        t, progress = _line_search(f, torch.einsum("bnd,bd->bn", Zs, step), ya, wa, C, pen, dec)
        coef[active] = co + t[:, None] * d_c
        icpt[active] = ic + t * d_b
        active = active[progress & _not_done(dec, f, ya, wa, C, pen[0], tol)]
        if active.numel() == 0:
            break
    return coef, icpt, it


def _spd_solve(A: Tensor, rhs: Tensor) -> Tensor:
    """Solve the symmetric positive definite systems ``A x = rhs`` by Cholesky; by LU if rounding broke
    definiteness in any of them (huge unstandardized kernels)."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        return torch.linalg.solve(A, rhs)
    # two triangular solves: the same numbers as cholesky_solve, about 2.5x faster batched on a CPU
    y = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.transpose(-2, -1), y, upper=True)


def _take(active: Tensor, b: int, *tensors: Tensor) -> list[Tensor]:
    """The active problems' rows of each tensor (no copy while every problem is active)."""
    if active.numel() == b:
        return list(tensors)
    return [x[active] for x in tensors]
