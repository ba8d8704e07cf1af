"""Probe estimators with the scikit-learn contract: hyperparameters in ``__init__``, ``fit`` returns ``self``,
learned attributes end in ``_``.

Every probe is a linear rule ``decision_function(x) = x @ coef_[0] + intercept_[0]`` in the raw activation basis,
binary, with ``direction_`` the unit vector of ``coef_`` pointing toward ``classes_[1]`` (with afprobe labels,
1 = free tier = "training"). ``TorchLogisticProbe`` and ``MassMeanProbe`` also take a stack of problems
``X[batch, n, d]`` with 0/1 labels ``y[n]`` or ``y[batch, n]`` (every layer at once); their learned attributes
then carry a leading ``batch`` axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from afprobe.probes._batched import BatchedLinear, fit_logistic_batched, fit_mass_mean_batched

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _LinearProbe(ClassifierMixin, BaseEstimator):
    """Shared prediction code: a binary linear rule, optionally batched over a leading axis."""

    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        if tags.classifier_tags is not None:
            tags.classifier_tags.multi_class = False
        return tags

    def _fit_2d(self, X: Any, y: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) > 2:
            raise ValueError(
                f"Only binary classification is supported; {type(self).__name__} got {len(classes)} classes"
            )
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of 2 classes; got one class ({classes[0]!r})"
            )
        self.classes_ = classes
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        return X, (y == classes[1]).astype(X.dtype), sw

    def _fit_3d(self, X: Any, y: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = np.asarray(X)
        y = np.asarray(y)
        if not np.isin(y, (0, 1)).all():
            raise ValueError("batched fitting takes labels 0 and 1")
        if not np.isfinite(X).all():
            raise ValueError("Input X contains NaN or infinity.")
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[-1]
        sw = np.ones(X.shape[1]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        return X, y, sw

    def _set_linear(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """``coef`` [batch, d] and ``intercept`` [batch]; a 2-D fit stores batch 1 like scikit-learn."""
        self.coef_ = coef
        self.intercept_ = intercept
        norms = np.linalg.norm(coef, axis=-1, keepdims=True)
        direction = np.divide(coef, norms, out=np.zeros_like(coef), where=norms > 0)
        self.direction_ = direction if self._batched else direction[0]

    _batched: bool = False

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed distance-like score, positive toward ``classes_[1]``: ``[n]``, or ``[batch, n]`` when batched."""
        check_is_fitted(self)
        if self.coef_.shape[0] > 1 or np.asarray(X).ndim == 3:
            X = np.asarray(X, dtype=self.coef_.dtype)
            if X.ndim != 3 or X.shape[0] != self.coef_.shape[0]:
                raise ValueError(
                    f"this probe was fitted on {self.coef_.shape[0]} problems: pass X[batch, n, d]"
                )
            return np.einsum("bnd,bd->bn", X, self.coef_) + self.intercept_[:, None]
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X @ self.coef_[0] + self.intercept_[0])

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        return np.asarray(self.classes_[(scores > 0).astype(int)])


class LogisticProbe(_LinearProbe):
    """L2 logistic regression (scikit-learn ``LogisticRegression``, lbfgs) on standardized features.

    ``coef_`` is mapped back to the raw activation basis, so ``x @ coef_[0] + intercept_[0]`` is the logit.
    """

    def __init__(self, C: float = 1.0, standardize: bool = True, max_iter: int = 1000, tol: float = 1e-4):
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticProbe:
        X, y01, sw = self._fit_2d(X, y, sample_weight)
        mean, scale = _standardization(X, sw, self.standardize)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        lr.fit((X - mean) / scale, y01.astype(int), sample_weight=sw)
        coef = lr.coef_ / scale
        self.mean_, self.scale_ = mean, scale
        self.n_iter_ = lr.n_iter_
        self._set_linear(coef.astype(X.dtype), (lr.intercept_ - coef @ mean).astype(X.dtype))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=-1)


class TorchLogisticProbe(_LinearProbe):
    """The same model as :class:`LogisticProbe`, solved exactly by batched Newton steps in torch (CPU or GPU).

    Fit ``X[n, d]`` for one problem or ``X[batch, n, d]`` for many at once (every layer, position, fold).
    ``dtype`` is ``"float32"``, ``"float64"`` or ``"auto"`` (that of ``X``).
    """

    def __init__(
        self,
        C: float = 1.0,
        standardize: bool = True,
        max_iter: int = 50,
        tol: float = 1e-6,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> TorchLogisticProbe:
        return _fit_torch(self, X, y, sample_weight, logistic=True)

    def predict_proba(self, X: Any) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=-1)


class MassMeanProbe(_LinearProbe):
    """Difference-of-means (mass-mean) probe: ``coef_ = mean(x | classes_[1]) - mean(x | classes_[0])`` with the
    threshold halfway between the class means. No hyperparameters; batched fitting uses torch on ``device``."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MassMeanProbe:
        return _fit_torch(self, X, y, sample_weight, logistic=False)


def _fit_torch(est: Any, X: Any, y: Any, sample_weight: Any, *, logistic: bool) -> Any:
    batched = np.asarray(X).ndim == 3 if not hasattr(X, "tocsr") else False
    X, y01, sw = est._fit_3d(X, y, sample_weight) if batched else est._fit_2d(X, y, sample_weight)
    dtype = _TORCH_DTYPES.get(
        getattr(est, "dtype", "auto"), torch.float64 if X.dtype == np.float64 else torch.float32
    )
    Xt = torch.tensor(X, dtype=dtype, device=est.device)  # a copy: X may be read-only
    Xt = Xt if batched else Xt[None]
    yt = torch.as_tensor(y01, dtype=dtype, device=est.device)
    wt = torch.as_tensor(sw, dtype=dtype, device=est.device)
    fit: BatchedLinear
    if logistic:
        fit = fit_logistic_batched(
            Xt, yt, wt, C=est.C, standardize=est.standardize, max_iter=est.max_iter, tol=est.tol
        )
        est.n_iter_ = fit.n_iter
    else:
        fit = fit_mass_mean_batched(Xt, yt, wt)
    est._batched = batched
    out_dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    est._set_linear(fit.coef.cpu().numpy().astype(out_dtype), fit.intercept.cpu().numpy().astype(out_dtype))
    return est


def _standardization(X: np.ndarray, w: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and scale per feature, the same rule as the torch probes (constant features: scale 1)."""
    if not standardize:
        return np.zeros(X.shape[1], X.dtype), np.ones(X.shape[1], X.dtype)
    wn = w / w.sum()
    mean = wn @ X
    sd = np.sqrt(wn @ np.square(X - mean))
    sd = np.where(sd > 1e-6 * np.maximum(np.abs(mean), 1.0), sd, 1.0)
    return mean.astype(X.dtype), sd.astype(X.dtype)
