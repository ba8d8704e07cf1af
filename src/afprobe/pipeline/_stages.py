"""The stages of ``afprobe run``, one :class:`Stage` object each: its name, the stages it reads from, the config
keys its hash covers, its results file, the files that show it finished, and how it runs. The runner, the
summary and report hand-off, ``afprobe report`` and the CLI all read these objects; nothing else lists stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afprobe._io import write_json
from afprobe.activations import (
    CacheRunConfig,
    CacheRunner,
    TranscriptCacheRunner,
    partial_path,
    partial_run_key,
    usable,
)
from afprobe.experiments import (
    COMPLIANCE_FILE,
    PATCHING_FILE,
    SCRATCHPAD_FILE,
    STEERING_FILE,
    TRANSCRIPTS_FILE,
    ComplianceRunConfig,
    ComplianceRunner,
    PatchingRunner,
    PatchRunConfig,
    ScratchpadRunConfig,
    ScratchpadRunner,
    SteeringRunner,
    SteerRunConfig,
    read_transcripts,
)
from afprobe.pipeline._config import STAGE_NAMES, dump_config
from afprobe.pipeline._state import RunState
from afprobe.probes import RESULTS_FILE, ProbeRunConfig, ProbeRunner
from afprobe.report import REPORT_FILE, SETUP_FILE, SUMMARY_FILE, write_report, write_setup
from afprobe.scenarios import TIERS

ACTIVATIONS = "activations.h5"
JUDGE_CACHE = "judge_cache.jsonl"
TRANSCRIPT_STAGE_FILE = "transcripts.json"
MIN_PROBE_REQUESTS = 4  # per tier, for probes on transcripts (fewer cannot be cross-validated by request)
StageFn = Callable[[RunState, Path], dict[str, Any] | None]


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    ``needs``: the stages whose outputs it reads (``reads_all``: every other planned stage, as the report does).
    ``inputs``: the dotted config keys its hash covers. ``results``: its results file inside its directory, the
    one the report reads (``None``: nothing for the report). ``finished``: files, relative to the run directory,
    that must exist besides the stamp for the stage to count as done. ``keep``: the files in its directory that a
    redo keeps (a cache ``.partial`` started with the same inputs, which it resumes)."""

    name: str
    needs: tuple[str, ...]
    inputs: tuple[str, ...]
    run: StageFn
    results: str | None = None
    finished: tuple[str, ...] = ()
    reads_all: bool = False
    keep: Callable[[RunState, Path], set[Path]] | None = None

    def done_files(self) -> tuple[str, ...]:
        own = (f"{self.name}/{self.results}",) if self.results else ()
        return own + self.finished


def _scenarios(st: RunState, d: Path) -> dict[str, Any]:
    info = write_setup(d, st.model(), st.tokenized("scenario"), st.cfg.scenario, st.cfg.report.sample_pair)
    return {"n_prompts": info["n_prompts"], "n_pairs": info["n_pairs"]}


def _cache_runner(st: RunState) -> CacheRunner:
    cfg = st.cfg
    run = CacheRunConfig(model=cfg.model, scenario=cfg.scenario, cache=cfg.cache, seed=cfg.seed)
    return CacheRunner(run, progress=st.progress)


def _cache(st: RunState, d: Path) -> dict[str, Any]:
    path = _cache_runner(st).run(d / ACTIVATIONS, lm=st.model(), prompts=st.tokenized("scenario"))
    return {"file": path.name}


def _cache_keep(st: RunState, d: Path) -> set[Path]:
    """The ``.partial`` activation file, when it was started with this run's inputs (the cache resumes it)."""
    key = partial_run_key(d / ACTIVATIONS)
    if key is None or key != _cache_runner(st).run_key(st.model(), st.tokenized("scenario")):
        return set()
    return {partial_path(d / ACTIVATIONS)}


def _probes(st: RunState, d: Path) -> dict[str, Any]:
    run = ProbeRunConfig(probes=st.cfg.probes, seed=st.cfg.seed)
    ProbeRunner(run, overwrite=True, progress=st.progress).run(
        d, activations=st.stage_dir("cache") / ACTIVATIONS
    )
    return {}


def _compliance(st: RunState, d: Path) -> dict[str, Any]:
    cfg = st.cfg
    run = ComplianceRunConfig(
        model=cfg.model, scenario=cfg.scenario, compliance=cfg.compliance, seed=cfg.seed
    )
    result = ComplianceRunner(run, progress=st.progress).run(d, subject=st.subject("scenario"))
    return {"n_pairs": result.summary.get("n_pairs")}


def _scratchpad(st: RunState, d: Path) -> dict[str, Any]:
    cfg = st.cfg
    run = ScratchpadRunConfig(
        model=cfg.model, scenario=cfg.scenario, scratchpad=cfg.scratchpad, seed=cfg.seed
    )
    runner = ScratchpadRunner(run, overwrite=True, progress=st.progress)
    # the verdict cache outlives a redo of the stage (it is keyed by transcript and judge)
    summary = runner.run(d, subject=st.subject("scenario"), judge_cache=st.out_dir / JUDGE_CACHE)
    return {"n_transcripts": summary["n_transcripts"], "gap": summary["compliance"].get("gap")}


