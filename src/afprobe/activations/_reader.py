"""Reading an activation file back, one layer and position at a time, without loading it whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afprobe._errors import AfprobeError
from afprobe.activations._store import FORMAT, META_COLUMNS, partial_path, resid_chunks

REQUIRED_META = ("pair_id", "request_id", "tier")


class ActivationReader:
    """Read-only view of a finished activation file.

    ``reader.get(layer, position)`` is ``[prompt, d_model]`` float32 for one model layer (the model's layer
    number, not the row in the file) and one named position; ``reader.meta`` holds the per-prompt columns.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise AfprobeError(
                f"{self.path} is a directory; give the activation file (.h5) that `afprobe cache` wrote"
            )
        if not self.path.is_file():
            partial = self.path.name and partial_path(self.path).exists()
            hint = " (a run that did not finish left a .partial file: re-run it to resume)" if partial else ""
            raise AfprobeError(f"activation file not found: {self.path}{hint}")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise AfprobeError(f"{self.path} is not a readable HDF5 file ({_first_line(e)})") from None
        try:
            problem = _schema_problem(self.f)
            if problem is None and not bool(self.f.attrs.get("complete", False)):
                problem = "it is not finished (complete is false)"
            if problem is not None:
                raise AfprobeError(f"{self.path} is not a finished afprobe activation file: {problem}")
            self.resid = self.f["resid"]
            self.layers: list[int] = [int(x) for x in self.resid.attrs["layers"]]
            self.position_names: list[str] = [_s(x) for x in self.resid.attrs["position_names"]]
            self.n_prompts, _, _, self.d_model = (int(x) for x in self.resid.shape)
            self.meta: dict[str, np.ndarray] = {
                c: _column(self.f["meta"][c]) for c in META_COLUMNS if c in self.f["meta"]
            }
        except AfprobeError:
            self.f.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as e:
            self.f.close()
            raise AfprobeError(f"{self.path} is damaged: {_first_line(e)}") from None

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _s(v) for k, v in self.f.attrs.items()}

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.attrs.get("config", "{}")))

    @property
    def model_id(self) -> str:
        return str(self.attrs.get("model_id", ""))

    @property
    def labels(self) -> np.ndarray:
        """1 for free tier ("training"), 0 for paid tier."""
        return (self.meta["tier"] == "free").astype(np.int64)

    def layer_row(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise AfprobeError(
                f"layer {layer} is not in {self.path.name} (stored layers: {self.layers})"
            ) from None

    def position_col(self, position: str) -> int:
        try:
            return self.position_names.index(position)
        except ValueError:
            raise AfprobeError(
                f"position {position!r} is not in {self.path.name} (stored: {', '.join(self.position_names)})"
            ) from None

    def get(self, layer: int, position: str) -> np.ndarray:
        """``[prompt, d_model]`` float32."""
        return self._read(self.resid, (slice(None), self.layer_row(layer), self.position_col(position)))

    def layer(self, layer: int) -> np.ndarray:
        """``[prompt, position, d_model]`` float32."""
        return self._read(self.resid, (slice(None), self.layer_row(layer)))

    def _read(self, ds: h5py.Dataset, sel: tuple | None = None, dtype: Any = np.float32) -> np.ndarray:
        """``ds[sel]`` as an array; a read that fails (a damaged or cut file) is one line naming the file."""
        try:
            return np.asarray(ds[sel] if sel is not None else ds[()], dtype=dtype)
        except (OSError, ValueError) as e:
            raise AfprobeError(f"{self.path} is damaged: cannot read {ds.name} ({_first_line(e)})") from None

    def iter_layers(self, position: str) -> Iterator[tuple[int, np.ndarray]]:
        for layer in self.layers:
            yield layer, self.get(layer, position)

    @property
    def layout(self) -> str:
        """``"by_layer"`` when one chunk holds a (layer, position) for every prompt (or as many as a chunk may
        hold), so reading it is sequential; ``"by_prompt"`` for files chunked by batches of prompts (cached before
        that layout: ``afprobe relayout`` rewrites them); ``"contiguous"`` when not chunked."""
        chunks = self.resid.chunks
        if chunks is None:
            return "contiguous"
        full = resid_chunks(self.n_prompts, self.d_model, self.resid.dtype)
        return "by_layer" if tuple(chunks) == full else "by_prompt"

    @property
    def input_ids(self) -> np.ndarray:
        return self._read(self.f["input_ids"], dtype=None)

    @property
    def lengths(self) -> np.ndarray:
        return self._read(self.f["lengths"], dtype=None)

    @property
    def position_index(self) -> np.ndarray:
        return self._read(self.f["position_index"], dtype=None)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> ActivationReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _column(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()], dtype=object)
    return np.asarray(ds[()])


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _schema_problem(f: h5py.File) -> str | None:
    """What makes ``f`` something other than an afprobe activation file (see ``_store``), or None."""
    fmt = f.attrs.get("format")
    if fmt is not None and _s(fmt) != FORMAT:
        return f"its format is {_s(fmt)!r}; this afprobe reads {FORMAT!r} (re-cache it)"
    if fmt is None and "afprobe_version" not in f.attrs:
        return "it has no 'format' or 'afprobe_version' attribute (not written by `afprobe cache`)"
    resid = f.get("resid")
    if not isinstance(resid, h5py.Dataset) or resid.ndim != 4:
        shape = getattr(resid, "shape", None)
        return f"'resid' must be a [prompt, layer, position, d_model] array (found {shape or 'none'})"
    if resid.dtype.kind != "f":
        return f"'resid' holds {resid.dtype}, not floats"
    n, n_layers, n_pos, _ = resid.shape
    for attr, size in (("layers", n_layers), ("position_names", n_pos)):
        if attr not in resid.attrs:
            return f"'resid' has no {attr!r} attribute"
        if len(resid.attrs[attr]) != size:
            return f"'resid' attribute {attr!r} has {len(resid.attrs[attr])} entries for {size} in the array"
    for name, shape in (("input_ids", (n, None)), ("lengths", (n,)), ("position_index", (n, n_pos))):
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            return f"no {name!r} dataset"
        if len(ds.shape) != len(shape) or any(
            w is not None and w != got for w, got in zip(shape, ds.shape, strict=True)
        ):
            return f"{name!r} has shape {ds.shape}; expected {tuple('*' if w is None else w for w in shape)}"
    meta = f.get("meta")
    if not isinstance(meta, h5py.Group):
        return "no 'meta' group (the per-prompt columns)"
    for col in REQUIRED_META:
        if col not in meta:
            return f"no meta/{col} column"
    for col in meta:
        ds = meta[col]
        if not isinstance(ds, h5py.Dataset) or ds.shape != (n,):
            return f"meta/{col} must hold one value per prompt ({n})"
    return None
