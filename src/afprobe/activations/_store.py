"""The HDF5 activation file: schema, crash-safe append, resume, provenance.

A run writes ``OUT.partial`` and renames it to ``OUT`` only once every prompt is in, so a file at ``OUT`` is
always finished (it also carries ``complete=True``). After each batch the data is written, then ``n_done`` is
advanced and the file flushed; a kill at any moment leaves a partial file that the same command resumes from its
last whole batch (batches are fixed by row index, so the arrays come out identical). A partial file made with
another model, config or prompt set is refused.

Layout (see DESIGN.md): ``resid`` [prompt, layer, position, d_model] with attrs ``layers`` and
``position_names``; ``input_ids`` [prompt, max_len] right-padded; ``lengths`` [prompt]; ``position_index``
[prompt, position]; ``meta/<column>`` one row per prompt; provenance in the root attrs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afprobe._errors import AfprobeError
from afprobe._io import check_writable
from afprobe._lock import output_lock

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
        self._lock: AbstractContextManager[Path] | None = output_lock(out, "activation file")  # one writer
        self._lock.__enter__()
        try:
            self.f = self._open_or_create(
                run_key, n_prompts, layers, position_names, d_model, max_len, dtype, batch_size, meta, attrs
            )
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
            try:
                f = h5py.File(self.path, "r+")
                key = f.attrs.get("run_key")
            except (OSError, KeyError):  # killed while HDF5 metadata was half-written: start that file again
                self.path.unlink()
            else:
                if key != run_key:
                    f.close()
                    raise AfprobeError(
                        f"{self.path} was started by a run with another model, config or prompt set; "
                        "delete it or pass --overwrite"
                    )
                return f
        f = h5py.File(self.path, "w")
        n_l, n_p = len(layers), len(position_names)
        rows = max(1, min(batch_size, n_prompts))
        resid = f.create_dataset(
            "resid", shape=(n_prompts, n_l, n_p, d_model), dtype=np.dtype(dtype), chunks=(rows, 1, 1, d_model)
        )
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
        return f

    def write_batch(
        self,
        start: int,
        resid: np.ndarray,
        input_ids: np.ndarray,
        lengths: np.ndarray,
        position_index: np.ndarray,
    ) -> None:
        """Write rows ``start : start + len(resid)`` and then mark them done."""
        stop = start + len(resid)
        self.f["resid"][start:stop] = resid
        ids = self.f["input_ids"]
        padded = np.full((stop - start, ids.shape[1]), int(self.f.attrs["pad_token_id"]), dtype=np.int64)
        padded[:, : input_ids.shape[1]] = input_ids
        ids[start:stop] = padded
        self.f["lengths"][start:stop] = lengths
        self.f["position_index"][start:stop] = position_index
        self.f.flush()
        self.f.attrs["n_done"] = stop
        self.f.flush()

    def finalize(self) -> Path:
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.path, self.out)
        self._unlock()
        return self.out

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)


def to_attr(value: Any) -> Any:
    """Attrs hold strings and numbers; everything else goes in as JSON."""
    if isinstance(value, str):
        return str(value)  # plain str: subclasses such as torch's version string confuse h5py
    if isinstance(value, int | float | bool):
        return value
    return json.dumps(value, sort_keys=True, default=str)
