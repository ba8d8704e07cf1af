"""Configs for the causal experiments: pure data, validated by pydantic; sizes and devices resolve in the runners."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from afprobe.config import Seed, StrictModel
from afprobe.models import ModelConfig, check_backend
from afprobe.scenarios import POSITION_NAMES, EditStart, ScenarioConfig, harmful_scenario


class ComplianceConfig(StrictModel):
    """How compliance is measured.

    The logit metric is always computed; ``generate`` adds generated responses (``max_new_tokens``, greedy unless
    ``sample``; long enough for a small chat model to get past its preamble to a tag or a refusal), each classified
    by the registered ``classifier``; above ``max_unclear`` unclear verdicts the note warns. ``min_gap`` (nats) is
    the smallest free − paid difference in the logit metric that counts as a gap: below it, fractions of the gap
    are not reported. ``power_sims`` simulated studies estimate the smallest detectable gap (0: off)."""

    batch_size: int = Field(default=8, ge=1)
    generate: bool = True
    generate_batch_size: int | None = Field(
        default=None, ge=1, description="prompts decoded together (None: batch_size)"
    )
    max_new_tokens: int = Field(default=64, ge=1)
    sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    use_cache: bool = True
    classifier: str = "prefix"
    n_bootstrap: int = Field(default=1000, ge=100)
    ci: float = Field(default=0.95, gt=0, lt=1)
    min_gap: float = Field(default=0.05, ge=0)
    max_unclear: float = Field(default=0.2, ge=0, le=1)
    power_sims: int = Field(default=200, ge=0)


class SteeringConfig(StrictModel):
    """Steering sweep: ``layers`` × ``alphas``, each on both tiers, with ``n_random`` matched random directions.

    The added vector is ``alpha · unit direction · median residual norm`` at that layer (median over prompts and
    the steered positions). ``edit_start``: where the edit starts (it then covers every later token): ``all``
    tokens, ``from_cue`` (the tier value and everything after it), or ``generated`` (the last prompt token, where
    the response starts, and every response token). ``backend``: run the sweep on another registered backend.
    ``layers: auto`` takes up to ``n_auto_layers`` evenly spaced layers that have a direction."""

    layers: Literal["auto"] | list[int] = "auto"
    n_auto_layers: int = Field(default=5, ge=1)
    alphas: list[float] = [-1.0, -0.5, 0.5, 1.0, 2.0]
    scale: Literal["natural", "residual_norm"] = "natural"
    edit_start: EditStart = "from_cue"
    n_random: int = Field(default=8, ge=8)
    ablate: bool = True
    direction_position: str = "last"
    probe: str | None = None
    batch_size: int = Field(default=4, ge=1)
    max_rows: int = Field(default=64, ge=2)
    share_prefix: bool = True
    generate: bool = False
    backend: str | None = None

    _check_backend = field_validator("backend")(check_backend)

    @field_validator("alphas")
    @classmethod
    def _nonempty(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("alphas is empty")
        return v

    @field_validator("direction_position")
    @classmethod
    def _known_position(cls, v: str) -> str:
        if v not in POSITION_NAMES:
            raise ValueError(f"unknown position {v!r} (known: {', '.join(POSITION_NAMES)})")
        return v


class PatchingConfig(StrictModel):
    """Activation patching between the free and paid twin of each pair.

    Exact patching at ``layers`` × named ``positions`` and (``response``) the tag tokens after the prompt, where
    the metric is read (denoising free → paid, and noising paid → free when ``noising``), per token at offsets
    ``-window..window`` around the cue (token-aligned pairs only), subspace patching along the probe direction,
    and attribution patching (a gradient approximation) over the same grid."""

    layers: Literal["all"] | list[int] = "all"
    positions: list[str] = list(POSITION_NAMES)
    window: int = Field(default=3, ge=0)
    response: bool = True
    noising: bool = True
    subspace: bool = True
    attribution: bool = True
    direction_position: str = "last"
    probe: str | None = None
    batch_size: int = Field(default=4, ge=1)
    max_rows: int = Field(default=64, ge=2)
    share_prefix: bool = True
    min_gap: float = Field(default=0.05, ge=0)
    backend: str | None = None

    _check_backend = field_validator("backend")(check_backend)

    @field_validator("positions")
    @classmethod
    def _known_positions(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in POSITION_NAMES:
                raise ValueError(f"unknown position {name!r} (known: {', '.join(POSITION_NAMES)})")
        if not v:
            raise ValueError("positions is empty")
        return v


class ComplianceRunConfig(StrictModel):
    """Everything the compliance stage needs when run alone."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=harmful_scenario)
    compliance: ComplianceConfig = ComplianceConfig()
    seed: Seed = 0


class SteerRunConfig(StrictModel):
    """Everything ``afprobe steer`` needs (compliance is measured first: steering is stated against its gap)."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=harmful_scenario)
    compliance: ComplianceConfig = ComplianceConfig()
    steering: SteeringConfig = SteeringConfig()
    seed: Seed = 0


class PatchRunConfig(StrictModel):
    """Everything ``afprobe patch`` needs."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=harmful_scenario)
    compliance: ComplianceConfig = ComplianceConfig(generate=False)
    patching: PatchingConfig = PatchingConfig()
    seed: Seed = 0
