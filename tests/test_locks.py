"""Two runs at once on one output: the second is refused with one line naming the holder's pid; a lock whose
holder died (kill -9) is stale and taken over; never two writers on one HDF5 file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import afprobe._lock as lock_mod
from afprobe import AfprobeError
from afprobe._lock import lock_path, output_lock
from afprobe.activations import ActivationWriter, partial_path
from afprobe.cli import main

HOLDER = (
    "import sys, time\n"
    "from afprobe._lock import output_lock\n"
    "with output_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


@contextmanager
def held_by_another_process(target: Path) -> Iterator[subprocess.Popen]:
    """A separate process holding ``target``'s lock until the block ends (then it is killed with SIGKILL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("afprobe: error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------------------ the lock itself
def test_a_held_lock_refuses_a_second_process_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with held_by_another_process(target) as p:
        info = json.loads(lock_path(target).read_text())
        assert info["pid"] == p.pid and info["host"] == socket.gethostname()
        with pytest.raises(AfprobeError, match=f"in use by afprobe process {p.pid}"), output_lock(target):
            pass
    # SIGKILL left the file behind, but the kernel dropped the flock: the lock is stale and taken over
    assert lock_path(target).exists()
    with output_lock(target) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock_path(target).exists()  # released: removed


def test_reentrant_in_one_process(tmp_path: Path) -> None:
    with output_lock(tmp_path / "x"), output_lock(tmp_path / "x"):
        assert lock_path(tmp_path / "x").exists()
    assert not lock_path(tmp_path / "x").exists()


def test_without_flock_a_lock_whose_pid_is_gone_is_stale(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lock_mod, "_flock", lambda fd: False)  # as on a file system without flock
    target = tmp_path / "out"
    here = socket.gethostname()
    lock_path(target).write_text(json.dumps({"pid": _dead_pid(), "host": here}))
    with output_lock(target):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    for live in ({"pid": os.getppid(), "host": here}, {"pid": 1, "host": "another-machine"}):
        lock_path(target).write_text(json.dumps(live))
        with pytest.raises(AfprobeError, match="in use by afprobe process"), output_lock(target):
            pass
    lock_path(target).unlink()


# -------------------------------------------------------------------------------------- on the command line
def test_two_caches_of_one_file_never_both_write(capsys, tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "a.h5"
    args = ["cache", "--model", str(tiny_model_path), "--limit", "1", "--out", str(out), "-q"]
    with held_by_another_process(out) as p:
        assert main(args) == 2
        line = _one_error_line(capsys)
        assert f"in use by afprobe process {p.pid}" in line and str(out) in line
        assert not partial_path(out).exists() and not out.exists()
        with pytest.raises(AfprobeError, match="in use"):  # the HDF5 writer takes the same lock
            ActivationWriter(
                out,
                run_key="k",
                n_prompts=1,
                layers=[0],
                position_names=["last"],
                d_model=2,
                max_len=2,
                dtype="float32",
                batch_size=1,
                meta={},
                attrs={},
            )
        assert not partial_path(out).exists()
    assert main(args) == 0 and out.is_file()  # the holder was killed: its stale lock is taken over
    assert not lock_path(out).exists()


@pytest.mark.parametrize("command", ["run", "probe", "steer", "report"])
def test_a_second_command_on_a_busy_output_is_refused(
    command: str, capsys, tmp_path: Path, tiny_model_path: Path, tiny_run: Path
) -> None:
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_path), "--limit", "1", "-q"]
    argv = {
        "run": ["run", "default", "--out", str(out), *model],
        "probe": ["probe", str(tiny_run / "cache" / "activations.h5"), "--out", str(out), "-q"],
        "steer": ["steer", "--out", str(out), *model],
        "report": ["report", str(out)],
    }[command]
    if command == "report":
        shutil.copytree(tiny_run, out)
        (out / "report.html").unlink()
    with held_by_another_process(out) as p:
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert f"in use by afprobe process {p.pid}" in line
        assert not any((out / f).exists() for f in ("report.html", "probe_results.json", "steering.json"))
