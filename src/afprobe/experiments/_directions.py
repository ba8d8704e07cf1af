"""Directions for steering and subspace patching: from ``afprobe probe``'s output, or computed in place.

Sign convention (as in :mod:`afprobe.probes`): ``+direction`` points toward "training" (the free tier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from afprobe._errors import AfprobeError
from afprobe.experiments._resid import read_named
from afprobe.experiments._scoring import ScoredPrompt
from afprobe.models import Backend, LoadedModel


@dataclass
class Directions:
    """One unit float32 vector per layer, all read at the same named ``position``."""

    vectors: dict[int, Tensor]
    position: str
    source: str
    best_layer: int | None = None
    probe: str | None = None

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self.vectors:
            raise AfprobeError(f"no direction for layer {layer} (layers with directions: {self.layers})")
        return self.vectors[layer]

    def meta(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "position": self.position,
            "probe": self.probe,
            "layers": self.layers,
            "best_layer": self.best_layer,
            "sign": "+direction points toward 'training' (free tier)",
        }


def _unit(v: Tensor) -> Tensor:
    v = v.detach().to("cpu", torch.float32)
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise AfprobeError("a direction has zero or non-finite norm")
    return v / n


def as_directions(
    obj: Directions | dict[int, Tensor], position: str = "last", source: str = "given"
) -> Directions:
    """Accept a :class:`Directions` or a plain ``{layer: vector}`` dict (vectors are normalized)."""
    if isinstance(obj, Directions):
        return obj
    return Directions({int(k): _unit(torch.as_tensor(v)) for k, v in obj.items()}, position, source)


def load_probe_directions(
    path: str | Path, lm: LoadedModel, *, position: str = "last", probe: str | None = None
) -> Directions:
    """Directions from ``afprobe probe``'s output directory, checked against ``lm``; ``best_layer`` comes from its
    ``probe_results.json`` (the best layer at ``position``) when present."""
    from afprobe.probes import load_directions, read_probe_results

    dirs = load_directions(path)
    if dirs.weights_hash:
        dirs.check_model(weights_hash=lm.weights_hash, d_model=lm.d_model)
    else:
        dirs.check_model(model_id=lm.model_id, d_model=lm.d_model)
    vectors = {
        layer: _unit(torch.from_numpy(dirs.direction(layer, position, probe))) for layer in dirs.layers
    }
    best = None
    try:
        results = read_probe_results(Path(path) if Path(path).is_dir() else Path(path).parent)
    except AfprobeError:
        results = {}
    headline = results.get("best") or {}
    if headline.get("position") == position:
        best = int(headline["layer"])
    else:
        rows = [
            r
            for r in results.get("per_layer", [])
            if r.get("position") == position
            and r.get("probe") == (probe or dirs.default_probe)
            and r.get("auroc") is not None
        ]
        if rows:
            best = int(max(rows, key=lambda r: r["auroc"])["layer"])
    return Directions(vectors, position, f"probes:{Path(path)}", best, probe or dirs.default_probe)


def mean_difference_directions(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    position: str = "last",
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
) -> Directions:
    """Unit ``mean(free) − mean(paid)`` of the residual stream at ``position``, per layer (in-sample when the same
    prompts are then steered: say so in the results)."""
    idx = list(range(len(items))) if indices is None else list(indices)
    h = read_named(backend, items, layers, position, indices=idx, batch_size=batch_size)
    free = torch.tensor([items[i].prompt.tier == "free" for i in idx])
    if free.all() or not free.any():
        raise AfprobeError("mean-difference directions need prompts of both tiers")
    diff = h[free].mean(0) - h[~free].mean(0)
    vectors = {}
    for li, layer in enumerate(layers):
        if diff[li].norm() > 0:
            vectors[layer] = _unit(diff[li])
    if not vectors:
        raise AfprobeError("free and paid prompts have identical residual streams at every layer")
    return Directions(vectors, position, "mean_difference (in-sample)")


def random_unit_vectors(n: int, d: int, seed: int) -> Float[Tensor, "n d"]:
    """``n`` random unit vectors in ``d`` dimensions (Gaussian, normalized), reproducible from ``seed``."""
    g = np.random.default_rng(seed)
    v = torch.from_numpy(g.standard_normal((n, d))).float()
    return v / v.norm(dim=-1, keepdim=True)
