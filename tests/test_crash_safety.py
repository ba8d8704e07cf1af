"""kill -9 at random moments, then resume: the result equals a clean run's, and nothing killed looks finished.

The commands run in separate processes that are killed with SIGKILL. To keep the suite quick, most are forked
from a server that has imported afprobe once (``multiprocessing``'s forkserver: its children never inherit a
started thread pool); one cache kill is a plain ``python -m afprobe.cli`` subprocess.

- ``afprobe cache``: chains of kill, resume, kill, ... (at least 10 kills), each kill a seeded random moment after
  the ``.partial`` file appears, scaled to how long the clean run took to cache; every chain ends with arrays
  identical to the clean run's.
- ``afprobe run``: one kill inside each stage, in order (the next run resumes and is killed in the next stage): a
  timer fires at a seeded moment of the stage, or, if the stage ends first, the process dies right after the
  stage wrote its outputs and before its stamp; two more die in the middle of a file write. A killed stage is
  never stamped, nothing unfinished looks finished, and the final ``summary.json`` and arrays equal a clean run's
  (timings and the list of reused stages aside).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from afprobe._lock import lock_path
from afprobe.activations import partial_path
from afprobe.pipeline._stamps import read_stamp

SEED = 14
ARRAYS = ("resid", "input_ids", "lengths", "position_index")
STAGES = ("scenarios", "cache", "probes", "compliance", "steering", "patching", "report")


# ------------------------------------------------------------------------------------- child processes
def _quiet_child() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["HF_HUB_OFFLINE"] = "1"


def _cli_child(argv: list[str]) -> None:
    from afprobe.cli import main

    _quiet_child()
    os._exit(main(argv))


def _pipeline_child(argv: list[str], stage: str, mode: str, delay: float, note: Path) -> None:
    """``afprobe run`` that SIGKILLs itself inside ``stage``: ``timer``, ``delay`` seconds into the stage (or right
    after the stage wrote its outputs, before its stamp, if the stage ends first); ``midwrite``, halfway through
    the stage's first atomic file write."""
    import afprobe._io as io_mod
    from afprobe.cli import main
    from afprobe.pipeline import _runner

    _quiet_child()

    def die(how: str = mode) -> None:
        note.write_text(how)  # how it died, for the test's count (outside the run directory)
        os.kill(os.getpid(), signal.SIGKILL)

    original_plan = _runner.Pipeline.plan

    def plan(self: Any) -> list[Any]:
        stages = []
        for s in original_plan(self):
            if s.name == stage:
                s = dataclasses.replace(s, run=_killing(s.run))
            stages.append(s)
        return stages

    def _killing(run: Any) -> Any:
        def wrapped(st: Any, d: Path) -> Any:
            if mode == "timer":
                threading.Timer(delay, die).start()
            else:
                _die_midwrite(io_mod, die)
            run(st, d)
            die("after outputs")  # the stage ended first: outputs written, stamp not yet

        return wrapped

    _runner.Pipeline.plan = plan  # type: ignore[method-assign]
    os._exit(main(argv))


