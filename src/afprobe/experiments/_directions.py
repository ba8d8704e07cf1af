"""Directions for steering and subspace patching: from ``afprobe probe``'s output, or computed in place.

Sign convention (as in :mod:`afprobe.probes`): ``+direction`` points toward "training" (the free tier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from afprobe._errors import AfprobeError
from afprobe.experiments._reads import read_named
from afprobe.experiments._subject import ScoredPrompt, Subject
from afprobe.models import Backend, LoadedModel, PrefixStore


@dataclass
class Directions:
    """One unit float32 vector per layer, all read at the same named ``position``. ``skipped``: layers whose
    direction was zero or not finite and so left out (e.g. the embedding output at a position whose token is the
    same on both tiers), with ``note`` saying so."""

    vectors: dict[int, Tensor]
    position: str
    source: str
    best_layer: int | None = None
    probe: str | None = None
    skipped: list[int] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def note(self) -> str:
        if not self.skipped:
            return ""
        return (
            f"layers {self.skipped} have a zero direction at {self.position!r} (both tiers' activations are "
            "identical there) and are left out"
        )

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
            "skipped_layers": self.skipped,
            "note": self.note,
            "best_layer": self.best_layer,
            "sign": "+direction points toward 'training' (free tier)",
        }


def _unit(v: Tensor) -> Tensor | None:
    """``v`` as a unit float32 CPU vector, or None when its norm is zero or not finite."""
    v = v.detach().to("cpu", torch.float32)
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        return None
    return v / n


def unit_directions(vectors: dict[int, Tensor], position: str, source: str, **kw: Any) -> Directions:
    """:class:`Directions` from raw per-layer vectors: each normalized, zero or non-finite ones skipped (with a
    note); an error when none is left."""
    units = {int(k): _unit(torch.as_tensor(v)) for k, v in vectors.items()}
    kept = {k: u for k, u in units.items() if u is not None}
    if not kept:
        raise AfprobeError(
            f"no usable direction at position {position!r}: every one has zero or non-finite norm"
        )
    skipped = sorted(k for k, u in units.items() if u is None)
    return Directions(kept, position, source, skipped=skipped, **kw)


def as_directions(
    obj: Directions | dict[int, Tensor], position: str = "last", source: str = "given"
) -> Directions:
    """Accept a :class:`Directions` or a plain ``{layer: vector}`` dict (vectors are normalized)."""
    if isinstance(obj, Directions):
        return obj
    return unit_directions(obj, position, source)


def resolve_directions(
    s: Subject,
    directions: Directions | dict[int, Tensor] | None,
    probes: str | Path | None,
    position: str,
    probe: str | None,
    batch_size: int,
) -> Directions:
    """Given directions, else ``afprobe probe``'s output in ``probes``, else in-sample mean differences."""
    if directions is not None:
        return as_directions(directions, position)
    if probes is not None:
        return load_probe_directions(probes, s.lm, position=position, probe=probe)
    return mean_difference_directions(
        s.backend,
        s.items,
        list(range(s.lm.n_layers + 1)),
        position,
        batch_size=batch_size,
        prefixes=s.prefixes,
    )


def load_probe_directions(
    path: str | Path, lm: LoadedModel, *, position: str = "last", probe: str | None = None
) -> Directions:
    """The one loader of ``afprobe probe``'s directions (the CLI's ``--probes DIR`` and ``afprobe run`` both use
    it), checked against ``lm``. Layers whose direction is zero are skipped with a note. ``best_layer``: the probe
    results' headline layer when it is at ``position`` for this probe and has a direction, else the layer with
    the highest AUROC at ``position`` for this probe among those with a direction."""
    from afprobe.probes import load_directions, read_probe_results

    dirs = load_directions(path)
    if dirs.weights_hash:
        dirs.check_model(weights_hash=lm.weights_hash, d_model=lm.d_model)
    else:
        dirs.check_model(model_id=lm.model_id, d_model=lm.d_model)
    probe = probe or dirs.default_probe
    raw = {layer: torch.from_numpy(dirs.direction(layer, position, probe)) for layer in dirs.layers}
    out = unit_directions(raw, position, f"probes:{Path(path)}", probe=probe)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        results = read_probe_results(folder)
    except AfprobeError:
        results = {}
    out.best_layer = best_probe_layer(results, position, probe, out.layers)
    return out


def best_probe_layer(results: dict[str, Any], position: str, probe: str, layers: Sequence[int]) -> int | None:
    """The best-layer rule (see :func:`load_probe_directions`)."""
    headline = results.get("best") or {}
    if (
        headline.get("position") == position
        and headline.get("probe", probe) == probe
        and headline.get("layer") in layers
    ):
        return int(headline["layer"])
    rows = [
        r
        for r in results.get("per_layer", [])
        if r.get("position") == position
        and r.get("probe") == probe
        and r.get("layer") in layers
        and r.get("auroc") is not None
    ]
    return int(max(rows, key=lambda r: (r["auroc"], -r["layer"]))["layer"]) if rows else None


def mean_difference_directions(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    position: str = "last",
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    prefixes: PrefixStore | None = None,
) -> Directions:
    """Unit ``mean(free) − mean(paid)`` of the residual stream at ``position``, per layer (in-sample when the same
    prompts are then steered: say so in the results)."""
    idx = list(range(len(items))) if indices is None else list(indices)
    h = read_named(backend, items, layers, position, indices=idx, batch_size=batch_size, prefixes=prefixes)
    free = torch.tensor([items[i].prompt.tier == "free" for i in idx])
    if free.all() or not free.any():
        raise AfprobeError("mean-difference directions need prompts of both tiers")
    diff = h[free].mean(0) - h[~free].mean(0)
    if not any(_unit(d) is not None for d in diff):
        raise AfprobeError("free and paid prompts have identical residual streams at every layer")
    return unit_directions(
        {layer: diff[li] for li, layer in enumerate(layers)}, position, "mean_difference (in-sample)"
    )


def random_unit_vectors(n: int, d: int, seed: int) -> Float[Tensor, "n d"]:
    """``n`` random unit vectors in ``d`` dimensions (Gaussian, normalized), reproducible from ``seed``."""
    g = np.random.default_rng(seed)
    v = torch.from_numpy(g.standard_normal((n, d))).float()
    return v / v.norm(dim=-1, keepdim=True)


def covariance_directions(
    X: Float[Tensor, "n d"], n: int, seed: int, exclude: Tensor | None = None
) -> Float[Tensor, "n_dirs d"]:
    """``n`` random unit vectors drawn from the covariance of the rows of ``X`` (Gaussian with that covariance,
    normalized): random directions that lie where the activations vary, unlike isotropic ones, which in a
    residual stream of a few effective dimensions are nearly orthogonal to everything the model uses.
    ``exclude``: a direction projected out first (the one under test, so that the control is not the effect);
    isotropic directions orthogonal to it when nothing else varies."""
    Xc = X.detach().to("cpu", torch.float64)
    Xc = Xc - Xc.mean(0)
    e = None if exclude is None else (exclude.detach().to("cpu", torch.float64) / exclude.norm())
    if e is not None:
        Xc = Xc - (Xc @ e)[:, None] * e[None, :]
    z = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, Xc.shape[0])))
    v = z @ Xc
    if float(Xc.norm()) <= 1e-9 * max(1.0, float(X.double().norm())):
        v = random_unit_vectors(n, X.shape[-1], seed).double()
        if e is not None:
            v = v - (v @ e)[:, None] * e[None, :]
    v = v.float()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
