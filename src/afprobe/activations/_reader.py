"""Reading an activation file back, one layer and position at a time, without loading it whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afprobe._errors import AfprobeError
from afprobe.activations._store import META_COLUMNS, partial_path


class ActivationReader:
    """Read-only view of a finished activation file.

    ``reader.get(layer, position)`` is ``[prompt, d_model]`` float32 for one model layer (the model's layer
    number, not the row in the file) and one named position; ``reader.meta`` holds the per-prompt columns.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            hint = (
                " (a run that did not finish left a .partial file: re-run it to resume)"
                if partial_path(self.path).exists()
                else ""
            )
            raise AfprobeError(f"activation file not found: {self.path}{hint}")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError:
            raise AfprobeError(f"{self.path} is not an HDF5 activation file") from None
        if "resid" not in self.f or not bool(self.f.attrs.get("complete", False)):
            self.f.close()
            raise AfprobeError(f"{self.path} is not a finished afprobe activation file")
        self.resid = self.f["resid"]
        self.layers: list[int] = [int(x) for x in self.resid.attrs["layers"]]
        self.position_names: list[str] = [_s(x) for x in self.resid.attrs["position_names"]]
        self.n_prompts, _, _, self.d_model = (int(x) for x in self.resid.shape)
        self.meta: dict[str, np.ndarray] = {
            c: _column(self.f["meta"][c]) for c in META_COLUMNS if c in self.f["meta"]
        }

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
        return np.asarray(
            self.resid[:, self.layer_row(layer), self.position_col(position), :], dtype=np.float32
        )

    def layer(self, layer: int) -> np.ndarray:
        """``[prompt, position, d_model]`` float32."""
        return np.asarray(self.resid[:, self.layer_row(layer), :, :], dtype=np.float32)

    def iter_layers(self, position: str) -> Iterator[tuple[int, np.ndarray]]:
        for layer in self.layers:
            yield layer, self.get(layer, position)

    @property
    def input_ids(self) -> np.ndarray:
        return np.asarray(self.f["input_ids"])

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.f["lengths"])

    @property
    def position_index(self) -> np.ndarray:
        return np.asarray(self.f["position_index"])

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
