"""Reading the residual stream of prompts (no continuation) for the experiments: batches, norms, positions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import Backend, right_pad
from afprobe.scenarios import EditStart, edit_start


def prompt_batches(
    items: Sequence[ScoredPrompt], indices: Sequence[int], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """``(indices, input_ids, attention_mask)`` of right-padded prompt batches."""
    idx = list(indices)
    for b0 in range(0, len(idx), batch_size):
        chosen = idx[b0 : b0 + batch_size]
        ids, mask = right_pad([items[i].tok.input_ids for i in chosen], pad_id)
        yield chosen, ids, mask


def median_norms(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    mode: EditStart,
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
                    norms[layer].append(n[r, edit_start(items[i].tok, mode) : items[i].length].numpy())
    return {layer: float(np.median(np.concatenate(v))) for layer, v in norms.items()}


def mean_projections(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    vectors: dict[int, Tensor],
    mode: EditStart,
    *,
    batch_size: int = 8,
) -> dict[int, Tensor]:
    """Per layer, the mean projection of the residual stream on each row of ``vectors[layer]`` (``[k, d]``) over
    prompts and the prompt tokens ``mode`` steers: the value mean ablation sets that component to."""
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    sums = {layer: torch.zeros(v.shape[0], dtype=torch.float64) for layer, v in vectors.items()}
    count = 0
    with torch.inference_mode():
        for chosen, ids, mask in prompt_batches(items, range(len(items)), batch_size, pad_id):
            out = backend.run(ids, mask, read_layers=sorted(vectors), logits=False)
            keep = torch.zeros(ids.shape, dtype=torch.bool)
            for r, i in enumerate(chosen):
                keep[r, edit_start(items[i].tok, mode) : items[i].length] = True
            count += int(keep.sum())
            for layer, v in vectors.items():
                h = out.resid[layer].float().cpu()[keep]  # [tokens, d]
                sums[layer] += (h @ v.to(h.dtype).T).sum(0).double()
    return {layer: (s / max(count, 1)).float() for layer, s in sums.items()}


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
