"""Reading the residual stream of prompts (no continuation) for the experiments: batches, norms, positions.

Every read runs through :func:`read_passes`: prompts that share a system prompt continue from its KV cache,
computed once (``prefixes``, the subject's store when a runner passes it), so a 3,300-token system prompt is not
run again for every prompt and every read; the tokens a read needs all come after it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import (
    Backend,
    PrefixStore,
    RunOutput,
    plan_prefixes,
    prefix_batches,
    prompt_keys,
    right_pad,
)
from afprobe.scenarios import EditStart, edit_start


def read_passes(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    indices: Sequence[int],
    layers: Sequence[int],
    needed: Sequence[int],
    *,
    batch_size: int = 8,
    positions: Sequence[int] | None = None,
    prefixes: PrefixStore | None = None,
) -> Iterator[tuple[list[int], int, RunOutput]]:
    """``(chosen, p, out)`` per batch of right-padded prompts ``items[indices]``, read at ``layers``:
    ``out.resid[layer]`` holds columns ``p`` onwards (``[batch, seq - p, d]``), or, with ``positions`` (one
    token index per prompt of ``indices``), those tokens (``[batch, 1, d]``).

    A batch holds prompts of one shared prefix (their system prompt) and continues from its stored KV cache:
    ``p`` is its length, at most ``needed[k]`` (the first token prompt ``indices[k]`` is read at) for every prompt
    of the batch; 0 where nothing is shared (then the rows run whole, up to the last layer read)."""
    idx = list(indices)
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    rows = [list(items[i].tok.input_ids) for i in idx]
    store = prefixes if prefixes is not None else PrefixStore(backend)
    plan = [0] * len(idx)
    if store.usable:
        plan = plan_prefixes(rows, prompt_keys([items[i].tok for i in idx]), limits=needed)
    for cols in prefix_batches(rows, plan, batch_size):
        ids, mask = right_pad([rows[c] for c in cols], pad_id)
        p, n = plan[cols[0]], len(cols)
        at = None if positions is None else torch.tensor([[positions[c]] for c in cols]) - p
        if p == 0:
            out = backend.run(ids, mask, read_layers=list(layers), read_positions=at, logits=False)
        else:
            out = backend.run(
                ids[:, p:],
                mask,
                read_layers=list(layers),
                read_positions=at,
                logit_positions=torch.zeros(n, 1, dtype=torch.long),
                **store.continue_from(rows[cols[0]][:p], n, ids.shape[1]),
            )
        yield [idx[c] for c in cols], p, out


def median_norms(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    layers: Sequence[int],
    mode: EditStart,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    prefixes: PrefixStore | None = None,
) -> dict[int, float]:
    """Median L2 norm of the residual stream at each layer, over prompts and the prompt tokens ``mode`` steers."""
    idx = list(range(len(items))) if indices is None else list(indices)
    start = {i: edit_start(items[i].tok, mode) for i in idx}
    starts = [start[i] for i in idx]
    norms: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        for chosen, p, out in read_passes(
            backend, items, idx, layers, starts, batch_size=batch_size, prefixes=prefixes
        ):
            for layer in layers:
                n = out.resid[layer].float().norm(dim=-1).cpu()
                for r, i in enumerate(chosen):
                    norms[layer].append(n[r, start[i] - p : items[i].length - p].numpy())
    return {layer: float(np.median(np.concatenate(v))) for layer, v in norms.items()}


def mean_projections(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    vectors: dict[int, Tensor],
    mode: EditStart,
    *,
    batch_size: int = 8,
    prefixes: PrefixStore | None = None,
) -> dict[int, Tensor]:
    """Per layer, the mean projection of the residual stream on each row of ``vectors[layer]`` (``[k, d]``) over
    prompts and the prompt tokens ``mode`` steers: the value mean ablation sets that component to."""
    idx = list(range(len(items)))
    start = {i: edit_start(items[i].tok, mode) for i in idx}
    starts = [start[i] for i in idx]
    sums = {layer: torch.zeros(v.shape[0], dtype=torch.float64) for layer, v in vectors.items()}
    count = 0
    with torch.inference_mode():
        for chosen, p, out in read_passes(
            backend, items, idx, sorted(vectors), starts, batch_size=batch_size, prefixes=prefixes
        ):
            width = next(iter(out.resid.values())).shape[1]
            keep = torch.zeros(len(chosen), width, dtype=torch.bool)
            for r, i in enumerate(chosen):
                keep[r, start[i] - p : items[i].length - p] = True
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
    prefixes: PrefixStore | None = None,
) -> Float[Tensor, "prompt layer d"]:
    """The residual stream at one named position of every prompt, at ``layers``."""
    idx = list(range(len(items))) if indices is None else list(indices)
    at = [items[i].tok.positions[position] for i in idx]
    slot = {i: k for k, i in enumerate(idx)}
    out_rows: list[Tensor | None] = [None] * len(idx)
    with torch.inference_mode():
        for chosen, _, out in read_passes(
            backend, items, idx, layers, at, batch_size=batch_size, positions=at, prefixes=prefixes
        ):
            h = torch.stack([out.resid[layer][:, 0].float().cpu() for layer in layers], dim=1)
            for r, i in enumerate(chosen):
                out_rows[slot[i]] = h[r]
    return torch.stack([h for h in out_rows if h is not None])
