"""What each steered layer is steered with (:class:`~afprobe.experiments._steering.LayerPlan`): the direction,
its strength in natural units, its mean projection for mean ablation, and the two random bands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from afprobe.experiments._directions import Directions, covariance_directions, random_unit_vectors
from afprobe.experiments._gaps import pair_indices
from afprobe.experiments._reads import mean_projections, median_norms, read_named
from afprobe.experiments._steering import LayerPlan
from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import Backend, PrefixStore
from afprobe.scenarios import EditStart

Scale = Literal["natural", "residual_norm"]


def plan_layers(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    dirs: Directions,
    layers: Sequence[int],
    *,
    mode: EditStart,
    n_random: int,
    scale: Scale = "natural",
    seed: int = 0,
    batch_size: int = 8,
    prefixes: PrefixStore | None = None,
) -> tuple[dict[int, LayerPlan], dict[str, Any]]:
    """The plan of every layer and what ``steering.json`` records about it.

    ``natural``: the scale is the mean free − paid separation along the direction at its position (signed, so
    ``+alpha`` moves toward free). ``residual_norm``: the median residual norm over the steered tokens (the
    old, much larger unit, which measures how the model breaks rather than a dose-response)."""
    layers = list(layers)
    pairs = pair_indices([it.prompt for it in items])
    fi = torch.tensor([a for a, _ in pairs])
    pi = torch.tensor([b for _, b in pairs])
    reads: dict[str, Any] = {"batch_size": batch_size, "prefixes": prefixes}
    h = read_named(backend, items, layers, dirs.position, **reads)  # [prompt, layer, d]
    norms = median_norms(backend, items, layers, mode, **reads) if scale == "residual_norm" else {}
    plans: dict[int, LayerPlan] = {}
    info: dict[str, Any] = {"scale": scale, "separation": {}, "magnitude": {}}
    for li, layer in enumerate(layers):
        u = dirs[layer]
        sep = float(((h[fi, li] - h[pi, li]) @ u).mean())
        mag = sep if scale == "natural" else norms[layer]
        plans[layer] = LayerPlan(
            u=u,
            scale=mag,
            random={
                "covariance": covariance_directions(
                    h[:, li], n_random, seed + 104_729 * (layer + 1), exclude=u
                ),
                "isotropic": random_unit_vectors(n_random, u.shape[-1], seed + 7919 * (layer + 1)),
            },
        )
        info["separation"][str(layer)] = sep
        info["magnitude"][str(layer)] = mag
    vectors = {layer: torch.cat([p.u[None], *p.random.values()]) for layer, p in plans.items()}
    means = mean_projections(backend, items, vectors, mode, **reads)
    for layer, p in plans.items():
        p.mean = float(means[layer][0])
        offset = 1
        for band, rand in p.random.items():
            p.random_means[band] = means[layer][offset : offset + len(rand)]
            offset += len(rand)
    return plans, info
