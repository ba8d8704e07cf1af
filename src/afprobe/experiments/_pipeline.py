"""``afprobe run``: scenarios → cache → probes → compliance → steering → patching → report, one model load.

Each stage writes ``DIR/<stage>/`` and, last, a small stamp ``DIR/<stage>/.afprobe-stage.json`` holding a hash of
the config sections the stage reads and of the stamps of the stages it reads from. On a re-run a stage whose
stamp matches is reused; any other stage is redone (its directory cleared first), and since every hash covers
its upstream hashes, a change flows downstream and nowhere else. An interrupted run is resumed by running the
same command again: finished stages are reused, and the cache stage resumes from its ``.partial`` file when that
file was started with the same inputs.

``summary.json`` and ``report.html`` are written under temporary names and renamed last, and removed at the start
of any run that will redo the report, so a run that fails never leaves a report that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

import afprobe
from afprobe._errors import AfprobeError
from afprobe.activations import CacheConfig, CacheRunConfig, CacheRunner, partial_path
from afprobe.config import StrictModel, apply_overrides, read_yaml, validate
from afprobe.experiments._config import ComplianceConfig, PatchingConfig, SteeringConfig
from afprobe.models import LoadedModel, ModelConfig, load_model
from afprobe.probes import ProbeConfig, ProbeRunner
from afprobe.report import ReportConfig
from afprobe.scenarios import POSITION_NAMES, Prompt, ScenarioConfig, TokenizedPrompt, build_scenario

STAGES: tuple[str, ...] = ("scenarios", "cache", "probes", "compliance", "steering", "patching", "report")
NEEDS: dict[str, tuple[str, ...]] = {
    "scenarios": (),
    "cache": ("scenarios",),
    "probes": ("cache",),
    "compliance": ("scenarios",),
    "steering": ("probes",),
    "patching": ("probes",),
    "report": ("scenarios",),  # and every other planned stage: see Pipeline.upstream
}
INPUTS: dict[str, tuple[str, ...]] = {
    "scenarios": ("model", "scenario", "cache.positions"),
    "cache": ("model", "scenario", "cache", "seed"),
    "probes": ("probes",),
    "compliance": ("model", "compliance", "seed"),
    "steering": ("model", "causal_scenario", "compliance", "steering", "seed"),
    "patching": ("model", "causal_scenario", "compliance", "patching", "seed"),
    "report": ("report", "description"),
}
# Settings that change where or how fast a stage runs, not what it computes: left out of the hashes.
NOT_HASHED: frozenset[str] = frozenset({"model.device", "probes.device", "probes.max_batch_elements"})
STAMP = ".afprobe-stage.json"
PIPELINE_FORMAT = "afprobe.pipeline/1"
ACTIVATIONS = "activations.h5"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
RESOLVED_CONFIG = "config.yaml"


def _harmful_scenario() -> ScenarioConfig:
    return ScenarioConfig(harmful=True)


class RunConfig(StrictModel):
    """Every stage's config in one file (``afprobe run CONFIG``).

    ``scenario`` gives the prompts that are cached, probed and scored for compliance. Steering and patching run
    on ``scenario`` with the keys given in ``causal_scenario`` changed (e.g. a smaller ``limit``): they cost a
    forward pass per setting per prompt, so fewer prompts keep them affordable on a CPU. ``stages`` lists what to
    run; the stages they read from are added (and reused when up to date). ``description`` heads the report.
    """

    description: str = ""
    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=_harmful_scenario)
    causal_scenario: ScenarioConfig | None = None
    cache: CacheConfig = CacheConfig()
    probes: ProbeConfig = ProbeConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    steering: SteeringConfig = SteeringConfig()
    patching: PatchingConfig = PatchingConfig()
    report: ReportConfig = ReportConfig()
    stages: list[str] = list(STAGES)
    seed: int = 0

    @property
    def resolved_causal_scenario(self) -> ScenarioConfig:
        """``scenario`` with the keys set in ``causal_scenario`` replaced."""
        if self.causal_scenario is None:
            return self.scenario
        changed = self.causal_scenario.model_dump(include=self.causal_scenario.model_fields_set)
        return ScenarioConfig(**{**self.scenario.model_dump(), **changed})

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        for s in v:
            if s not in STAGES:
                raise ValueError(f"unknown stage {s!r} (known: {', '.join(STAGES)})")
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


# --------------------------------------------------------------------------------------------- configs


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``afprobe/experiments/configs`` (``afprobe run NAME``)."""
    folder = resources.files("afprobe.experiments").joinpath("configs")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_config_text(name: str) -> str:
    if name not in shipped_configs():
        raise AfprobeError(
            f"unknown config {name!r}: not a shipped config ({', '.join(shipped_configs())}) nor a .yaml file"
        )
    return (
        resources.files("afprobe.experiments").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")
    )


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


