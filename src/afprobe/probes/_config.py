"""``ProbeConfig``: everything ``afprobe probe`` needs. Pure data; devices are resolved in the runner."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from afprobe.config import Seed, StrictModel, check_device

ProbeType = Literal["torch_logistic", "mass_mean", "logistic"]
PROBE_TYPES: tuple[str, ...] = ("torch_logistic", "mass_mean", "logistic")
DEFAULT_PROBES: tuple[ProbeType, ...] = ("torch_logistic", "mass_mean")


class ProbeConfig(StrictModel):
    """Probe types, which layers and positions to fit, cross-validation, the permutation test, bootstrap and
    regularization.

    ``C`` is the inverse L2 strength shared by both logistic probes (scikit-learn's convention: the objective is
    ``C * sum(cross-entropy) + ||w||^2 / 2`` on standardized features, intercept unpenalized), so the two fit the
    same model (``logistic``, scikit-learn's solver, is off by default: it is the slow cross-check of
    ``torch_logistic``). ``headline_probe`` picks the probe whose curve gives ``best`` (default: the first of
    ``probes``); its site is chosen by nested cross-validation (``folds`` >= 3).

    ``permutations`` draws of the labels swapped within pairs refit every probe at the positions after the cue:
    the null of the max-statistic test behind "decodable" (its p-value is never below ``1 / (permutations + 1)``,
    so fewer than ``1 / alpha - 1`` draws can never reach ``alpha``; 0 turns the test off). The first
    ``baseline_repeats`` draws are also fitted at every position and averaged into each curve's shuffled-label
    baseline. ``power_sims`` simulated studies per strength estimate the smallest detectable AUROC (0: off).

    ``solver`` (``torch_logistic``): ``newton`` is exact to rounding and cheapest while prompts are few next to
    features (hundreds); ``lbfgs`` fits every problem of a (layer, position) together on their shared activations
    and stops at scikit-learn's ``tol`` (within ``max_iter``), the one for thousands of prompts or more prompts than
    features; ``auto`` picks by shape (:func:`afprobe.probes.choose_solver`).
    """

    probes: list[ProbeType] = Field(default_factory=lambda: list(DEFAULT_PROBES))
    headline_probe: ProbeType | None = None
    positions: list[str] | None = None
    layers: list[int] | None = None
    folds: int = Field(default=5, ge=2)
    bootstrap: int = Field(default=1000, ge=10)
    baseline_repeats: int = Field(
        default=5,
        ge=1,
        description="permutation draws fitted at every position for the shuffled-label curves",
    )
    permutations: int = Field(
        default=100, ge=0, description="permutation draws of the max-statistic test (0: no test)"
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="family-wise level of the probe tests")
    power_sims: int = Field(default=16, ge=0, description="simulated studies per strength for power (0: off)")
    ci: float = Field(default=0.95, gt=0.0, lt=1.0)
    C: float = Field(default=1.0, gt=0.0)
    standardize: bool = True
    max_iter: int = Field(
        default=1000,
        ge=1,
        description="L-BFGS iterations (probe 'logistic', and torch_logistic's lbfgs solver)",
    )
    tol: float = Field(
        default=1e-4,
        gt=0.0,
        description="L-BFGS gradient tolerance (scikit-learn's gtol), both L-BFGS solvers",
    )
    newton_iter: int = Field(default=50, ge=1, description="Newton iterations of the batched torch probe")
    newton_tol: float = Field(default=1e-6, gt=0.0)
    solver: Literal["auto", "newton", "lbfgs"] = Field(
        default="auto",
        description="torch_logistic's solver: exact Newton, batched L-BFGS over the problems sharing a position "
        "(stops at scikit-learn's tol, within max_iter), or by shape",
    )
    fast_products: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="lbfgs solver: iterate with bfloat16 products, then finish in torch_dtype to the same tol "
        "(auto: where the CPU or GPU runs bfloat16 natively)",
    )
    torch_dtype: Literal["float32", "float64"] = "float32"
    device: str = "auto"
    max_batch_elements: int = Field(
        default=2**27, ge=1, description="cap on problems x prompts x d_model per torch batch"
    )
    plots: bool = True

    @field_validator("probes")
    @classmethod
    def _check_probes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one probe type")
        if len(set(v)) != len(v):
            raise ValueError(f"probe types repeat: {v}")
        return v

    _check_device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _check_headline(self) -> ProbeConfig:
        if self.headline_probe is not None and self.headline_probe not in self.probes:
            raise ValueError(f"headline_probe {self.headline_probe!r} is not one of probes {self.probes}")
        return self

    @property
    def headline(self) -> str:
        return self.headline_probe or self.probes[0]


class ProbeRunConfig(StrictModel):
    """Everything ``afprobe probe`` needs: the ``probes`` section of a run config and the run's ``seed`` (folds,
    label draws and bootstrap resamples all derive from it)."""

    probes: ProbeConfig = ProbeConfig()
    seed: Seed = 0
