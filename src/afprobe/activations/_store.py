"""The HDF5 activation file: schema, crash-safe append, resume, provenance.

A run writes ``OUT.partial`` and renames it to ``OUT`` only once every prompt is in, so a file at ``OUT`` is
always finished (it also carries ``complete=True``). After each batch the data is written, then ``n_done`` is
advanced and the file flushed; a kill at any moment leaves a partial file that the same command resumes from its
last whole batch (batches are fixed by row index, so the arrays come out identical). A partial file made with
another model, config or prompt set is refused.

Layout (see DESIGN.md): ``resid`` [prompt, layer, position, d_model] with attrs ``layers`` and
``position_names``; ``input_ids`` [prompt, max_len] right-padded; ``lengths`` [prompt]; ``position_index``
[prompt, position]; ``meta/<column>`` one row per prompt; provenance in the root attrs.

On disk ``resid`` is stored for reading by layer: one chunk per (layer, position) holding every prompt (up to
:data:`CHUNK_BYTES`; beyond that, a few chunks of that size), so the probes' read of one (layer, position) for all
prompts is one sequential read. The chunks are allocated in (layer, position) order by the first batch's write and
filled batch by batch in place: HDF5 writes straight into a chunk larger than its chunk cache, and the writer
turns the cache off, so each batch costs one contiguous write per (layer, position), with no fill values written
and no chunk read back. Files written before (one chunk per batch of prompts per (layer, position)) read the
same, only more slowly by layer; :func:`afprobe.activations.relayout` rewrites one in this layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afprobe._errors import AfprobeError
from afprobe._io import check_free_space, check_writable, write_error
from afprobe._lock import output_lock

_FAILED: list[Any] = []  # HDF5 files whose writes failed, never freed (see ActivationWriter._drop)
MARGIN = 64 << 10  # room a batch needs beyond its arrays (chunk index, attrs)

META_COLUMNS = (
    "pair_id",
    "request_id",
    "tier",
    "cue_format",
    "system_prompt",
    "category",
    "harmful",
    "request_text",
)
STR = h5py.string_dtype("utf-8")
FORMAT = "afprobe.activations/1"  # the root attr ``format``; the reader refuses any other
CHUNK_BYTES = 1 << 30  # largest resid chunk (HDF5's limit is 4 GiB)


def resid_chunks(n_prompts: int, d_model: int, dtype: Any) -> tuple[int, int, int, int]:
    """Chunk shape of ``resid``: every prompt of one (layer, position), or as many as fit in :data:`CHUNK_BYTES`."""
    rows = CHUNK_BYTES // max(1, d_model * np.dtype(dtype).itemsize)
    return (max(1, min(n_prompts, rows)), 1, 1, d_model)


def create_resid(
    f: h5py.File, n_prompts: int, n_layers: int, n_positions: int, d_model: int, dtype: Any
) -> Any:
    """The ``resid`` dataset in the by-layer layout, without fill values (rows are valid up to ``n_done``)."""
    return f.create_dataset(
        "resid",
        shape=(n_prompts, n_layers, n_positions, d_model),
        dtype=np.dtype(dtype),
        chunks=resid_chunks(n_prompts, d_model, dtype),
        fill_time="never",
    )


def open_for_append(path: Path, mode: str) -> h5py.File:
    """Open with the chunk cache off, so batch writes go straight to their place in each chunk."""
    return h5py.File(path, mode, rdcc_nbytes=0)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def partial_run_key(out: Path) -> str | None:
    """The run key of ``OUT.partial`` (what its resume must match), or None when there is no readable one."""
    try:
        with h5py.File(partial_path(out), "r") as f:
            key = f.attrs.get("run_key")
    except (OSError, KeyError):
        return None
    return None if key is None else str(key)


def check_output_path(out: Path, overwrite: bool) -> None:
    """Refuse a directory, a finished file (unless ``overwrite``), a missing parent directory, a parent that is a
    file and a directory that cannot be written."""
    if out.is_dir():
        raise AfprobeError(
            f"output path {out} is a directory; give a file name such as {out / 'activations.h5'}"
        )
    if out.exists() and not overwrite:
        raise AfprobeError(f"{out} already exists and is finished; pass --overwrite to replace it")
    check_writable(out)
    if not out.parent.exists():
        raise AfprobeError(f"output directory {out.parent} does not exist")


class ActivationWriter:
    """Create or resume ``OUT.partial``; :meth:`write_batch` rows in order; :meth:`finalize` renames to ``OUT``."""

    def __init__(
        self,
        out: Path,
        *,
        run_key: str,
        n_prompts: int,
        layers: Sequence[int],
        position_names: Sequence[str],
        d_model: int,
        max_len: int,
        dtype: str,
        batch_size: int,
        meta: Mapping[str, Sequence[Any]],
        attrs: dict[str, Any],
    ):
        self.out = out
        self.path = partial_path(out)
        self._broken = False
        self._lock: AbstractContextManager[Path] | None = output_lock(out, "activation file")  # one writer
        self._lock.__enter__()
        try:
            self.f = self._open_or_create(
                run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
            )
            # held open for the whole write: a dataset closed after each batch would flush its chunks while
            # being freed, where HDF5's "no space left" cannot be raised (it is printed and the batch marked done)
            self._ds = {name: self.f[name] for name in ("resid", "input_ids", "lengths", "position_index")}
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    @property
    def n_done(self) -> int:
        return int(self.f.attrs["n_done"])

    def _open_or_create(
        self, run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
    ) -> h5py.File:
        if self.path.exists():
            f = None
            try:
                f = open_for_append(self.path, "r+")
                key = f.attrs.get("run_key")
                if key is None or "n_done" not in f.attrs:
                    raise KeyError("created only in part")
            except (OSError, RuntimeError, KeyError):  # killed or out of space while HDF5 metadata was being
                if f is not None:  # written: start that file again
                    with contextlib.suppress(Exception):
                        f.id.close()
                self.path.unlink()
            else:
                if key != run_key:
                    f.close()
                    raise AfprobeError(
                        f"{self.path} was started by a run with another model, config or prompt set; "
                        "delete it or pass --overwrite"
                    )
                return f
        try:
            return self._create(
                run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
            )
        except (OSError, RuntimeError) as e:  # a full disk before the first batch: leave nothing behind
            self.path.unlink(missing_ok=True)
            raise AfprobeError(f"cannot write {self.path}: {write_error(e)}") from None

    def _create(
        self, run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
    ) -> h5py.File:
        f = open_for_append(self.path, "w")
        try:
            self._lay_out(
                f,
                run_key,
                n_prompts,
                layers,
                position_names,
                d_model,
                max_len,
                dtype,
                batch_size,
                meta,
                attrs,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                f.id.close()
            raise
        return f

    def _lay_out(
        self, f, run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
    ) -> None:
        n_l, n_p = len(layers), len(position_names)
        rows = max(1, min(batch_size, n_prompts))
        resid = create_resid(f, n_prompts, n_l, n_p, d_model, dtype)
        resid.attrs["layers"] = np.asarray(layers, dtype=np.int64)
        resid.attrs.create("position_names", data=list(position_names), dtype=STR)
        f.create_dataset("input_ids", shape=(n_prompts, max_len), dtype=np.int64, chunks=(rows, max_len))
        f.create_dataset("lengths", shape=(n_prompts,), dtype=np.int64)
        f.create_dataset("position_index", shape=(n_prompts, n_p), dtype=np.int64)
        g = f.create_group("meta")
        for col in META_COLUMNS:
            values = list(meta[col])
            if col == "pair_id":
                g.create_dataset(col, data=np.asarray(values, dtype=np.int64))
            elif col == "harmful":
                g.create_dataset(col, data=np.asarray(values, dtype=bool))
            else:
                g.create_dataset(col, data=np.asarray(values, dtype=object), dtype=STR)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["format"] = FORMAT
        f.attrs["run_key"] = run_key
        f.attrs["n_done"] = 0
        f.attrs["complete"] = False
        f.flush()

    def write_batch(
        self,
        start: int,
        resid: np.ndarray,
        input_ids: np.ndarray,
        lengths: np.ndarray,
        position_index: np.ndarray,
    ) -> None:
        """Write rows ``start : start + len(resid)`` and then mark them done. A failed write (a full disk) is
        one :class:`AfprobeError` naming the file; the file keeps the batches marked done before it."""
        check_free_space(self.path, resid.nbytes + input_ids.nbytes + MARGIN, "the next batch of")
        try:
            with _quiet_h5py_frees():
                self._write_rows(start, resid, input_ids, lengths, position_index)
        except (OSError, RuntimeError) as e:  # h5py raises RuntimeError when a flush cannot write
            why = write_error(e)
        else:
            return
        # outside the except block, so that no traceback keeps HDF5 objects alive: close without flushing
        self._broken = True
        self._drop()
        raise AfprobeError(f"cannot write {self.path}: {why}")

    def _write_rows(
        self,
        start: int,
        resid: np.ndarray,
        input_ids: np.ndarray,
        lengths: np.ndarray,
        position_index: np.ndarray,
    ) -> None:
        stop = start + len(resid)
        ds = self._ds
        ds["resid"][start:stop] = resid
        width = ds["input_ids"].shape[1]
        padded = np.full((stop - start, width), int(self.f.attrs["pad_token_id"]), dtype=np.int64)
        padded[:, : input_ids.shape[1]] = input_ids
        ds["input_ids"][start:stop] = padded
        ds["lengths"][start:stop] = lengths
        ds["position_index"][start:stop] = position_index
        self.f.flush()  # every chunk of this batch reaches the file (or this raises) before it is marked done
        self.f.attrs["n_done"] = stop
        self.f.flush()

    def _drop(self) -> None:
        """Let go of a file whose writes failed without closing it. Once HDF5 failed to write, freeing or closing
        its objects (which flushes again) leaves ids that crash the process later, so they are kept alive until
        the process ends; the file on disk keeps the batches marked done before the failure."""
        _FAILED.append((self.f, self._ds))
        self._ds = {}

    def finalize(self) -> Path:
        self.f.attrs["complete"] = True
        self._ds = {}
        self.f.close()
        os.replace(self.path, self.out)
        self._unlock()
        return self.out

    def close(self) -> None:
        try:
            if self._broken:
                self._drop()
            elif self.f.id.valid:
                self._ds = {}
                self.f.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)


@contextlib.contextmanager
def _quiet_h5py_frees() -> Iterator[None]:
    """Hide what HDF5 reports while its objects are freed after a failed write (the same failure, already raised
    as one error): h5py prints those tracebacks through ``sys.excepthook`` and ``sys.unraisablehook``."""
    hook, unraisable = sys.excepthook, sys.unraisablehook

    def from_h5py_free(exc: BaseException | None, tb: Any) -> bool:
        while tb is not None:
            if "h5py" in tb.tb_frame.f_code.co_filename and tb.tb_frame.f_code.co_name.endswith("dealloc"):
                return True
            tb = tb.tb_next
        return "id ref count" in str(exc) or "file write failed" in str(exc)

    def quiet_hook(kind: Any, exc: BaseException, tb: Any) -> None:
        if not from_h5py_free(exc, tb):
            hook(kind, exc, tb)

    def quiet_unraisable(info: Any) -> None:
        if not from_h5py_free(info.exc_value, info.exc_traceback) and "h5py" not in repr(info.object):
            unraisable(info)

    sys.excepthook, sys.unraisablehook = quiet_hook, quiet_unraisable
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hook, unraisable


def hdf5_writes_failed() -> bool:
    """Whether this process holds HDF5 files whose writes failed (a process should then end with ``os._exit``)."""
    return bool(_FAILED)


def to_attr(value: Any) -> Any:
    """Attrs hold strings and numbers; everything else goes in as JSON."""
    if isinstance(value, str):
        return str(value)  # plain str: subclasses such as torch's version string confuse h5py
    if isinstance(value, int | float | bool):
        return value
    return json.dumps(value, sort_keys=True, default=str)
