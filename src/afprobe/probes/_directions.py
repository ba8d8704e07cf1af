"""Probe directions: one unit vector per (probe type, layer, position), saved as safetensors + JSON, never pickle.

Sign convention: ``+direction`` points toward "training" (the free tier, label 1), in the raw residual-stream
basis of the model the activations came from. Loading checks the model: directions from one model are refused
for another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from torch import Tensor

from afprobe._errors import AfprobeError

FORMAT = "afprobe.directions/1"
SIGN_CONVENTION = "+direction points toward 'training' (free tier, label 1)"
TENSORS_FILE = "directions.safetensors"
META_FILE = "directions.json"


@dataclass
class ProbeDirections:
    """``vectors[(probe, position)]`` is ``[len(layers), d_model]`` float32, one unit row per layer."""

    vectors: dict[tuple[str, str], np.ndarray]
    layers: list[int]
    model_id: str
    weights_hash: str
    d_model: int
    seed: int
    default_probe: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def probes(self) -> list[str]:
        return list(dict.fromkeys(p for p, _ in self.vectors))

    @property
    def positions(self) -> list[str]:
        return list(dict.fromkeys(pos for _, pos in self.vectors))

    def direction(self, layer: int, position: str, probe: str | None = None) -> np.ndarray:
        """Unit ``[d_model]`` float32 vector; ``+`` points toward "training" (free tier)."""
        probe = probe or self.default_probe
        if (probe, position) not in self.vectors:
            raise AfprobeError(
                f"no {probe!r} direction at position {position!r} (probes: {', '.join(self.probes)}; "
                f"positions: {', '.join(self.positions)})"
            )
        if layer not in self.layers:
            raise AfprobeError(f"no direction for layer {layer} (layers with directions: {self.layers})")
        return np.array(self.vectors[probe, position][self.layers.index(layer)], dtype=np.float32)

    def direction_tensor(
        self, layer: int, position: str, probe: str | None = None, device: str | torch.device = "cpu"
    ) -> Float[Tensor, " d_model"]:
        return torch.from_numpy(self.direction(layer, position, probe)).to(device)

    def check_model(
        self, model_id: str | None = None, weights_hash: str | None = None, d_model: int | None = None
    ) -> None:
        """Raise :class:`AfprobeError` naming both models when these directions were fitted on another one."""
        mine = f"{self.model_id} (weights {self.weights_hash[:12] or '?'}, d_model {self.d_model})"
        theirs = f"{model_id or '?'} (weights {(weights_hash or '?')[:12]}, d_model {d_model or '?'})"
        if model_id is not None and model_id != self.model_id:
            raise AfprobeError(f"probe directions were fitted on {mine}, but the model in use is {theirs}")
        if weights_hash is not None and self.weights_hash and weights_hash != self.weights_hash:
            raise AfprobeError(
                f"probe directions were fitted on {mine}, but the model in use has other weights: {theirs}"
            )
        if d_model is not None and d_model != self.d_model:
            raise AfprobeError(f"probe directions were fitted on {mine}, but the model in use is {theirs}")

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "weights_hash": self.weights_hash,
            "d_model": self.d_model,
            "layers": self.layers,
            "positions": self.positions,
            "probes": self.probes,
            "default_probe": self.default_probe,
            "seed": self.seed,
            "sign_convention": SIGN_CONVENTION,
            "basis": "raw residual stream (the activation file's basis); rows have unit L2 norm",
            "entries": [
                {"tensor": _key(probe, pos), "row": i, "layer": layer, "position": pos, "probe": probe}
                for (probe, pos) in self.vectors
                for i, layer in enumerate(self.layers)
            ],
            **self.extra,
        }


def unit_rows(coef: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    norms = np.linalg.norm(coef, axis=-1, keepdims=True)
    return np.divide(coef, norms, out=np.zeros_like(coef, dtype=np.float64), where=norms > 0).astype(
        np.float32
    )


def save_directions(out_dir: str | Path, dirs: ProbeDirections) -> tuple[Path, Path]:
    """Write ``directions.safetensors`` (tensors ``{probe}/{position}`` and ``layers``) and ``directions.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        _key(p, pos): np.ascontiguousarray(v, dtype=np.float32) for (p, pos), v in dirs.vectors.items()
    }
    tensors["layers"] = np.asarray(dirs.layers, dtype=np.int64)
    meta = dirs.metadata()
    save_file(tensors, str(out / TENSORS_FILE), metadata={"afprobe": json.dumps(meta)})
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out / TENSORS_FILE, out / META_FILE