def _die_midwrite(io_mod: Any, die: Any) -> None:
    """The next ``atomic_write_bytes`` writes half its bytes into its temporary file, then the process dies."""

    def half_then_die(path: Path, data: bytes) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.killed.partial")
        tmp.write_bytes(data[: len(data) // 2])
        die()
        return path

    io_mod.atomic_write_bytes = half_then_die


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    if sys.platform == "win32":
        pytest.skip("POSIX only (kill -9)")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["afprobe.cli"])
    return ctx


def _start(ctx: Any, target: Any, *args: Any) -> Any:
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def _wait_for(path: Path, proc: Any, timeout: float = 300) -> bool:
    """Poll until ``path`` exists; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _kill(proc: Any) -> bool:
    """SIGKILL ``proc``; True when it was still running (a real kill, not a finished run)."""
    if proc.pid is None:
        return False
    alive = proc.is_alive()
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        alive = False
    proc.join()
    return alive and proc.exitcode == -signal.SIGKILL


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: np.asarray(f[k]) for k in ARRAYS}
        out.update({f"meta/{k}": np.asarray(f["meta"][k]) for k in f["meta"]})
    return out


def _same_arrays(a: Path, b: Path) -> bool:
    x, y = _arrays(a), _arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


# --------------------------------------------------------------------------------------------- the cache
def _cache_args(model: Path, out: Path) -> list[str]:
    return [
        "cache",
        "--model",
        str(model),
        "--limit",
        "8",
        "-q",
        "--set",
        "cache.batch_size=2",
        "--set",
        "scenario.system_prompts=[helpful_only]",
        "--set",
        "model.backend=hooks",
        "--out",
        str(out),
    ]


def _n_done(partial: Path) -> int | None:
    try:
        with h5py.File(partial, "r") as f:
            return int(f.attrs["n_done"])
    except (OSError, KeyError):
        return None


def test_cache_killed_at_random_moments_resumes_to_identical_arrays(
    forkserver, tiny_model_path: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    ref = tmp_path / "ref.h5"
    p = _start(forkserver, _cli_child, _cache_args(tiny_model_path, ref))
    assert _wait_for(lock_path(ref), p)
    t0 = time.monotonic()
    p.join()
    span = time.monotonic() - t0  # how long the clean run held the file: model loaded, caching
    assert p.exitcode == 0 and ref.is_file()

    kills, resumed, chains, identical = 0, 0, 0, 0
    while kills < 10:
        chains += 1
        assert chains <= 6, f"only {kills} kills landed in {chains - 1} chains"
        out = tmp_path / f"chain{chains}.h5"
        while True:
            args = _cache_args(tiny_model_path, out)
            if kills == 0:  # one kill of the real command line, for the console entry point
                proc: Any = _Popen([sys.executable, "-m", "afprobe.cli", *args])
            else:
                proc = _start(forkserver, _cli_child, args)
            before = _n_done(partial_path(out)) if partial_path(out).exists() else 0
            # the lock file appears when the writer starts (the model is loaded, the prompts are tokenized)
            if not _wait_for(lock_path(out), proc) or kills >= 10:
                proc.join()
                break
            time.sleep(rng.uniform(0.0, 0.2 * span))
            if not _kill(proc):
                break  # it finished first: this chain is done
            kills += 1
            resumed += int(bool(before))
            assert not out.exists(), "a killed cache left a finished-looking file"
            lock_path(out).unlink(missing_ok=True)  # its holder is dead; the next writer makes a new one
        assert proc.exitcode == 0 and out.is_file()
        identical += int(_same_arrays(ref, out))
        assert _same_arrays(ref, out), f"chain {chains}: resumed arrays differ from the clean run's"
    print(
        f"cache: {kills} kills ({resumed} of them in a resumed run) in {chains} chains, {identical} identical"
    )


class _Popen:
    """A ``subprocess.Popen`` with the few methods of ``multiprocessing.Process`` used above."""

    def __init__(self, cmd: list[str]):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.p.pid

    def is_alive(self) -> bool:
        return self.p.poll() is None

    def join(self) -> None:
        self.p.wait()

    @property
    def exitcode(self) -> int | None:
        return self.p.returncode


# ------------------------------------------------------------------------------------------ the pipeline
def _normalized(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("timings", "reused_stages")}


def test_run_killed_in_every_stage_resumes_to_the_clean_summary(
    forkserver, tiny_run: Path, tiny_model_path: Path, tiny_run_sets: list[str], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    out = tmp_path / "run"
    sets = [x for s in tiny_run_sets for x in ("--set", s)]
    argv = ["run", "default", "--out", str(out), "--model", str(tiny_model_path), "-q", *sets]
    seconds = {s: float((read_stamp(tiny_run / s) or {})["seconds"]) for s in STAGES}
    kills = [(s, "timer", rng.uniform(0.0, seconds[s])) for s in STAGES]
    kills.insert(3, ("probes", "midwrite", 0.0))
    kills.append(("report", "midwrite", 0.0))
    how = []
    for i, (stage, mode, delay) in enumerate(kills):
        note = tmp_path / f"kill{i}.txt"
        p = _start(forkserver, _pipeline_child, argv, stage, mode, delay, note)
        p.join()
        died = note.read_text() if note.exists() else "?"
        how.append(f"{stage}: {died}")
        assert p.exitcode == -signal.SIGKILL, f"kill {i} in {stage} did not happen (exit {p.exitcode})"
        assert read_stamp(out / stage) is None, f"{stage} was stamped although killed"
        earlier = STAGES[: STAGES.index(stage)]
        assert all(read_stamp(out / s) is not None for s in earlier), f"stages before {stage} lost"
        if stage == "cache":
            assert not (out / "cache" / "activations.h5").exists() or read_stamp(out / "cache") is None
        if not (stage == "report" and died == "after outputs"):
            # (the report stage ended before its timer and died before its stamp: its report is whole, from
            # every stage, and the next run redoes it; any earlier death leaves none)
            assert not (out / "report.html").exists()
        for f in out.rglob("*"):  # a half-written file only ever lies under a hidden temporary name
            assert f.name.startswith(".") or ".partial" in f.name or _whole(f), f
    p = _start(forkserver, _cli_child, argv)
    p.join()
    assert p.exitcode == 0
    assert all(read_stamp(out / s) is not None for s in STAGES)
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((tiny_run / "summary.json").read_text())
    assert _normalized(got) == _normalized(want)
    assert _same_arrays(tiny_run / "cache" / "activations.h5", out / "cache" / "activations.h5")
    assert not [f for f in out.rglob(".*") if f.name != ".afprobe-stage.json"], "leftovers of killed writes"
    print(f"run: {len(kills)} kills ({'; '.join(how)}), resume identical")


def _whole(f: Path) -> bool:
    """A JSON file that parses (the only kind a kill mid-write could have cut)."""
    if f.suffix != ".json" or not f.is_file():
        return True
    try:
        json.loads(f.read_text())
    except ValueError:
        return False
    return True
