"""Reading one (layer, position) slice for all prompts from a multi-GB activation file: afprobe's by-layer chunk
layout vs the layout it replaced (one chunk per 16-prompt batch per (layer, position)), each as a fraction of a raw
sequential read of the same number of bytes, page cache defeated before every read.

Both files are written by :class:`afprobe.activations.ActivationWriter` (the cache's own writer, 16-prompt
batches) with a 70B-like width: 8,192 prompts x 6 layers x 4 positions x d_model 8,192 in float16 (3.2 GB each; the
slice is 128 MiB). Before each timed read the file's pages are evicted (``fsync``, then
``posix_fadvise(DONTNEED)``; ``mincore`` checks that none of the slice stays resident), then the slice is read
with h5py (``resid[:, layer, position, :]``, native dtype) and, evicted again, as raw ``pread`` calls of 8 MiB over
the byte range of its chunk (by-layer file) or over the same number of contiguous bytes (old layout), each into a
new array. The fraction is raw time / h5py time per slice (the two reads back
to back); median of five slices. The files are deleted at the end. (A virtual disk may still be cached by its host: the fraction
compares like with like either way.)

    .venv/bin/python benchmarks/bench_hdf5.py [--quick] [--dir /some/disk]
    .venv/bin/python -m benchmarks --only hdf5
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import h5py
import numpy as np

from afprobe.activations import ActivationWriter, _store

TARGET = 0.8
READ_BLOCK = 8 << 20
_libc = ctypes.CDLL(None, use_errno=True)


def write_file(path: Path, n: int, n_layers: int, n_pos: int, d: int, old_layout: bool) -> float:
    """Write a synthetic activation file with the cache's writer; seconds taken (flushed to disk)."""
    meta = {
        "pair_id": list(range(n)),
        "harmful": [True] * n,
        **{
            c: ["x"] * n
            for c in ("request_id", "tier", "cue_format", "system_prompt", "category", "request_text")
        },
    }
    block = (
        np.random.default_rng(0)
        .standard_normal((16, n_layers, n_pos, d), dtype=np.float32)
        .astype(np.float16)
    )
    chunks = (lambda n_, d_, dt: (16, 1, 1, d_)) if old_layout else _store.resid_chunks
    t0 = time.perf_counter()
    with mock.patch.object(_store, "resid_chunks", chunks):
        w = ActivationWriter(
            path,
            run_key="bench",
            n_prompts=n,
            layers=list(range(n_layers)),
            position_names=[f"p{i}" for i in range(n_pos)],
            d_model=d,
            max_len=8,
            dtype="float16",
            batch_size=16,
            meta=meta,
            attrs={"pad_token_id": 0},
        )
        ids, lengths, pos = np.zeros((16, 8), np.int64), np.full(16, 8), np.zeros((16, n_pos), np.int64)
        for start in range(0, n, 16):
            k = min(16, n - start)
            w.write_batch(start, block[:k] + np.float16(start % 7), ids[:k], lengths[:k], pos[:k])
        out = w.finalize()
    with open(out, "rb+") as f:
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: Path, offset: int, length: int) -> float:
    """Fraction of the pages of ``[offset, offset + length)`` in the page cache (``mincore``)."""
    page = mmap.PAGESIZE
    start = offset // page * page
    length = offset + length - start
    with open(path, "rb") as f, mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start) as mm:
        arr = np.frombuffer(mm, dtype=np.uint8)  # a view: its address is the mapping's
        vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
        rc = _libc.mincore(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(length), vec)
        del arr
    if rc != 0:
        return float("nan")
    return float(np.frombuffer(vec, dtype=np.uint8).astype(bool).mean())


def slice_ranges(path: Path, layer: int, pos: int) -> list[tuple[int, int]]:
    """``(offset, size)`` in the file of every chunk holding ``resid[:, layer, pos, :]``, in offset order."""
    with h5py.File(path, "r") as f:
        ds = f["resid"]
        rows = ds.chunks[0]
        out = [ds.id.get_chunk_info_by_coord((r, layer, pos, 0)) for r in range(0, ds.shape[0], rows)]
    return sorted((int(c.byte_offset), int(c.size)) for c in out)