def load_directions(
    path: str | Path,
    *,
    expect_model_id: str | None = None,
    expect_weights_hash: str | None = None,
    expect_d_model: int | None = None,
) -> ProbeDirections:
    """Read the directions ``afprobe probe`` wrote into ``path`` (its output directory, or the .safetensors file)
    and refuse them when they were fitted on another model than the one described by the ``expect_*`` values."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    tensors_path, meta_path = folder / TENSORS_FILE, folder / META_FILE
    if not tensors_path.is_file() or not meta_path.is_file():
        raise AfprobeError(
            f"no probe directions in {folder} (expected {TENSORS_FILE} and {META_FILE} from `afprobe probe`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensors_path))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AfprobeError(f"cannot read probe directions in {folder}: {why}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AfprobeError(f"{meta_path} is not an afprobe directions file (format {FORMAT})")
    _check_meta(meta, meta_path)
    layers = [int(x) for x in meta["layers"]]
    if "layers" not in tensors or tensors["layers"].tolist() != layers:
        raise AfprobeError(
            f"{tensors_path} and {meta_path} disagree about the layers: re-run `afprobe probe`"
        )
    vectors: dict[tuple[str, str], np.ndarray] = {}
    d_model = meta["d_model"]
    for probe in meta["probes"]:
        for pos in meta["positions"]:
            v = tensors.get(_key(probe, pos))
            if v is None or v.shape != (len(layers), d_model):
                raise AfprobeError(
                    f"{tensors_path} lacks a [{len(layers)}, {d_model}] tensor {_key(probe, pos)!r}"
                )
            vectors[probe, pos] = v
    known = {
        "model_id",
        "weights_hash",
        "d_model",
        "layers",
        "seed",
        "default_probe",
        "positions",
        "probes",
        "entries",
        "format",
        "sign_convention",
        "basis",
    }
    dirs = ProbeDirections(
        vectors=vectors,
        layers=layers,
        model_id=str(meta["model_id"]),
        weights_hash=str(meta.get("weights_hash", "")),
        d_model=d_model,
        seed=int(meta["seed"]),
        default_probe=str(meta["default_probe"]),
        extra={k: v for k, v in meta.items() if k not in known},
    )
    dirs.check_model(expect_model_id, expect_weights_hash, expect_d_model)
    return dirs


def cosine_between_probes(dirs: ProbeDirections) -> list[dict[str, Any]]:
    """Cosine similarity of every two probe types' directions at each (layer, position)."""
    rows = []
    for a, b in combinations(dirs.probes, 2):
        for pos in dirs.positions:
            cos = (dirs.vectors[a, pos].astype(np.float64) * dirs.vectors[b, pos]).sum(-1)
            rows += [
                {"layer": layer, "position": pos, "probe_a": a, "probe_b": b, "cosine": float(c)}
                for layer, c in zip(dirs.layers, cos, strict=True)
            ]
    return rows


def cosine_between_layers(dirs: ProbeDirections) -> list[dict[str, Any]]:
    """Cosine similarity of each probe type's directions at neighbouring stored layers, per position."""
    rows = []
    for (probe, pos), v in dirs.vectors.items():
        cos = (v[:-1].astype(np.float64) * v[1:]).sum(-1)
        rows += [
            {"probe": probe, "position": pos, "layer_a": la, "layer_b": lb, "cosine": float(c)}
            for la, lb, c in zip(dirs.layers[:-1], dirs.layers[1:], cos, strict=True)
        ]
    return rows


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _names(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


# key -> (what it must be, the check): a directions.json written by hand or by another tool is refused by name
_META_KEYS: dict[str, tuple[str, Any]] = {
    "model_id": ("a string", lambda v: isinstance(v, str)),
    "d_model": ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "layers": ("a list of layer numbers", lambda v: isinstance(v, list) and all(_is_int(x) for x in v)),
    "probes": ("a non-empty list of names", _names),
    "positions": ("a non-empty list of names", _names),
    "default_probe": ("a string", lambda v: isinstance(v, str)),
    "seed": ("an integer", _is_int),
}


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    for key, (what, ok) in _META_KEYS.items():
        if key not in meta:
            raise AfprobeError(f"{path} has no {key!r} key: re-run `afprobe probe`")
        if not ok(meta[key]):
            raise AfprobeError(f"{path}: {key!r} must be {what}, got {meta[key]!r}")
    if meta["default_probe"] not in meta["probes"]:
        raise AfprobeError(f"{path}: default_probe {meta['default_probe']!r} is not one of {meta['probes']}")


def _key(probe: str, position: str) -> str:
    return f"{probe}/{position}"
