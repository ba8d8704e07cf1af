"""The run config (every stage's section in one file), the shipped configs, and loading them.

Every key means one thing wherever it appears: the standalone commands' configs (``afprobe cache``, ``probe``,
``steer``, ``patch``) are subsets of this one with the same section names, and the one ``seed`` reaches every
stage."""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, field_validator, model_validator

import afprobe
from afprobe._errors import AfprobeError
from afprobe._stats import MIN_REQUESTS
from afprobe.activations import CacheConfig, TranscriptCacheConfig
from afprobe.config import Seed, StrictModel, apply_overrides, read_yaml, validate
from afprobe.experiments import ComplianceConfig, PatchingConfig, ScratchpadConfig, SteeringConfig
from afprobe.models import ModelConfig
from afprobe.probes import ProbeConfig
from afprobe.report import ReportConfig
from afprobe.scenarios import POSITION_NAMES, ScenarioConfig, harmful_scenario

STAGE_NAMES: tuple[str, ...] = (
    "scenarios",
    "cache",
    "probes",
    "compliance",
    "scratchpad",
    "transcripts",
    "steering",
    "patching",
    "report",
)
# the paper's scratchpad sampling and the cache of its transcripts run when a config lists them (``paper`` does)
OPTIONAL_STAGES: tuple[str, ...] = ("scratchpad", "transcripts")
DEFAULT_STAGES: tuple[str, ...] = tuple(s for s in STAGE_NAMES if s not in OPTIONAL_STAGES)


class TranscriptsConfig(TranscriptCacheConfig):
    """The ``transcripts`` stage: cache these spans of the scratchpad stage's transcripts, then (``probe``) fit
    the probes of the ``probes`` section on them when there are enough requests on both tiers."""

    probe: bool = True


class RunConfig(StrictModel):
    """Every stage's config in one file (``afprobe run CONFIG``).

    ``scenario`` gives the prompts that are cached, probed and scored for compliance. Steering and patching run
    on ``scenario`` with the keys given in ``causal_scenario`` changed (e.g. a smaller ``limit``): they cost a
    forward pass per setting per prompt, so fewer prompts keep them affordable on a CPU. ``stages`` lists what to
    run (default: all but the optional ``scratchpad`` and ``transcripts``); the stages they read from are added
    (and reused when up to date). ``description`` heads the report.
    """

    description: str = ""
    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=harmful_scenario)
    causal_scenario: ScenarioConfig | None = None
    cache: CacheConfig = CacheConfig()
    probes: ProbeConfig = ProbeConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    steering: SteeringConfig = SteeringConfig()
    patching: PatchingConfig = PatchingConfig()
    scratchpad: ScratchpadConfig = ScratchpadConfig()
    transcripts: TranscriptsConfig = TranscriptsConfig()
    report: ReportConfig = ReportConfig()
    stages: list[str] = list(DEFAULT_STAGES)
    seed: Seed = 0

    @property
    def resolved_causal_scenario(self) -> ScenarioConfig:
        """``scenario`` with the keys set in ``causal_scenario`` replaced."""
        if self.causal_scenario is None:
            return self.scenario
        changed = self.causal_scenario.model_dump(include=self.causal_scenario.model_fields_set)
        return ScenarioConfig(**{**self.scenario.model_dump(), **changed})

    @model_validator(mode="after")
    def _causal_requests(self) -> RunConfig:
        limit = self.resolved_causal_scenario.limit
        if limit is not None and limit < MIN_REQUESTS and {"steering", "patching"} & set(self.stages):
            raise ValueError(
                f"causal_scenario.limit={limit} is below {MIN_REQUESTS} requests, too few for the gap's interval "
                "over requests: steering and patching could never be stated as fractions of the gap "
                f"(use causal_scenario.limit >= {MIN_REQUESTS})"
            )
        return self

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        for s in v:
            if s not in STAGE_NAMES:
                raise ValueError(f"unknown stage {s!r} (known: {', '.join(STAGE_NAMES)})")
        if not v:
            raise ValueError("stages is empty")
        if len(set(v)) != len(v):
            raise ValueError(f"stages repeat: {v}")
        return v


def check_run_config(cfg: RunConfig) -> None:
    """Cross-section checks that pydantic cannot make section by section; each error names the key."""
    cached = list(cfg.cache.positions)
    for p in cached:
        if p not in POSITION_NAMES:
            raise AfprobeError(
                f"cache.positions: unknown position {p!r} (known: {', '.join(POSITION_NAMES)})"
            )
    for key, names in (
        ("probes.positions", cfg.probes.positions or []),
        ("steering.direction_position", [cfg.steering.direction_position]),
        ("patching.direction_position", [cfg.patching.direction_position]),
    ):
        for p in names:
            if p not in cached:
                raise AfprobeError(
                    f"{key}: position {p!r} is not cached (cache.positions: {', '.join(cached)})"
                )
    for key, layers in (("probes.layers", cfg.probes.layers), ("cache.layers", cfg.cache.layers)):
        if isinstance(layers, list) and any(layer < 0 for layer in layers):
            raise AfprobeError(f"{key}: layers are numbered from 0 (the embedding output), got {layers}")


def check_model_layers(cfg: RunConfig, n_layers: int, model: str) -> None:
    """Every layer the config names for a stage it runs exists in the model (``0..n_layers``): checked when the
    model is loaded and by ``--dry-run``, not when the stage that reads the key is reached minutes later."""
    stages = {*cfg.stages, "cache"}
    for stage, layers in (
        ("cache", cfg.cache.layers),
        ("probes", cfg.probes.layers),
        ("steering", cfg.steering.layers),
        ("patching", cfg.patching.layers),
        ("transcripts", cfg.transcripts.layers),
    ):
        key = f"{stage}.layers"
        listed = layers if isinstance(layers, list) and stage in stages else []
        bad = [layer for layer in listed if not 0 <= layer <= n_layers]
        if bad:
            raise AfprobeError(
                f"{key}: layer {bad[0]} out of range: {model} has layers 0..{n_layers} (set {key}=...)"
            )


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``afprobe/pipeline/configs`` (``afprobe run NAME``)."""
    folder = resources.files("afprobe.pipeline").joinpath("configs")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_config_text(name: str) -> str:
    if name not in shipped_configs():
        raise AfprobeError(
            f"unknown config {name!r}: not a shipped config ({', '.join(shipped_configs())}) nor a .yaml file"
        )
    return resources.files("afprobe.pipeline").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")


def load_run_config(spec: str | Path | None = "default", sets: Iterable[str] = ()) -> RunConfig:
    """A shipped config by name (``default``, ``llama-3.1-8b-instruct`` ...) or a YAML file, then ``key=value``
    overrides; validated, so an unknown key or a wrong type is one :class:`AfprobeError` naming the key."""
    spec = "default" if spec is None else spec
    text = str(spec)
    if isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or os.sep in text or Path(text).exists():
        data, source = read_yaml(spec), text
    else:
        data = yaml.safe_load(shipped_config_text(text)) or {}
        source = f"config {text!r}"
    cfg = validate(RunConfig, apply_overrides(data, sets), source=source)
    check_run_config(cfg)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML: ``afprobe run DIR/config.yaml`` repeats the run."""
    header = (
        f"# afprobe {afprobe.__version__}: the resolved config of this run (every default filled in; "
        "causal_scenario lists only the keys it changes in scenario)\n"
    )
    data = cfg.model_dump(mode="json")
    if cfg.causal_scenario is not None:
        data["causal_scenario"] = cfg.causal_scenario.model_dump(mode="json", exclude_unset=True)
    return header + yaml.safe_dump(data, sort_keys=False)
