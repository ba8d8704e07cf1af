"""Reading the residual stream of prompts (no continuation) for the experiments: batches, norms, positions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from afprobe.experiments._scoring import PositionMode, ScoredPrompt
from afprobe.models import Backend


def prompt_batches(
    items: Sequence[ScoredPrompt], indices: Sequence[int], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """``(indices, input_ids, attention_mask)`` of right-padded prompt batches."""
    idx = list(indices)
    for b0 in range(0, len(idx), batch_size):
        chosen = idx[b0 : b0 + batch_size]
        width = max(items[i].length for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for r, i in enumerate(chosen):
            n = items[i].length
            ids[r, :n] = torch.tensor(items[i].tok.input_ids)
            mask[r, :n] = 1
        yield chosen, ids, mask


def steer_start(item: ScoredPrompt, mode: PositionMode) -> int:
    """First prompt token a steering edit touches in ``mode``."""
    if mode == "all":
        return 0
    if mode == "from_cue":
        return item.tok.positions["cue"]
    return item.length - 1


def median_norms(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    mode: PositionMode,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
) -> dict[int, float]:
    """Median L2 norm of the residual stream at each layer, over prompts and the prompt tokens ``mode`` steers."""
    idx = list(range(len(items))) if indices is None else list(indices)
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    norms: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        for chosen, ids, mask in prompt_batches(items, idx, batch_size, pad_id):
            out = backend.run(ids, mask, read_layers=list(layers), logits=False)
            for layer in layers:
                n = out.resid[layer].float().norm(dim=-1).cpu()
                for r, i in enumerate(chosen):
                    norms[layer].append(n[r, steer_start(items[i], mode) : items[i].length].numpy())
    return {layer: float(np.median(np.concatenate(v))) for layer, v in norms.items()}


def read_named(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    position: str,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
) -> Float[Tensor, "prompt layer d"]:
    """The residual stream at one named position of every prompt, at ``layers``."""
    idx = list(range(len(items))) if indices is None else list(indices)
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    rows = []
    with torch.inference_mode():
        for chosen, ids, mask in prompt_batches(items, idx, batch_size, pad_id):
            pos = torch.tensor([[items[i].tok.positions[position]] for i in chosen])
            out = backend.run(ids, mask, read_layers=list(layers), read_positions=pos, logits=False)
            rows.append(torch.stack([out.resid[layer][:, 0].float().cpu() for layer in layers], dim=1))
    return torch.cat(rows)
