"""Fitting many probe problems on one layer's activations and collecting out-of-fold scores.

A *problem* is one fit: which position's activations, which labels, which rows train. The torch probes batch all
problems of a layer into one call (rows outside the training set get weight 0); scikit-learn's runs one by one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from afprobe.probes._batched import BatchedLinear, fit_logistic_batched
from afprobe.probes._config import ProbeConfig
from afprobe.probes._estimators import LogisticProbe
from afprobe.probes._labels import LabelSets
from afprobe.probes._lbfgs import LBFGS_MEMORY, choose_solver, fast_products_available, fit_logistic_lbfgs
from afprobe.probes._metrics import accuracy, auroc, balanced_weights
from afprobe.probes._shared import fit_logistic_shared, fit_mass_mean_shared


@dataclass
class Problems:
    """``pos[b]`` indexes the position axis of ``X``; ``y[b]`` the labels; ``train[b]`` the rows to fit on.

    Fits weight the two classes equally (:func:`balanced_weights`): a no-op for the task labels, whose grouped
    folds are balanced, and what keeps the control task's baseline at chance.
    """

    pos: np.ndarray  # [batch] int
    y: np.ndarray  # [batch, prompt] 0/1
    train: np.ndarray  # [batch, prompt] bool

    def __len__(self) -> int:
        return len(self.pos)

    @property
    def weights(self) -> np.ndarray:
        return balanced_weights(self.y, self.train)


@dataclass
class Fitted:
    """Decision scores of every problem on every row, and each problem's weight vector in the raw basis."""

    scores: np.ndarray  # [batch, prompt]
    coef: np.ndarray  # [batch, d_model]
    warnings: int = 0


