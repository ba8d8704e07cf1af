"""A full disk: caching or a stage writing into a nearly full file system fails with one line, before or while
writing, leaves no finished-looking file, and a later run with space resumes to the result of a clean run.

The real cases mount a small tmpfs (root can; CI runs as root) and grow it afterwards; where nothing can be
mounted they are skipped and the injected cases (``ENOSPC`` raised at the write layer) still run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

import afprobe._io as io_mod
from afprobe import AfprobeError
from afprobe._io import atomic_write_text
from afprobe.activations import ActivationWriter, partial_path
from afprobe.cli import main

ARRAYS = ("resid", "input_ids", "lengths", "position_index")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``resize("256k")`` mounts (then resizes) a tmpfs of that size at a fresh directory and returns it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = False

    def resize(size: str) -> Path:
        nonlocal mounted
        opts = f"remount,size={size}" if mounted else f"size={size}"
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(
                f"cannot mount a small tmpfs here ({res.stderr.decode().strip()}); the injected cases run"
            )
        mounted = True
        return mnt

    if shutil.which("mount") is None:
        pytest.skip("no mount command; the injected cases run")
    yield resize
    if mounted:
        subprocess.run(["umount", str(mnt)], check=False)


def _cache_args(model: Path, out: Path, limit: int = 8) -> list[str]:
    sets = ["--set", "cache.batch_size=4", "--set", "model.backend=hooks"]
    return ["cache", "--model", str(model), "--limit", str(limit), "--out", str(out), "-q", *sets]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("afprobe: error: ") and "Traceback" not in err, err
    return lines[0]


def _same_arrays(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for k in ARRAYS:
            assert np.array_equal(fa[k][()], fb[k][()]), k


def _fill(folder: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    ref = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert main(_cache_args(tiny_model_path, ref)) == 0
    return ref


# ------------------------------------------------------------------------------------- a real small disk
def test_cache_into_a_disk_too_small_is_refused_before_writing(
    small_fs, capsys, tiny_model_path: Path, reference: Path
) -> None:
    mnt = small_fs("64k")
    out = mnt / "a.h5"
    assert main(_cache_args(tiny_model_path, out)) == 2
    assert "not enough space" in _one_line(capsys)
    assert list(mnt.iterdir()) == []
    small_fs("16m")
    assert main(_cache_args(tiny_model_path, out)) == 0
    _same_arrays(reference, out)


def test_cache_that_fills_the_disk_while_writing_resumes(
    small_fs, capsys, monkeypatch, tiny_model_path: Path, reference: Path
) -> None:
    mnt = small_fs("4m")
    out = mnt / "a.h5"
    original = ActivationWriter.write_batch
    calls: list[int] = []
    filled: list[Path] = []

    def write_batch(self, start, *args):  # the third batch finds the disk full (someone else filled it)
        calls.append(start)
        if len(calls) == 3 and not filled:
            filled.append(_fill(mnt))
        return original(self, start, *args)

    monkeypatch.setattr(ActivationWriter, "write_batch", write_batch)
    assert main(_cache_args(tiny_model_path, out)) == 2
    line = _one_line(capsys)
    assert "not enough space for the next batch" in line and "a.h5.partial" in line
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        kept = int(f.attrs["n_done"])
    assert kept == calls[2]  # the two whole batches before the full disk are kept
    filled[0].unlink()
    calls.clear()
    assert main(_cache_args(tiny_model_path, out)) == 0
    assert calls[0] == kept  # resumed, not restarted
    _same_arrays(reference, out)


# the disk fills after the free-space check, inside HDF5's own writes (in a child process: a process whose HDF5
# writes failed keeps that file open until it exits)
FILL_INSIDE_HDF5 = """
import errno, sys
from pathlib import Path
import afprobe.activations._store as store
from afprobe.cli import main
store.check_free_space = lambda *a: None
mnt = Path(sys.argv[1])
original, calls = store.ActivationWriter.write_batch, []
def write_batch(self, start, *args):
    calls.append(start)
    if len(calls) == 3:
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return original(self, start, *args)
store.ActivationWriter.write_batch = write_batch
sys.argv = ["afprobe", *sys.argv[2:]]
sys.exit(main())
"""


def test_cache_whose_hdf5_writes_hit_a_full_disk_resumes(
    small_fs, tiny_model_path: Path, reference: Path
) -> None:
    mnt = small_fs("4m")
    out = mnt / "a.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run(
        [sys.executable, "-c", FILL_INSIDE_HDF5, str(mnt), *_cache_args(tiny_model_path, out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("afprobe: error: cannot write ") and "No space left on device" in lines[0]
    assert not out.exists() and partial_path(out).exists()
    (mnt / "filler").unlink()
    original = ActivationWriter.write_batch
    calls: list[int] = []

    def write_batch(self, start, *args):
        calls.append(start)
        return original(self, start, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ActivationWriter, "write_batch", write_batch)
        assert main(_cache_args(tiny_model_path, out)) == 0
    assert calls[0] == 8  # the two whole batches before the full disk were kept
    _same_arrays(reference, out)


def test_a_stage_that_fills_the_disk_fails_in_one_line_and_a_run_with_space_resumes(
    small_fs, capsys, tiny_model_path: Path, tiny_run_sets: list[str], tiny_run: Path
) -> None:
    mnt = small_fs("320k")  # room for the prompts and the cache, not for the probes' plots
    out = mnt / "run"
    sets = [x for s in tiny_run_sets for x in ("--set", s)]
    argv = ["run", "default", "--out", str(out), "--model", str(tiny_model_path), "-q", *sets]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "No space left on device" in line, line
    assert (out / "cache" / ".afprobe-stage.json").is_file()  # the stages that fitted are finished
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    assert (
        not (out / "probes" / "probe_results.json").exists()
        and not (out / "probes" / ".afprobe-stage.json").exists()
    )
    small_fs("64m")
    assert main(argv) == 0
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((tiny_run / "summary.json").read_text())
    drop = ("timings", "reused_stages")
    assert {k: v for k, v in got.items() if k not in drop} == {k: v for k, v in want.items() if k not in drop}
    assert "cache" in got["reused_stages"] and "probes" not in got["reused_stages"]


# ----------------------------------------------------------------------- injected ENOSPC (runs everywhere)
def test_injected_free_space_check_refuses_before_any_write(
    capsys, monkeypatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    monkeypatch.setattr(
        io_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 100, 100)
    )
    assert main(_cache_args(tiny_model_path, tmp_path / "a.h5")) == 2
    assert "not enough space" in _one_line(capsys)
    assert not list(tmp_path.glob("a.h5*"))


def test_injected_enospc_in_the_hdf5_writer_keeps_whole_batches_and_resumes(
    capsys, monkeypatch, tmp_path: Path, tiny_model_path: Path, reference: Path
) -> None:
    out = tmp_path / "a.h5"
    original = ActivationWriter.write_batch
    calls: list[int] = []

    def write_batch(self, start, *args):
        calls.append(start)
        if len(calls) == 2 and start == 4:
            self.f["resid"][start] = args[0][0]  # half a batch reaches the file, then the disk is full
            raise_in = self.f.flush

            def full() -> None:
                raise RuntimeError(
                    "Unable to synchronously flush file (file write failed: errno = 28, "
                    "error message = 'No space left on device')"
                )

            monkeypatch.setattr(self.f, "flush", full)
            try:
                return original(self, start, *args)
            finally:
                monkeypatch.setattr(self.f, "flush", raise_in)
        return original(self, start, *args)

    monkeypatch.setattr(ActivationWriter, "write_batch", write_batch)
    assert main(_cache_args(tiny_model_path, out)) == 2
    assert "No space left on device" in _one_line(capsys)
    assert not out.exists()
    calls.clear()
    assert main(_cache_args(tiny_model_path, out)) == 0
    assert calls[0] == 4  # the first batch was kept
    _same_arrays(reference, out)


def test_injected_enospc_in_an_atomic_write_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    class Full:
        def __init__(self, fd: int, mode: str):
            self.f = open(fd, mode)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_mod.os, "fdopen", Full)
    with pytest.raises(AfprobeError, match=r"cannot write .*summary.json: No space left on device"):
        atomic_write_text(tmp_path / "summary.json", "{}" * 1000)
    assert list(tmp_path.iterdir()) == []