# --------------------------------------------------------------------------------------------- stamps


def _section(dump: Mapping[str, Any], key: str) -> Any:
    node: Any = dump
    for part in key.split("."):
        node = node[part]
    return node


def _strip(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v, f"{prefix}.{k}") for k, v in node.items() if f"{prefix}.{k}" not in NOT_HASHED}
    return node


def stage_inputs(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """The config values a stage's hash covers (``NOT_HASHED`` settings left out)."""
    dump = cfg.model_dump(mode="json")
    dump["causal_scenario"] = cfg.resolved_causal_scenario.model_dump(mode="json")
    return {key: _strip(_section(dump, key), key) for key in INPUTS[stage]}


def stage_hash(cfg: RunConfig, stage: str, upstream: Mapping[str, str]) -> str:
    payload = {
        "format": PIPELINE_FORMAT,
        "stage": stage,
        "inputs": stage_inputs(cfg, stage),
        "upstream": dict(sorted(upstream.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_stamp(stage_dir: Path) -> dict[str, Any] | None:
    """The stamp of a finished stage, or None (missing or unreadable: the stage did not finish)."""
    try:
        data = json.loads((stage_dir / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "hash" in data else None


def write_stamp(stage_dir: Path, record: dict[str, Any]) -> None:
    tmp = stage_dir / f"{STAMP}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, stage_dir / STAMP)


# --------------------------------------------------------------------------------------------- runner


@dataclass
class StageRecord:
    """What happened to one stage in a run: ``ran`` or ``reused`` (its stamp matched)."""

    stage: str
    hash: str
    status: str
    seconds: float


@dataclass
class PipelineResult:
    out_dir: Path
    records: list[StageRecord]
    summary: dict[str, Any] | None = None

    @property
    def report(self) -> Path | None:
        p = self.out_dir / REPORT_FILE
        return p if p.is_file() else None

    def status(self, stage: str) -> str | None:
        return next((r.status for r in self.records if r.stage == stage), None)


StageFn = Callable[["Pipeline", Path], dict[str, Any] | None]


@dataclass
class Pipeline:
    """Run ``cfg``'s stages into ``out_dir``. Pass ``lm`` to reuse a model that is already loaded (tests,
    notebooks); otherwise it is loaded once, on the first stage that needs it."""

    cfg: RunConfig
    out_dir: Path
    lm: LoadedModel | None = None
    progress: bool = True
    log: Callable[[str], None] | None = None
    _prompts: list[Prompt] | None = field(default=None, init=False, repr=False)
    _bar: Progress | None = field(default=None, init=False, repr=False)
    _toks: list[TokenizedPrompt] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        check_run_config(self.cfg)

    # ---- planning
    def plan(self) -> list[str]:
        """The requested stages and everything they read from, in pipeline order."""
        wanted: set[str] = set()
        todo = list(self.cfg.stages)
        while todo:
            s = todo.pop()
            if s not in wanted:
                wanted.add(s)
                todo.extend(NEEDS[s])
        return [s for s in STAGES if s in wanted]

    def upstream(self, stage: str, plan: Sequence[str]) -> tuple[str, ...]:
        if stage == "report":
            return tuple(s for s in plan if s != "report")
        return NEEDS[stage]

    def hashes(self) -> dict[str, str]:
        plan = self.plan()
        out: dict[str, str] = {}
        for s in plan:
            out[s] = stage_hash(self.cfg, s, {u: out[u] for u in self.upstream(s, plan)})
        return out

    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage

    def is_fresh(self, stage: str, h: str) -> bool:
        stamp = read_stamp(self.stage_dir(stage))
        return stamp is not None and stamp.get("hash") == h and self._outputs_present(stage)

    def freshness(self, plan: Sequence[str], hashes: Mapping[str, str]) -> dict[str, bool]:
        """Which stages can be reused: their stamp matches and none of the stages they read from will be redone
        (a redone stage may differ even with the same inputs, e.g. by GPU nondeterminism)."""
        fresh: dict[str, bool] = {}
        for s in plan:
            fresh[s] = self.is_fresh(s, hashes[s]) and all(fresh[u] for u in self.upstream(s, plan))
        return fresh

    def _outputs_present(self, stage: str) -> bool:
        if stage == "cache":
            return (self.stage_dir("cache") / ACTIVATIONS).is_file()
        if stage == "report":
            return (self.out_dir / SUMMARY_FILE).is_file() and (self.out_dir / REPORT_FILE).is_file()
        return True

    # ---- shared state
    def model(self) -> LoadedModel:
        if self.lm is None:
            self._say(f"loading model {self.cfg.model.name}")
            self.lm = load_model(self.cfg.model)
        return self.lm

    def prompts(self) -> list[Prompt]:
        if self._prompts is None:
            self._prompts = build_scenario(self.cfg.scenario)
        return self._prompts

    def tokenized(self) -> list[TokenizedPrompt]:
        if self._toks is None:
            from afprobe.scenarios import tokenize_prompts

            self._toks = tokenize_prompts(self.model().tokenizer, self.prompts(), self.cfg.cache.positions)
        return self._toks

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
        elif self._bar is not None and self.progress:
            self._bar.console.print(f"  {msg}")

    # ---- running
    def check_output_dir(self) -> None:
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise AfprobeError(f"--out {out} is a file; give a directory for the run")
        if out.is_dir() and any(out.iterdir()) and not (out / RESOLVED_CONFIG).is_file():
            raise AfprobeError(
                f"{out} exists and holds files that are not an afprobe run; give a new directory"
            )

    def run(self) -> PipelineResult:
        """Run every planned stage (reusing the up-to-date ones) and return what happened."""
        self.check_output_dir()
        self.prompts()  # a missing request file or an empty set fails here, before anything is written
        plan, hashes = self.plan(), self.hashes()
        fresh = self.freshness(plan, hashes)
        if "report" in plan and not fresh["report"]:
            for name in (SUMMARY_FILE, REPORT_FILE):
                (self.out_dir / name).unlink(missing_ok=True)
        records: list[StageRecord] = []
        columns = [
            SpinnerColumn(),
            TextColumn("[bold]afprobe run[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        # No stdout/stderr redirection: in Jupyter it recurses with tqdm bars (model loading) under the display.
        with Progress(
            *columns, disable=not self.progress, redirect_stdout=False, redirect_stderr=False
        ) as bar:
            self._bar = bar
            task = bar.add_task("", total=len(plan))
            try:
                for stage in plan:
                    bar.update(task, description=stage)
                    if fresh[stage]:
                        seconds = float((read_stamp(self.stage_dir(stage)) or {}).get("seconds", 0.0))
                        records.append(StageRecord(stage, hashes[stage], "reused", seconds))
                        self._say(f"{stage}: up to date, reused")
                    else:
                        records.append(self._run_stage(stage, hashes, plan, records))
                        self._say(f"{stage}: done in {records[-1].seconds:.1f}s")
                    bar.advance(task)
            finally:
                self._bar = None
        summary = None
        if (self.out_dir / SUMMARY_FILE).is_file():
            summary = json.loads((self.out_dir / SUMMARY_FILE).read_text())
        return PipelineResult(self.out_dir, records, summary)

    def _run_stage(
        self, stage: str, hashes: dict[str, str], plan: list[str], done: list[StageRecord]
    ) -> StageRecord:
        d = self.stage_dir(stage)
        self._prepare(stage, d)
        t0 = time.perf_counter()
        if stage == "report":
            timings = {r.stage: round(r.seconds, 3) for r in done}
            extra = _STAGE_FNS[stage](
                self, d, timings=timings, reused=[r.stage for r in done if r.status == "reused"]
            )
        else:
            extra = _STAGE_FNS[stage](self, d)
        seconds = time.perf_counter() - t0
        write_stamp(
            d,
            {
                "format": PIPELINE_FORMAT,
                "stage": stage,
                "hash": hashes[stage],
                "upstream": {u: hashes[u] for u in self.upstream(stage, plan)},
                "inputs": stage_inputs(self.cfg, stage),
                "seconds": round(seconds, 3),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "afprobe_version": afprobe.__version__,
                **(extra or {}),
            },
        )
        return StageRecord(stage, hashes[stage], "ran", seconds)

    def _prepare(self, stage: str, d: Path) -> None:
        """Clear a stage's stale outputs; keep a cache ``.partial`` that was started with the same inputs."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / RESOLVED_CONFIG).write_text(dump_config(self.cfg))
        if stage == "cache" and d.is_dir():
            (d / STAMP).unlink(missing_ok=True)
            (d / ACTIVATIONS).unlink(missing_ok=True)
            for p in d.iterdir():
                if p != partial_path(d / ACTIVATIONS):
                    _remove(p)
            part = partial_path(d / ACTIVATIONS)
            if part.exists() and not self._partial_matches(part):
                part.unlink()
        elif d.exists():
            _remove(d)
        d.mkdir(parents=True, exist_ok=True)

    def _partial_matches(self, part: Path) -> bool:
        import h5py

        try:
            with h5py.File(part, "r") as f:
                key = f.attrs.get("run_key")
        except (OSError, KeyError):
            return False
        return key == self._cache_runner(part.with_name(ACTIVATIONS)).run_key(self.model(), self.tokenized())

    def _cache_runner(self, out: Path) -> CacheRunner:
        cfg = CacheRunConfig(
            model=self.cfg.model, scenario=self.cfg.scenario, cache=self.cfg.cache, seed=self.cfg.seed
        )
        return CacheRunner(cfg, out, lm=self.model(), progress=self.progress)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------------------------- stages


def _stage_scenarios(p: Pipeline, d: Path) -> dict[str, Any]:
    from afprobe.report import write_setup

    info = write_setup(d, p.model(), p.tokenized(), p.cfg.scenario, p.cfg.report.sample_pair)
    return {"n_prompts": info["n_prompts"], "n_pairs": info["n_pairs"]}


def _stage_cache(p: Pipeline, d: Path) -> dict[str, Any]:
    path = p._cache_runner(d / ACTIVATIONS).run()
    return {"file": path.name}


def _stage_probes(p: Pipeline, d: Path) -> dict[str, Any]:
    ProbeRunner(p.cfg.probes, overwrite=True, progress=p.progress).run(p.stage_dir("cache") / ACTIVATIONS, d)
    return {}


def _stage_compliance(p: Pipeline, d: Path) -> dict[str, Any]:
    from afprobe.experiments._compliance import measure_compliance
    from afprobe.experiments._runners import model_meta, setup, write_compliance

    cfg = p.cfg
    s = setup(cfg.model, cfg.scenario, cfg.seed, p.model(), None)
    result = measure_compliance(s.backend, s.items, cfg.compliance, seed=cfg.seed, progress=p.progress)
    meta = {
        "schema": "afprobe.compliance/1",
        "model": model_meta(s.lm),
        "config": {k: v for k, v in stage_inputs(cfg, "compliance").items()}
        | {"scenario": cfg.scenario.model_dump()},
    }
    write_compliance(result, d, meta)
    return {"n_pairs": result.summary.get("n_pairs")}


def _causal_compliance(p: Pipeline) -> ComplianceConfig:
    """Steering and patching re-measure the logit metric on their own prompts (the gap they are stated against);
    generated responses are the compliance stage's job."""
    return p.cfg.compliance.model_copy(update={"generate": False})


def _probe_directions(p: Pipeline, position: str, probe: str | None) -> Any:
    """The probes stage's directions at ``position``, checked against the model; layers whose direction is zero
    (the embedding output at a position whose token is the same on both tiers) are left out."""
    import torch

    from afprobe.experiments._directions import Directions
    from afprobe.probes import load_directions, read_probe_results

    lm = p.model()
    dirs = load_directions(
        p.stage_dir("probes"), expect_weights_hash=lm.weights_hash, expect_d_model=lm.d_model
    )
    vectors = {}
    for layer in dirs.layers:
        v = torch.from_numpy(dirs.direction(layer, position, probe))
        if torch.isfinite(v).all() and v.norm() > 0:
            vectors[layer] = v / v.norm()
    if not vectors:
        raise AfprobeError(f"the probes found no usable direction at position {position!r}")
    results = read_probe_results(p.stage_dir("probes"))
    best = results.get("best") or {}
    best_layer = int(best["layer"]) if best.get("position") == position and best["layer"] in vectors else None
    return Directions(
        vectors, position, f"probes:{p.stage_dir('probes')}", best_layer, probe or dirs.default_probe
    )


def _stage_steering(p: Pipeline, d: Path) -> dict[str, Any]:
    from afprobe.experiments._config import SteerRunConfig
    from afprobe.experiments._runners import run_steering

    cfg = p.cfg
    run_cfg = SteerRunConfig(
        model=cfg.model,
        scenario=cfg.resolved_causal_scenario,
        compliance=_causal_compliance(p),
        steering=cfg.steering,
        seed=cfg.seed,
    )
    dirs = _probe_directions(p, cfg.steering.direction_position, cfg.steering.probe)
    result = run_steering(run_cfg, d, lm=p.model(), directions=dirs, overwrite=True, progress=p.progress)
    return {"best_layer": result.get("best_layer")}


def _stage_patching(p: Pipeline, d: Path) -> dict[str, Any]:
    from afprobe.experiments._config import PatchRunConfig
    from afprobe.experiments._patch_runner import run_patching

    cfg = p.cfg
    run_cfg = PatchRunConfig(
        model=cfg.model,
        scenario=cfg.resolved_causal_scenario,
        compliance=_causal_compliance(p),
        patching=cfg.patching,
        seed=cfg.seed,
    )
    dirs = _probe_directions(p, cfg.patching.direction_position, cfg.patching.probe)
    result = run_patching(run_cfg, d, lm=p.model(), directions=dirs, overwrite=True, progress=p.progress)
    return {"peak_layer": result.get("peak_layer")}


def _stage_report(p: Pipeline, d: Path, *, timings: dict[str, float], reused: list[str]) -> dict[str, Any]:
    from afprobe.report import write_report

    write_report(
        p.out_dir,
        p.cfg.report,
        timings=timings,
        reused=reused,
        figures_dir=d,
        description=p.cfg.description,
        config_yaml=dump_config(p.cfg),
        stages=p.plan(),
    )
    return {}


_STAGE_FNS: dict[str, Any] = {
    "scenarios": _stage_scenarios,
    "cache": _stage_cache,
    "probes": _stage_probes,
    "compliance": _stage_compliance,
    "steering": _stage_steering,
    "patching": _stage_patching,
    "report": _stage_report,
}


def render_run_report(run_dir: str | Path) -> dict[str, Any]:
    """Redraw ``summary.json``, ``results/`` and ``report.html`` of a run directory from the stages whose stamps
    match its ``config.yaml`` (no model is loaded); return the summary."""
    from afprobe.report import write_report

    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED_CONFIG).is_file():
        raise AfprobeError(
            f"{run_dir} is not an afprobe run directory (no {RESOLVED_CONFIG}; see `afprobe run`)"
        )
    cfg = load_run_config(run_dir / RESOLVED_CONFIG)
    p = Pipeline(cfg, run_dir, progress=False)
    hashes = p.hashes()
    done = [s for s in p.plan() if s != "report" and p.is_fresh(s, hashes[s])]
    if "scenarios" not in done:
        raise AfprobeError(f"{run_dir} holds no finished stage of its config.yaml: run `afprobe run` first")
    timings = {s: float((read_stamp(p.stage_dir(s)) or {}).get("seconds", 0.0)) for s in done}
    return write_report(
        run_dir,
        cfg.report,
        timings=timings,
        reused=done,
        figures_dir=p.stage_dir("report"),
        description=cfg.description,
        config_yaml=dump_config(cfg),
        stages=done,
    )


def run_pipeline(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run ``cfg`` into ``out_dir`` (reusing up-to-date stages) and return what happened."""
    return Pipeline(cfg, Path(out_dir), lm=lm, progress=progress, log=log).run()
