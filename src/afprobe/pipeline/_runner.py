"""``afprobe run``: every planned stage in order, one model load, reusing the stages whose stamps match.

Each stage writes ``DIR/<stage>/`` and, last, its stamp (see ``_stamps``). On a re-run a stage whose stamp
matches (and whose upstream stages are reused too) is reused; any other stage is redone, its directory cleared
first except what the stage keeps (the cache's ``.partial`` file started with the same inputs, which it resumes).
``summary.json`` and ``report.html`` are written under temporary names and renamed last, and removed at the start
of any run that will redo the report, so a run that fails never leaves a report that looks finished.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
from afprobe._io import atomic_write_text, check_writable, remove, remove_leftovers, write_error
from afprobe._lock import output_lock
from afprobe.models import LoadedModel
from afprobe.pipeline._config import RunConfig, check_run_config, dump_config, load_run_config
from afprobe.pipeline._stages import BY_NAME, STAGES, Stage, stage_results
from afprobe.pipeline._stamps import (
    PIPELINE_FORMAT,
    STAMP,
    config_inputs,
    read_stamp,
    stage_hash,
    write_stamp,
)
from afprobe.pipeline._state import RunState
from afprobe.report import REPORT_FILE, SUMMARY_FILE, write_report

RESOLVED_CONFIG = "config.yaml"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


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


@dataclass
class Pipeline:
    """Run ``cfg``'s stages into ``out_dir``. Pass ``lm`` to reuse a model that is already loaded (tests,
    notebooks); otherwise it is loaded once, on the first stage that needs it."""

    cfg: RunConfig
    out_dir: Path
    lm: LoadedModel | None = None
    progress: bool = True
    log: Callable[[str], None] | None = None
    state: RunState = field(init=False, repr=False)
    _bar: Progress | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        check_run_config(self.cfg)
        self.state = RunState(self.cfg, self.out_dir, self.lm, self.progress, say=self._say)

    # ---- planning
    def plan(self) -> list[Stage]:
        """The requested stages and everything they read from, in pipeline order."""
        wanted: set[str] = set()
        todo = list(self.cfg.stages)
        while todo:
            s = todo.pop()
            if s not in wanted:
                wanted.add(s)
                todo.extend(BY_NAME[s].needs)
        return [s for s in STAGES if s.name in wanted]

    def upstream(self, stage: Stage, plan: Sequence[Stage]) -> tuple[str, ...]:
        if stage.reads_all:
            return tuple(s.name for s in plan if s is not stage)
        return stage.needs

    def hashes(self) -> dict[str, str]:
        plan = self.plan()
        out: dict[str, str] = {}
        for s in plan:
            inputs = config_inputs(self.cfg, s.inputs)
            out[s.name] = stage_hash(s.name, inputs, {u: out[u] for u in self.upstream(s, plan)})
        return out

    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage

    def is_fresh(self, stage: Stage, h: str) -> bool:
        stamp = read_stamp(self.stage_dir(stage.name))
        done = all((self.out_dir / f).is_file() for f in stage.done_files())
        return stamp is not None and stamp.get("hash") == h and done

    def freshness(self, plan: Sequence[Stage], hashes: Mapping[str, str]) -> dict[str, bool]:
        """Which stages can be reused: their stamp matches and none of the stages they read from will be redone
        (a redone stage may differ even with the same inputs, e.g. by GPU nondeterminism)."""
        fresh: dict[str, bool] = {}
        for s in plan:
            ups = self.upstream(s, plan)
            fresh[s.name] = self.is_fresh(s, hashes[s.name]) and all(fresh[u] for u in ups)
        return fresh

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
        check_writable(out)
        if out.is_dir() and any(out.iterdir()) and not (out / RESOLVED_CONFIG).is_file():
            raise AfprobeError(
                f"{out} exists and holds files that are not an afprobe run; give a new directory"
            )

    def run(self) -> PipelineResult:
        """Run every planned stage (reusing the up-to-date ones) and return what happened. One run at a time
        per directory: a second one is refused while the first holds the directory's lock."""
        self.check_output_dir()
        self.state.prompts("scenario")  # a missing request file or an empty set fails here, before any write
        with output_lock(self.out_dir, "run directory"):
            self.check_output_dir()
            for d in (self.out_dir, *(self.stage_dir(s.name) for s in STAGES)):
                remove_leftovers(d)  # temporary files of writes a killed run left half-done
            return self._run()

    def _run(self) -> PipelineResult:
        plan, hashes = self.plan(), self.hashes()
        fresh = self.freshness(plan, hashes)
        if not fresh.get("report", True):
            for name in BY_NAME["report"].finished:
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
                    bar.update(task, description=stage.name)
                    if fresh[stage.name]:
                        seconds = float((read_stamp(self.stage_dir(stage.name)) or {}).get("seconds", 0.0))
                        records.append(StageRecord(stage.name, hashes[stage.name], "reused", seconds))
                        self.state.reused.append(stage.name)
                        self._say(f"{stage.name}: up to date, reused")
                    else:
                        records.append(self._run_stage(stage, hashes, plan))
                        self._say(f"{stage.name}: done in {records[-1].seconds:.1f}s")
                    self.state.finished.append(stage.name)
                    self.state.timings[stage.name] = round(records[-1].seconds, 3)
                    bar.advance(task)
            finally:
                self._bar = None
        summary = None
        if (self.out_dir / SUMMARY_FILE).is_file():
            summary = json.loads((self.out_dir / SUMMARY_FILE).read_text())
        return PipelineResult(self.out_dir, records, summary)

    def _run_stage(self, stage: Stage, hashes: dict[str, str], plan: list[Stage]) -> StageRecord:
        d = self.stage_dir(stage.name)
        self._prepare(stage, d)
        t0 = time.perf_counter()
        try:
            extra = stage.run(self.state, d)
        except OSError as e:  # a write the stage made itself hit a full or read-only disk: name the stage
            if e.errno not in WRITE_ERRNOS:
                raise
            where = e.filename or d
            raise AfprobeError(f"{stage.name} stage: cannot write {where}: {write_error(e)}") from e
        seconds = time.perf_counter() - t0
        write_stamp(
            d,
            {
                "format": PIPELINE_FORMAT,
                "stage": stage.name,
                "hash": hashes[stage.name],
                "upstream": {u: hashes[u] for u in self.upstream(stage, plan)},
                "inputs": config_inputs(self.cfg, stage.inputs),
                "seconds": round(seconds, 3),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "afprobe_version": afprobe.__version__,
                **(extra or {}),
            },
        )
        return StageRecord(stage.name, hashes[stage.name], "ran", seconds)

    def _prepare(self, stage: Stage, d: Path) -> None:
        """Clear a stage's stale outputs (its stamp first), keeping what the stage says it resumes from."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / RESOLVED_CONFIG, dump_config(self.cfg))
        if d.is_dir():
            (d / STAMP).unlink(missing_ok=True)
            keep = stage.keep(self.state, d) if stage.keep else set()
            for p in d.iterdir():
                if p not in keep:
                    remove(p)
        elif d.exists():
            remove(d)
        d.mkdir(parents=True, exist_ok=True)


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


def finished_stages(run_dir: str | Path) -> tuple[RunConfig, list[str]]:
    """The config of a run directory and its stages (report aside) whose stamps match that config."""
    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED_CONFIG).is_file():
        raise AfprobeError(
            f"{run_dir} is not an afprobe run directory (no {RESOLVED_CONFIG}; see `afprobe run`)"
        )
    cfg = load_run_config(run_dir / RESOLVED_CONFIG)
    p = Pipeline(cfg, run_dir, progress=False)
    hashes = p.hashes()
    return cfg, [s.name for s in p.plan() if s.name != "report" and p.is_fresh(s, hashes[s.name])]


def run_results(run_dir: str | Path) -> dict[str, Path]:
    """Stage name -> results file of every finished stage of a run directory (what the report functions take,
    e.g. ``afprobe.report.collect_figures(run_results(DIR))``)."""
    return stage_results(run_dir, finished_stages(run_dir)[1])


def render_run_report(run_dir: str | Path) -> dict[str, Any]:
    """Redraw ``summary.json``, ``results/`` and ``report.html`` of a run directory from the stages whose stamps
    match its ``config.yaml`` (no model is loaded); return the summary."""
    run_dir = Path(run_dir)
    cfg, done = finished_stages(run_dir)
    check_writable(run_dir)
    if "scenarios" not in done:
        raise AfprobeError(f"{run_dir} holds no finished stage of its config.yaml: run `afprobe run` first")
    timings = {s: float((read_stamp(run_dir / s) or {}).get("seconds", 0.0)) for s in done}
    with output_lock(run_dir, "run directory"):
        return _write_run_report(run_dir, cfg, done, timings)


def _write_run_report(
    run_dir: Path, cfg: RunConfig, done: list[str], timings: dict[str, float]
) -> dict[str, Any]:
    return write_report(
        run_dir,
        stage_results(run_dir, done),
        cfg.report,
        timings=timings,
        reused=done,
        figures_dir=run_dir / "report",
        description=cfg.description,
        config_yaml=dump_config(cfg),
    )