def _transcripts(st: RunState, d: Path) -> dict[str, Any]:
    """Cache spans of the scratchpad stage's transcripts; fit probes on them when both tiers have enough
    requests. Writes ``transcripts.json`` last (what was cached, or why nothing could be)."""
    cfg = st.cfg.transcripts
    transcripts = read_transcripts(st.stage_dir("scratchpad") / TRANSCRIPTS_FILE)
    cached = [transcripts[i] for i in usable(transcripts, cfg.positions)]
    info: dict[str, Any] = {
        "n_transcripts": len(transcripts),
        "n_cached": len(cached),
        "positions": cfg.positions,
    }
    if cached:
        runner = TranscriptCacheRunner(cfg, progress=st.progress, overwrite=True)
        info["file"] = runner.run(d / ACTIVATIONS, transcripts=transcripts, lm=st.model()).name
    else:
        info["note"] = f"no transcript has all of the spans {', '.join(cfg.positions)}: nothing cached"
    n_req = {tier: len({t.request_id for t in cached if t.tier == tier}) for tier in TIERS}
    need = max(MIN_PROBE_REQUESTS, st.cfg.probes.folds)
    info["probed"] = bool(cfg.probe and cached and min(n_req.values()) >= need)
    if info["probed"]:
        run = ProbeRunConfig(probes=st.cfg.probes.model_copy(update={"positions": None}), seed=st.cfg.seed)
        ProbeRunner(run, overwrite=True, progress=st.progress).run(d / "probes", activations=d / ACTIVATIONS)
    elif cached and cfg.probe:
        info["note"] = f"probes need {need} requests on each tier with every span; got {n_req}"
    write_json(d / TRANSCRIPT_STAGE_FILE, info)
    return {k: info[k] for k in ("n_cached", "probed")}


def _causal_sections(st: RunState) -> dict[str, Any]:
    """What steering and patching share: their prompts and the logit metric they re-measure on them (the gap
    they are stated against; generated responses are the compliance stage's job)."""
    cfg = st.cfg
    return {
        "model": cfg.model,
        "scenario": cfg.resolved_causal_scenario,
        "compliance": cfg.compliance.model_copy(update={"generate": False}),
        "seed": cfg.seed,
    }


def _steering(st: RunState, d: Path) -> dict[str, Any]:
    run = SteerRunConfig(steering=st.cfg.steering, **_causal_sections(st))
    runner = SteeringRunner(run, overwrite=True, progress=st.progress)
    result = runner.run(d, subject=st.subject("causal"), probes=st.stage_dir("probes"))
    return {"best_layer": result.get("best_layer")}


def _patching(st: RunState, d: Path) -> dict[str, Any]:
    run = PatchRunConfig(patching=st.cfg.patching, **_causal_sections(st))
    runner = PatchingRunner(run, overwrite=True, progress=st.progress)
    result = runner.run(d, subject=st.subject("causal"), probes=st.stage_dir("probes"))
    return {"peak_layer": result.get("peak_layer")}


def _report(st: RunState, d: Path) -> dict[str, Any]:
    write_report(
        st.out_dir,
        stage_results(st.out_dir, [s for s in st.finished if s != "report"]),
        st.cfg.report,
        timings=st.timings,
        reused=st.reused,
        figures_dir=d,
        description=st.cfg.description,
        config_yaml=dump_config(st.cfg),
    )
    return {}


STAGES: tuple[Stage, ...] = (
    Stage("scenarios", (), ("model", "scenario", "cache.positions"), _scenarios, results=SETUP_FILE),
    Stage(
        "cache",
        ("scenarios",),
        ("model", "scenario", "cache", "seed"),
        _cache,
        finished=(f"cache/{ACTIVATIONS}",),
        keep=_cache_keep,
    ),
    Stage("probes", ("cache",), ("probes", "seed"), _probes, results=RESULTS_FILE),
    Stage(
        "compliance", ("scenarios",), ("model", "compliance", "seed"), _compliance, results=COMPLIANCE_FILE
    ),
    Stage(
        "scratchpad",
        ("scenarios",),
        ("model", "scenario", "scratchpad", "seed"),
        _scratchpad,
        results=SCRATCHPAD_FILE,
        finished=(f"scratchpad/{TRANSCRIPTS_FILE}",),
    ),
    Stage(
        "transcripts",
        ("scratchpad",),
        ("transcripts", "probes", "seed"),
        _transcripts,
        results=TRANSCRIPT_STAGE_FILE,
    ),
    Stage(
        "steering",
        ("probes",),
        ("model", "causal_scenario", "compliance", "steering", "seed"),
        _steering,
        results=STEERING_FILE,
    ),
    Stage(
        "patching",
        ("probes",),
        ("model", "causal_scenario", "compliance", "patching", "seed"),
        _patching,
        results=PATCHING_FILE,
    ),
    Stage(
        "report",
        ("scenarios",),
        ("report", "description"),
        _report,
        finished=(SUMMARY_FILE, REPORT_FILE),
        reads_all=True,
    ),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
assert tuple(BY_NAME) == STAGE_NAMES


def stage_results(run_dir: str | Path, stages: list[str]) -> dict[str, Path]:
    """Stage name -> results file of each of ``stages`` that has one on disk (what the report reads)."""
    out = {}
    for name in stages:
        s = BY_NAME[name]
        path = Path(run_dir) / name / s.results if s.results else None
        if path is not None and path.is_file():
            out[name] = path
    return out
