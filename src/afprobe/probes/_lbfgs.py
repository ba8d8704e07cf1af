"""Batched L-BFGS over the probe problems that share one activation matrix, and the solver chosen by shape.

What the probe stage fits at one (layer, position): every fold of every label set (the task labels, the
permutation draws, the inner folds of nested selection) and one fit on all rows, all on the same ``X[n, d]``,
differing only in labels and row weights (0 outside the training fold). Batched L-BFGS
(:func:`fit_logistic_lbfgs`) spends each iteration in two matrix products of ``X`` with every problem's vector at
once (``[B, d] @ X^T`` and ``G @ X``), which a CPU or GPU runs near peak, where a loop of scikit-learn fits makes two
memory-bound matrix-vector products per problem per iteration. From 4,000 rows on it iterates in preconditioned
coordinates: the directions of largest variance of activations (requests, formats, outlier features) would
otherwise set the condition number, and scaling them to 1 (:func:`_preconditioner`, a randomized SVD shared by
every problem) halves the CPU time on the probe benchmark's synthetic activations and cuts the iterations 12x on
a steeper spectrum (tests/probes/test_lbfgs.py), to the same optimum; with fewer rows it costs more than it
saves. The shared-kernel Newton solver
(:func:`afprobe.probes._shared.fit_logistic_shared`) works in the span of the training rows: exact and cheapest
while ``n`` is small next to ``d`` (the embedded model's caches), but its ``n x n`` kernels and their
factorizations grow as ``n^2`` and ``n^3``; with more rows than features Newton needs a ``d x d`` Hessian per
problem. :func:`choose_solver` picks by an estimate of the floating-point work.

Both solve the same objective, scikit-learn's: ``C * sum_i w_i CE_i + ||coef||^2 / 2`` on features standardized by
each problem's own weighted training mean and deviation. Here that standardization is a change of variables (the
raw-basis coefficients are ``v / sd``; the mean goes into the intercept), so the standardized copy of ``X`` is never
made: only ``X`` minus its overall mean (for float32 accuracy), shared by all problems.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from afprobe.probes._batched import BatchedLinear, _prepare

Solver = Literal["newton", "lbfgs"]
_STEPS = 2.0 ** -torch.arange(0, 16, dtype=torch.float64)  # backtracking: 1, 1/2, ..., 2^-15
_ARMIJO = 1e-4
# work estimates (iterations) behind choose_solver, measured on synthetic and embedded-model caches
_NEWTON_STEPS = 8
_LBFGS_ITERS = 200
LBFGS_MEMORY = 10  # steps kept per problem
PRECONDITION_RANK = 256  # directions of largest variance the iterations are preconditioned on
# from this many rows on (measured on the growth benchmark's shapes, one CPU thread: 2x fewer CPU seconds at 4,000 x
# 4,096, 1.3-1.4x at 10,000-20,000 x 1,024, none at 3,000 x 1,024, and 1.4-4x more at 1,000 rows, where the
# training rows are separable and the Hessian at the optimum is far below its estimate at p = 1/2)
PRECONDITION_MIN_ROWS = 4000
_NEWTON_SMALL = 2e10


def newton_flops(
    n: int, d: int, problems: int, kernels: int | None = None, train: int | None = None
) -> float:
    """Floating-point work of Newton on ``problems`` fits over ``n`` rows by ``d`` features, ``train`` of them
    training rows (default all). In the span of the training rows (``train <= d``): ``kernels`` distinct training
    sets (default one per problem) each build their kernels once, then every problem factorizes a ``train``-sized
    system per step; else a ``d x d`` Hessian build and factorization per problem per step."""
    m = n if train is None else train
    k = problems if kernels is None else kernels
    if m <= d:
        return k * 2 * n * m * d + problems * (_NEWTON_STEPS * (m**3 / 3 + 6 * m * m) + 2 * m * d)
    return problems * _NEWTON_STEPS * (m * d * d + d**3 / 3)


def lbfgs_flops(n: int, d: int, problems: int, memory: int = LBFGS_MEMORY) -> float:
    """Floating-point work of batched L-BFGS: two ``n x d`` products per problem per iteration, plus the history."""
    return problems * (_LBFGS_ITERS * (4 * n * d + 8 * memory * d) + 3 * n * d)


def choose_solver(
    n: int,
    d: int,
    problems: int,
    fast_products: bool = False,
    *,
    kernels: int | None = None,
    train: int | None = None,
) -> Solver:
    """``"newton"`` (exact to rounding) while its work is small (under ``2e10`` floating-point operations, about a
    second) or not clearly above L-BFGS's, else ``"lbfgs"``: Newton for ``n`` small next to ``d`` (the embedded
    model's hundreds of prompts), L-BFGS at thousands of prompts or once ``n >= d``.

    Calibrated on one CPU core (``python -m benchmarks --only growth``): batched Cholesky steps run about 3x below
    the rate of the large products L-BFGS spends its time in, and bfloat16 products (``fast_products``) halve
    L-BFGS's time again.
    """
    newton = newton_flops(n, d, problems, kernels, train)
    lbfgs = lbfgs_flops(n, d, problems) / (2 if fast_products else 1)
    return "lbfgs" if newton > _NEWTON_SMALL and 3 * newton > lbfgs else "newton"


def fit_logistic_lbfgs(
    X: Float[Tensor, "n d"],
    y: Float[Tensor, "*batch n"],
    sample_weight: Float[Tensor, "*batch n"] | None = None,
    *,
    C: float = 1.0,
    standardize: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    memory: int = LBFGS_MEMORY,
    fast_products: bool = False,
    precondition: int = PRECONDITION_RANK,
) -> BatchedLinear:
    """Fit ``batch`` L2 logistic regressions on the same rows ``X`` (labels ``y`` and weights per problem) by
    batched L-BFGS with a backtracking (Armijo) line search.

    Stops a problem when its gradient, scaled as scikit-learn scales it (divided by ``C * sum(w)``), is at most
    ``tol`` in every coordinate (scikit-learn's lbfgs ``gtol``, so the same ``tol`` is the same stopping rule), when
    a step no longer lowers the objective by more than rounding noise (the optimum to the precision of the dtype),
    or after ``max_iter`` iterations. Converged problems leave the batch, so the matrix products narrow.

    ``fast_products``: run the iterations with ``X`` rounded to bfloat16 (products accumulate in float32; 2.6x the
    float32 speed on a CPU with AVX512-BF16), then check every problem's gradient in the dtype of ``X`` and continue
    there until it meets ``tol``, so the answer meets the same stopping rule as without.

    ``precondition`` (used from ``PRECONDITION_MIN_ROWS`` rows on): iterate in coordinates where the
    ``precondition`` directions of largest variance of the
    standardized ``X`` (a randomized SVD, shared by every problem) have the Hessian's scale of 1, a change of
    variables that leaves the optimum and the stopping rule as they are (checked on the coefficients of the
    problem itself) but removes the large directions of activations (the request and format effects, a few
    outlier features) from the condition number; 0: plain L-BFGS.

    Memory: ``X`` and one centered copy (plus two bfloat16 ones with ``fast_products``, one laid out transposed on a
    CPU), ``2 * memory + 4`` vectors of ``d`` and ``6`` of ``n`` per problem.
    """
    if X.ndim != 2:
        raise ValueError(f"X must be [n, d] (shared by every problem), got shape {tuple(X.shape)}")
    n, d = X.shape
    b = next((t.shape[0] for t in (y, sample_weight) if t is not None and t.ndim == 2), 1)
    y, w, single, prior = _prepare(X[None].expand(b, n, d), y, sample_weight)
    y = torch.where(single[:, None], torch.full_like(y, 0.5), y)  # soft labels: optimum coef 0, intercept 0
    mu = X.mean(0)
    Xc = X - mu
    mean, inv_sd = _standardization(Xc, mu, w, standardize)
    v, c, gamma, n_iter = None, None, None, 0
    Xp = Xc.to(torch.bfloat16) if fast_products else Xc
    k = (
        min(precondition, n // 16, d // 4) if n >= PRECONDITION_MIN_ROWS else 0
    )  # k / n: its cost per iteration
    pre = _preconditioner(Xp, w, mean, inv_sd, C, k)
    if fast_products:
        # on a CPU the gradient's product G @ X runs 1.2-1.5x faster in bfloat16 as G @ (X^T)^T, from a
        # transposed copy (measured at 4,000 x 4,096, 4 to 51 problems; float32 gains nothing)
        XpT = Xp.T.contiguous() if Xp.device.type == "cpu" else None
        rough = _LBFGS(Xp, y, w, mean, inv_sd, C, memory, pre=pre, XpT=XpT)
        v, c, n_iter = rough.run(max_iter, tol)
        gamma = rough.out_gamma
        del rough, Xp, XpT
    exact = _LBFGS(Xc, y, w, mean, inv_sd, C, memory, v, c, gamma, pre)
    v, c, more = exact.run(max_iter - n_iter, tol)
    coef = v * inv_sd
    intercept = c - (coef * (mean + mu)).sum(1)
    coef = torch.where(single[:, None], torch.zeros_like(coef), coef)
    intercept = torch.where(single, prior.to(intercept.dtype), intercept)
    return BatchedLinear(coef, intercept, n_iter + more)


def fast_products_available(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run at hardware speed here: a CUDA device with bfloat16, or a CPU with the
    AVX512-BF16 or AMX instructions (elsewhere they are emulated, and slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; none known elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((x for x in text.splitlines() if x.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def _standardization(Xc: Tensor, mu: Tensor, w: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """Each problem's weighted mean of the centered ``Xc`` and ``1 / sd`` (the rule of
    :func:`~afprobe.probes._batched.standardize_batched`: constant features get scale 1), two products with ``X``."""
    wn = w / w.sum(1, keepdim=True)
    mean = wn @ Xc  # [batch, d]
    if not standardize:
        return mean, torch.ones_like(mean)
    sq = torch.zeros_like(mean)
    rows = max(1, (1 << 24) // max(1, Xc.shape[1]))  # the squares a block of rows at a time
    for i in range(0, Xc.shape[0], rows):
        block = Xc[i : i + rows]
        sq.addmm_(wn[:, i : i + rows], block * block)
    sd = (sq - mean * mean).clamp_min_(0.0).sqrt_()
    keep = sd > 1e-6 * (mean + mu).abs().clamp_min(1.0)
    return mean, torch.where(keep, sd.reciprocal(), torch.ones_like(sd))


class _Preconditioner:
    """``P^2 = I + V^T diag(s) V`` per problem (``V [k, d]`` orthonormal rows, ``s [batch, k]`` in ``(-1, 0]``),
    ``P`` the inverse square root of an estimate of the Hessian's scale along ``V`` (``1 + h``): in the coordinates
    ``u = P^-1 v`` the problem has scale 1 along those directions. L-BFGS there is L-BFGS in ``v`` with the initial
    inverse Hessian ``gamma * P^2`` (BFGS is invariant under a linear change of variables), so only ``P^2`` is
    ever applied, once per iteration, to the gradient."""

    def __init__(self, V: Tensor, s: Tensor):
        self.V, self.s = V, s

    def squared(self, g: Tensor) -> Tensor:
        return g + ((g @ self.V.T) * self.s) @ self.V

    def keep(self, rows: Tensor) -> _Preconditioner:
        return _Preconditioner(self.V, self.s[rows])


def _preconditioner(
    Xp: Tensor, w: Tensor, mean: Tensor, inv_sd: Tensor, C: float, k: int, power: int = 1
) -> _Preconditioner | None:
    """The ``k`` directions of largest variance of ``X`` standardized as the first problem is (a randomized SVD:
    ``k + 16`` random probes, ``power`` power iterations; a fixed seed) and each problem's Hessian scale along them
    at ``p = 1/2``, ``C / 4 * sum_i w_i (z_i . V_j)^2``. None for ``k = 0``."""
    if k <= 0:
        return None
    d = Xp.shape[1]
    dt = mean.dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(d, k + 16, generator=gen, dtype=dt).to(Xp.device)
    m0, sd0 = mean[0], inv_sd[0]

    def z_times(m: Tensor) -> Tensor:  # Z @ m, Z = (Xc - m0) * sd0
        u = m * sd0[:, None]
        return (Xp @ u.to(Xp.dtype)).to(dt) - (m0 @ u)[None, :]

    def zt_times(q: Tensor) -> Tensor:  # Z^T @ q
        return ((q.T.to(Xp.dtype) @ Xp).to(dt) - q.sum(0)[:, None] * m0[None, :]).T * sd0[:, None]

    Q = torch.linalg.qr(z_times(omega)).Q
    for _ in range(power):
        Q = torch.linalg.qr(z_times(zt_times(Q))).Q
    _, _, Vt = torch.linalg.svd(zt_times(Q).T, full_matrices=False)
    V = Vt[:k]  # [k, d]
    ZV = z_times(V.T)  # [n, k]
    h = 0.25 * C * (w @ (ZV * ZV))  # [batch, k]
    return _Preconditioner(V, 1 / (1 + h) - 1)


_HISTORY = ("S", "G", "S_c", "G_c", "SG", "GG")  # the ring of curvature pairs and their inner products


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.einsum("bd,bd->b", a, b)


class _LBFGS:
    """The batch's state: standardized coefficients ``v``, intercepts ``c``, scores ``F = Z v + c``, gradients, and
    the last ``memory`` steps ``s`` and gradient changes ``y`` per problem (a ring: the steps ``S``, the changes
    preconditioned, ``G = P^2 y``, and their inner products ``s_i.y_j`` and ``y_i.P^2 y_j``). Rows of every
    per-problem tensor are the active problems; ``idx`` maps them back to the batch. ``Xp`` is the matrix the products use (centered ``X``, maybe in a lower precision); everything else is
    in the dtype of ``mean``.

    The direction uses L-BFGS's compact form (Byrd, Nocedal and Schnabel 1994; Nocedal and Wright eq. 7.24): a
    handful of batched products with the history instead of ``4 * memory`` small ones, which dominated the
    iteration's time. A pair whose ``s.y`` is not positive (a step lost in rounding) is stored as zeros with a
    unit diagonal, which removes it from the formula.
    """

    def __init__(
        self,
        Xp: Tensor,
        y: Tensor,
        w: Tensor,
        mean: Tensor,
        inv_sd: Tensor,
        C: float,
        memory: int,
        v: Tensor | None = None,
        c: Tensor | None = None,
        gamma: Tensor | None = None,
        pre: _Preconditioner | None = None,
        XpT: Tensor | None = None,
    ):
        b, d = mean.shape
        self.pre = pre
        self.Xp, self.C, self.m, self.dtype = Xp, C, memory, mean.dtype
        # the gradient's operand: Xp, or the same values laid out transposed
        self.Xg = Xp if XpT is None else XpT.T
        self.y, self.w, self.mean, self.inv_sd = y, w, mean, inv_sd
        self.scale = C * w.sum(1)  # scikit-learn's gradient scale
        self.h0 = 1 + 0.25 * self.scale  # Hessian diagonal at p = 1/2 on standardized features
        self.v = mean.new_zeros(b, d) if v is None else v.clone()
        self.c = mean.new_zeros(b) if c is None else c.clone()
        self.F = y.new_zeros(y.shape) if v is None else self.scores_along(self.v, self.c)
        self.S, self.G = mean.new_zeros(b, memory, d), mean.new_zeros(b, memory, d)
        self.S_c, self.G_c = mean.new_zeros(b, memory), mean.new_zeros(b, memory)
        self.SG, self.GG = mean.new_zeros(b, memory, memory), mean.new_zeros(b, memory, memory)
        self.gamma = 1 / self.h0 if gamma is None else gamma.clone()
        self.head, self.k = 0, 0  # the ring's next slot, pairs stored
        self.idx = torch.arange(b, device=mean.device)
        self.out_v, self.out_c, self.out_gamma = self.v.clone(), self.c.clone(), self.gamma.clone()

    def loss(self, F: Tensor) -> Tensor:
        return self.C * (self.w * (torch.nn.functional.softplus(F) - self.y * F)).sum(-1)

    def gradient(self) -> tuple[Tensor, Tensor]:
        G = self.C * self.w * (torch.sigmoid(self.F) - self.y)  # [batch, n]
        gc = G.sum(1)
        gv = (G.to(self.Xp.dtype) @ self.Xg).to(self.dtype)
        gv.addcmul_(self.mean, gc[:, None], value=-1.0).mul_(self.inv_sd).add_(self.v)
        return gv, gc

    def preconditioned(self, gv: Tensor) -> Tensor:
        """``P^2 g``."""
        return gv if self.pre is None else self.pre.squared(gv)

    def scores_along(self, qv: Tensor, qc: Tensor) -> Tensor:
        u = qv * self.inv_sd
        F = (u.to(self.Xp.dtype) @ self.Xp.T).to(self.dtype)
        return F.add_((qc - _dot(u, self.mean))[:, None])

    def _with_history(self, A: Tensor, A_c: Tensor, qv: Tensor, qc: Tensor) -> Tensor:
        """Inner products of every stored vector of ``A`` with ``(qv, qc)``: ``[batch, memory]``."""
        return (qv[:, None, :] @ A.mT)[:, 0] + A_c * qc[:, None]  # this form runs ~10x faster than A @ q

    def direction(self, gv: Tensor, pg: Tensor, gc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``-H g`` for the L-BFGS inverse Hessian ``H`` of the last ``k`` pairs (compact form, initial inverse
        Hessian ``gamma * P^2``; ``pg = P^2 g``)."""
        gamma = self.gamma
        if k == 0:
            return -pg * gamma[:, None], -gc * gamma
        # the ring's slots, oldest first; the small matrices are put in that order, the history stays in place
        order = torch.tensor([(self.head - k + j) % self.m for j in range(k)], device=gv.device)
        sg = self.SG[:, order][:, :, order]
        gg = self.GG[:, order][:, :, order]
        a = self._with_history(self.S, self.S_c, gv, gc)[:, order]
        b = self._with_history(self.G, self.G_c, gv, gc)[:, order]
        R = torch.triu(sg)
        ra = torch.linalg.solve_triangular(R, a[..., None], upper=True)  # R^-1 a
        inner = (torch.diagonal(sg, dim1=1, dim2=2)[..., None] * ra) + gamma[:, None, None] * (gg @ ra)
        q1 = torch.linalg.solve_triangular(
            R.transpose(1, 2), inner - gamma[:, None, None] * b[..., None], upper=False
        )[..., 0]
        q2 = -gamma[:, None] * ra[..., 0]
        c1, c2 = gv.new_zeros(len(gv), self.m), gv.new_zeros(len(gv), self.m)  # back to slot order
        c1[:, order], c2[:, order] = q1, q2
        hv = (
            pg * gamma[:, None]
            + torch.bmm(c1[:, None, :], self.S)[:, 0]
            + torch.bmm(c2[:, None, :], self.G)[:, 0]
        )
        hc = gc * gamma + (c1 * self.S_c).sum(1) + (c2 * self.G_c).sum(1)
        return hv.neg_(), hc.neg_()

    def _store(self, sv: Tensor, sc: Tensor, yv: Tensor, pyv: Tensor, yc: Tensor) -> None:
        """Put the pair (``pyv = P^2 yv``) in the ring's next slot and update the inner products ``s_i.y_h`` (the
        compact form reads only ``s_i.y_j`` for ``i`` no newer than ``j``) and ``y_i.P^2 y_h``."""
        h = self.head
        sy = _dot(sv, yv) + sc * yc
        yy = _dot(yv, pyv) + yc * yc
        ok = sy > 1e-10 * torch.sqrt((_dot(sv, sv) + sc * sc) * yy.clamp_min(0))
        keep = ok.to(sv.dtype)
        self.S[:, h], self.S_c[:, h] = sv * keep[:, None], sc * keep
        self.G[:, h], self.G_c[:, h] = pyv * keep[:, None], yc * keep
        y_new = yv * keep[:, None]
        self.SG[:, :, h] = self._with_history(self.S, self.S_c, y_new, self.G_c[:, h])
        g_g = self._with_history(self.G, self.G_c, y_new, self.G_c[:, h])
        self.GG[:, :, h], self.GG[:, h, :] = g_g, g_g
        self.SG[:, h, h] = torch.where(ok, sy, torch.ones_like(sy))
        self.gamma = torch.where(ok, sy / yy.clamp_min(1e-30), self.gamma)
        self.head = (h + 1) % self.m

    def run(self, max_iter: int, tol: float) -> tuple[Tensor, Tensor, int]:
        gv, gc = self.gradient()
        pg = self.preconditioned(gv)
        obj = self.loss(self.F) + 0.5 * _dot(self.v, self.v)
        done = _converged(gv, gc, self.scale, tol)  # on the gradient in v: scikit-learn's rule
        it = 0
        while True:
            if bool(done.any()):
                self._retire(done)
                keep = ~done
                gv, pg, gc, obj = gv[keep], pg[keep], gc[keep], obj[keep]
            if self.idx.numel() == 0 or it >= max_iter:
                break
            it += 1
            qv, qc = self.direction(gv, pg, gc, self.k)
            dF = self.scores_along(qv, qc)
            slope = _dot(gv, qv) + gc * qc
            t, progress, obj_t = self._line_search(dF, qv, slope, obj)
            sv, sc = qv.mul_(t[:, None]), t * qc
            self.v.add_(sv)
            self.c = self.c + sc
            self.F.addcmul_(dF, t[:, None])
            gv_new, gc_new = self.gradient()
            pg_new = self.preconditioned(gv_new)
            self._store(sv, sc, gv_new - gv, pg_new - pg, gc_new - gc)
            self.k = min(self.k + 1, self.m)
            gv, pg, gc, obj = gv_new, pg_new, gc_new, obj_t
            done = ~progress | _converged(gv, gc, self.scale, tol)
        if self.idx.numel():
            self._retire(torch.ones_like(self.c, dtype=torch.bool))
        return self.out_v, self.out_c, it

    def _line_search(
        self, dF: Tensor, qv: Tensor, slope: Tensor, obj0: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, progress, objective at t)``: the largest step in 1, 1/2, ..., 2^-15 meeting the Armijo condition
        (the loss along the step costs no product with ``X``: the scores move along ``dF``). ``progress`` is false
        where no step lowers the objective by more than rounding noise."""
        vq, qq, vv = _dot(self.v, qv), _dot(qv, qv), _dot(self.v, self.v)
        slack = 10 * torch.finfo(self.dtype).eps * obj0.abs()
        t = torch.zeros_like(obj0)
        obj_t = obj0.clone()
        pending = torch.arange(len(obj0), device=obj0.device)
        for step in _STEPS.tolist():
            F = self.F[pending] + step * dF[pending]
            y, w = self.y[pending], self.w[pending]
            loss = self.C * (w * (torch.nn.functional.softplus(F) - y * F)).sum(-1)
            obj = loss + 0.5 * (vv[pending] + 2 * step * vq[pending] + step * step * qq[pending])
            ok = obj <= obj0[pending] + _ARMIJO * step * slope[pending] + slack[pending]
            hit = pending[ok]
            t[hit], obj_t[hit] = step, obj[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
        return t, obj0 - obj_t > slack, obj_t

    def _retire(self, done: Tensor) -> None:
        """Move the ``done`` problems' results out and drop them (and their history) from the batch."""
        gone = self.idx[done]
        self.out_v[gone], self.out_c[gone] = self.v[done], self.c[done]
        self.out_gamma[gone] = self.gamma[done]
        keep = ~done
        self.idx = self.idx[keep]
        for name in ("v", "c", "F", "y", "w", "mean", "inv_sd", "scale", "h0", "gamma", *_HISTORY):
            setattr(self, name, getattr(self, name)[keep])
        if self.pre is not None:
            self.pre = self.pre.keep(keep)


def _converged(gv: Tensor, gc: Tensor, scale: Tensor, tol: float) -> Tensor:
    return torch.maximum(gv.abs().amax(1), gc.abs()) <= tol * scale