def fit_problems(
    probe: str, X: np.ndarray, problems: Problems, cfg: ProbeConfig, device: torch.device
) -> Fitted:
    """Fit every problem with ``probe`` on ``X[position, prompt, d_model]``; score all rows.

    The torch probes read ``X`` once for all problems (:mod:`afprobe.probes._shared`): problems with the same
    position and training rows share their kernel, so extra label sets (shuffled labels, permutations) cost a
    Newton solve each, not a copy of the activations. With more training rows than features the logistic probe
    works in feature space, a batch of problems at a time (:func:`fit_logistic_batched`). ``cfg.solver`` ``lbfgs``
    (or ``auto`` where the shape makes Newton's kernels or Hessians the larger work) fits every problem of a
    position together by batched L-BFGS on that position's rows (:func:`fit_logistic_lbfgs`)."""
    if probe == "logistic":
        return _fit_sklearn(X, problems, cfg)
    dtype = torch.float64 if cfg.torch_dtype == "float64" else torch.float32
    Xt = torch.as_tensor(X, device=device).to(dtype)
    weights = problems.weights
    if probe == "mass_mean":
        scores, coef = fit_mass_mean_shared(Xt, problems.pos, problems.y, weights)
        return Fitted(scores.double().cpu().numpy(), coef.double().cpu().numpy())
    if probe != "torch_logistic":
        raise ValueError(f"unknown probe type {probe!r}")
    n, d = X.shape[1:]
    if solver_for(cfg, n, d, problems, device) == "lbfgs":
        return _fit_lbfgs(Xt, problems, weights, cfg)
    if int(problems.train.sum(1).max()) <= d:
        scores, coef = fit_logistic_shared(
            Xt,
            problems.pos,
            problems.y,
            weights,
            C=cfg.C,
            standardize=cfg.standardize,
            max_iter=cfg.newton_iter,
            tol=cfg.newton_tol,
            max_elements=max(1, cfg.max_batch_elements // 8),
        )
        return Fitted(scores.double().cpu().numpy(), coef.double().cpu().numpy())
    chunk = max(1, cfg.max_batch_elements // (n * d))
    out_scores, coefs = [], []
    for start in range(0, len(problems), chunk):
        sl = slice(start, start + chunk)
        xb = Xt[torch.as_tensor(problems.pos[sl], device=device)]
        yb = torch.as_tensor(problems.y[sl], device=device, dtype=dtype)
        wb = torch.as_tensor(weights[sl], device=device, dtype=dtype)
        fit: BatchedLinear = fit_logistic_batched(
            xb, yb, wb, C=cfg.C, standardize=cfg.standardize, max_iter=cfg.newton_iter, tol=cfg.newton_tol
        )
        out_scores.append(fit.decision(xb).double().cpu().numpy())
        coefs.append(fit.coef.double().cpu().numpy())
    return Fitted(np.concatenate(out_scores), np.concatenate(coefs))


def solver_for(cfg: ProbeConfig, n: int, d: int, problems: Problems, device: torch.device) -> str:
    """The configured solver, or by shape (:func:`choose_solver`) for the problems of the busiest position: their
    number, their distinct training sets (the kernels Newton builds) and their largest training set."""
    if cfg.solver != "auto":
        return cfg.solver
    busiest = max(np.unique(problems.pos), key=lambda p: int((problems.pos == p).sum()))
    train = problems.train[problems.pos == busiest]
    kernels = len(np.unique(train, axis=0))
    return choose_solver(n, d, len(train), _fast(cfg, device), kernels=kernels, train=int(train.sum(1).max()))


def _fast(cfg: ProbeConfig, device: torch.device) -> bool:
    return cfg.fast_products == "on" or (cfg.fast_products == "auto" and fast_products_available(device))


def _fit_lbfgs(Xt: torch.Tensor, problems: Problems, weights: np.ndarray, cfg: ProbeConfig) -> Fitted:
    """Batched L-BFGS, one call per position (in batches bounded by ``max_batch_elements``): every problem of a
    position shares its ``X[prompt, d_model]``."""
    n, d = Xt.shape[1:]
    scores = np.zeros(problems.y.shape)
    coefs = np.zeros((len(problems), d))
    chunk = max(1, cfg.max_batch_elements // (2 * LBFGS_MEMORY * d + 8 * n))
    fast = _fast(cfg, Xt.device)
    for p in np.unique(problems.pos):
        rows = np.flatnonzero(problems.pos == p)
        for start in range(0, len(rows), chunk):
            idx = rows[start : start + chunk]
            yb = torch.as_tensor(problems.y[idx], device=Xt.device, dtype=Xt.dtype)
            wb = torch.as_tensor(weights[idx], device=Xt.device, dtype=Xt.dtype)
            fit = fit_logistic_lbfgs(
                Xt[p],
                yb,
                wb,
                C=cfg.C,
                standardize=cfg.standardize,
                max_iter=cfg.max_iter,
                tol=cfg.tol,
                fast_products=fast,
            )
            scores[idx] = (fit.coef @ Xt[p].T + fit.intercept[:, None]).double().cpu().numpy()
            coefs[idx] = fit.coef.double().cpu().numpy()
    return Fitted(scores, coefs)


def _fit_sklearn(X: np.ndarray, problems: Problems, cfg: ProbeConfig) -> Fitted:
    n_warn = 0
    scores = np.zeros(problems.y.shape)
    coefs = np.zeros((len(problems), X.shape[-1]))
    weights = problems.weights
    for b in range(len(problems)):
        x, y, tr = X[problems.pos[b]], problems.y[b], problems.train[b]
        classes = np.unique(y[tr])
        if len(classes) < 2:  # one class to learn from: predict it, as the batched probes do
            scores[b] = 1.0 if classes[0] == 1 else -1.0
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est = LogisticProbe(C=cfg.C, standardize=cfg.standardize, max_iter=cfg.max_iter, tol=cfg.tol)
            est.fit(x[tr], y[tr], sample_weight=weights[b, tr])
        n_warn += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        scores[b] = est.decision_function(x)
        coefs[b] = est.coef_[0]
    return Fitted(scores, coefs, n_warn)


@dataclass
class LayerFit:
    """One layer's out-of-fold scores: ``oof[set, position, prompt]`` for the task labels (set 0) and each
    permutation draw (NaN where a draw was not fitted); ``inner[outer fold, position, prompt]``, the inner
    cross-validation scores of nested selection (rows outside that outer fold; None when not asked for); and the
    full-data weight vectors ``coef[position, d]`` (task labels)."""

    oof: np.ndarray
    coef: np.ndarray
    warnings: int
    inner: np.ndarray | None = None


def cross_validate_layer(
    probe: str,
    X: np.ndarray,
    labels: LabelSets,
    candidates: list[int],
    cfg: ProbeConfig,
    device: torch.device,
    nested: bool = False,
) -> LayerFit:
    """Request-grouped cross-validation at every position of one layer, in one batch: the task labels and the
    first ``labels.n_curve`` permutation draws at every position, the other draws at the ``candidates`` positions
    only (the family of the permutation test), with ``nested`` the inner folds of every outer fold at the
    candidates (task labels), and a fit on all rows (task labels) for the directions."""
    n_pos, n = X.shape[:2]
    folds, n_folds = labels.folds, labels.n_folds
    sets = [labels.y, *labels.null]
    pos, ys, train, key = [], [], [], []

    def add(p: int, y: np.ndarray, tr: np.ndarray, k: tuple[str, int, int, int]) -> None:
        pos.append(p)
        ys.append(y)
        train.append(tr)
        key.append(k)

    for v, y in enumerate(sets):
        for p in range(n_pos) if v <= labels.n_curve else candidates:
            for f in range(n_folds):
                add(p, y, folds != f, ("oof", v, p, f))
    if nested:  # outer fold f's inner fold g and outer fold g's inner fold f train on the same rows: one fit
        for p in candidates:
            for f in range(n_folds):
                for g in range(f + 1, n_folds):
                    add(p, labels.y, (folds != f) & (folds != g), ("inner", f, p, g))
    for p in range(n_pos):
        add(p, labels.y, np.ones(n, dtype=bool), ("full", 0, p, 0))
    fitted = fit_problems(probe, X, Problems(np.array(pos), np.stack(ys), np.stack(train)), cfg, device)
    oof = np.full((len(sets), n_pos, n), np.nan)
    inner = np.full((n_folds, n_pos, n), np.nan) if nested else None
    coef = np.zeros((n_pos, X.shape[2]))
    for b, (kind, v, p, f) in enumerate(key):
        held = folds == f
        if kind == "oof":
            oof[v, p, held] = fitted.scores[b, held]
        elif kind == "inner" and inner is not None:  # v: the outer fold, f: the inner (held-out) fold
            inner[v, p, held] = fitted.scores[b, held]
            inner[f, p, folds == v] = fitted.scores[b, folds == v]  # and the other way round
        else:
            coef[p] = fitted.coef[b]
    return LayerFit(oof, coef, fitted.warnings, inner)


@dataclass
class Transfer:
    """``accuracy[a, b]``: trained on condition ``a`` (training folds), tested on condition ``b`` (held-out
    folds); the diagonal is ordinary grouped cross-validation within one condition."""

    conditions: list[str]
    accuracy: np.ndarray
    auroc: np.ndarray
    n_test: np.ndarray


def transfer_matrix(
    probe: str,
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    condition: np.ndarray,
    cfg: ProbeConfig,
    device: torch.device,
) -> Transfer:
    """Train on one condition (cue format, system prompt), test on each other, with request-grouped folds."""
    conds = [str(c) for c in dict.fromkeys(condition.tolist())]
    n_folds = int(folds.max()) + 1
    pos, train, key = [], [], []
    for a, ca in enumerate(conds):
        for f in range(n_folds):
            tr = (folds != f) & (condition == ca)
            if tr.any():
                pos.append(0)
                train.append(tr)
                key.append((a, f))
    k = len(conds)
    acc, auc, n_test = np.full((k, k), np.nan), np.full((k, k), np.nan), np.zeros((k, k), dtype=np.int64)
    if not key:
        return Transfer(conds, acc, auc, n_test)
    probs = Problems(np.array(pos), np.broadcast_to(y, (len(pos), len(y))).copy(), np.stack(train))
    scores = fit_problems(probe, X[None], probs, cfg, device).scores
    for a in range(k):
        oof = np.full(len(y), np.nan)
        for b_idx, (a2, f) in enumerate(key):
            if a2 == a:
                held = folds == f
                oof[held] = scores[b_idx, held]
        for b, cb in enumerate(conds):
            rows = (condition == cb) & np.isfinite(oof)
            if rows.any():
                acc[a, b] = accuracy(y[rows], oof[rows])
                auc[a, b] = auroc(y[rows], oof[rows])
                n_test[a, b] = int(rows.sum())
    return Transfer(conds, acc, auc, n_test)
