"""What the stages of one run share: the config, the run directory, the model (loaded once, on the first stage
that needs it) and the prompts (built and tokenized once per prompt set, then handed to every runner)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from afprobe.experiments import Subject, make_subject
from afprobe.models import LoadedModel, load_model
from afprobe.pipeline._config import RunConfig, check_model_layers
from afprobe.scenarios import POSITION_NAMES, Prompt, ScenarioConfig, TokenizedPrompt, build_scenario


@dataclass
class RunState:
    """The shared state of a run. ``subject("scenario")`` holds the prompts that are cached, probed and scored
    for compliance (tokenized at ``cache.positions``); ``subject("causal")`` the steering and patching prompts
    (every named position). Each is built once; when both sets are the same, they are one object."""

    cfg: RunConfig
    out_dir: Path
    lm: LoadedModel | None = None
    progress: bool = True
    say: Callable[[str], None] = field(default=lambda _msg: None)
    finished: list[str] = field(default_factory=list)  # stages done in this run (ran or reused), in order
    reused: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _prompts: dict[str, list[Prompt]] = field(default_factory=dict, init=False, repr=False)
    _subjects: dict[str, Subject] = field(default_factory=dict, init=False, repr=False)

    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage

    def model(self) -> LoadedModel:
        if self.lm is None:
            self.say(f"loading model {self.cfg.model.name}")
            lm = load_model(self.cfg.model)
            check_model_layers(self.cfg, lm.n_layers, lm.name)
            self.lm = lm
        return self.lm

    def _spec(self, kind: str) -> tuple[ScenarioConfig, tuple[str, ...]]:
        if kind == "scenario":
            return self.cfg.scenario, tuple(self.cfg.cache.positions)
        if kind == "causal":
            return self.cfg.resolved_causal_scenario, POSITION_NAMES
        raise ValueError(f"unknown prompt set {kind!r}")

    def prompts(self, kind: str = "scenario") -> list[Prompt]:
        """The prompt set ``kind`` (built once; a missing request file or an empty set fails here)."""
        if kind not in self._prompts:
            scenario, _ = self._spec(kind)
            other = next((k for k in self._prompts if self._spec(k)[0] == scenario), None)
            self._prompts[kind] = self._prompts[other] if other else build_scenario(scenario)
        return self._prompts[kind]

    def subject(self, kind: str = "scenario") -> Subject:
        """The prompt set ``kind`` tokenized once, with the model and its backend."""
        if kind not in self._subjects:
            other = next((k for k in self._subjects if self._spec(k) == self._spec(kind)), None)
            if other is not None:
                self._subjects[kind] = self._subjects[other]
            else:
                _, positions = self._spec(kind)
                self._subjects[kind] = make_subject(self.model(), self.prompts(kind), positions=positions)
        return self._subjects[kind]

    def tokenized(self, kind: str = "scenario") -> list[TokenizedPrompt]:
        return self.subject(kind).toks