def read_h5(path: Path, layer: int, pos: int) -> float:
    """What :meth:`ActivationReader.get` does (before its float32 conversion): a new array of the slice."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        f["resid"][:, layer, pos, :]
    return time.perf_counter() - t0


def read_raw(path: Path, ranges: list[tuple[int, int]]) -> float:
    """``pread`` calls of at most 8 MiB over ``ranges`` into a new array of their size (as h5py makes one)."""
    fd = os.open(path, os.O_RDONLY)
    t0 = time.perf_counter()
    out = np.empty(sum(size for _, size in ranges), dtype=np.uint8)
    view = memoryview(out)
    try:
        at = 0
        for offset, size in ranges:
            done = 0
            while done < size:
                k = os.preadv(fd, [view[at : at + min(READ_BLOCK, size - done)]], offset + done)
                if k <= 0:
                    break
                done += k
                at += k
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def measure(path: Path, slices: list[tuple[int, int]]) -> dict[str, Any]:
    """Per slice: evict, read it with h5py; evict, read the same number of contiguous bytes raw, each into a new
    array. The fraction is taken per slice (the two reads run back to back, under the same load), then the median
    over slices."""
    h5, raw, fractions, resident = [], [], [], []
    nbytes = 0
    for layer, pos in slices:
        ranges = slice_ranges(path, layer, pos)
        nbytes = sum(size for _, size in ranges)
        contiguous = [(ranges[0][0], nbytes)]  # the same number of bytes, one sequential range
        evict(path)
        resident.append(max(resident_fraction(path, o, s) for o, s in ranges))
        h5.append(read_h5(path, layer, pos))
        evict(path)
        resident.append(resident_fraction(path, *contiguous[0]))
        raw.append(read_raw(path, contiguous))
        fractions.append(raw[-1] / h5[-1])
    t_h5, t_raw = statistics.median(h5), statistics.median(raw)
    return {
        "slice_mib": nbytes / 2**20,
        "h5py_s": t_h5,
        "raw_s": t_raw,
        "h5py_mib_s": nbytes / 2**20 / t_h5,
        "raw_mib_s": nbytes / 2**20 / t_raw,
        "fraction": statistics.median(fractions),
        "max_resident_before_read": max(resident),
    }


def main(*, quick: bool = False, directory: str | None = None) -> dict[str, Any]:
    n, n_layers, n_pos, d = (1024, 4, 4, 4096) if quick else (8192, 6, 4, 8192)
    root = Path(tempfile.mkdtemp(prefix="afprobe-hdf5-", dir=directory))
    slices = [(1, 2), (n_layers - 1, 0), (0, n_pos - 1), (2, 1), (n_layers - 2, n_pos - 2)]
    try:
        res: dict[str, Any] = {"prompts": n, "layers": n_layers, "positions": n_pos, "d_model": d}
        for name, old in (("by_layer", False), ("by_prompt_batches", True)):
            path = root / f"{name}.h5"
            t_write = write_file(path, n, n_layers, n_pos, d, old)
            size = path.stat().st_size
            m = measure(path, slices)
            res[name] = {
                "file_gb": size / 1e9,
                "write_s": t_write,
                "write_mib_s": size / 2**20 / t_write,
                **m,
            }
            path.unlink()
        new, old = res["by_layer"], res["by_prompt_batches"]
        res["read_fraction"] = new["fraction"]
        res["read_fraction_old_layout"] = old["fraction"]
        res["speedup_vs_old_layout"] = old["h5py_s"] / new["h5py_s"]
        res["target"] = f"by-layer slice read >= {TARGET} of a raw sequential read of the same bytes"
        res["verdict"] = (
            "met"
            if new["fraction"] >= TARGET and not quick
            else "not met"
            if new["fraction"] < TARGET
            else "quick run"
        )
        res["note"] = "page cache evicted by posix_fadvise before each read"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"one (layer, position) of {n} prompts x d_model {d} float16 ({new['slice_mib']:.0f} MiB) from a "
        f"{new['file_gb']:.1f} GB file, page cache evicted (resident before reads <= "
        f"{max(new['max_resident_before_read'], old['max_resident_before_read']):.1%}), median of {len(slices)}:"
    )
    for name in ("by_layer", "by_prompt_batches"):
        m = res[name]
        print(
            f"  {name:18s} h5py {m['h5py_mib_s']:8.0f} MiB/s  raw sequential {m['raw_mib_s']:8.0f} MiB/s  "
            f"fraction {m['fraction']:.2f}  (write {m['write_mib_s']:.0f} MiB/s)"
        )
    print(
        f"by-layer layout: {res['speedup_vs_old_layout']:.1f}x faster than the old layout; {res['verdict']}"
    )
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", help="directory for the temporary files (default: the system temp directory)")
    a = ap.parse_args()
    main(quick=a.quick, directory=a.dir)
