"""Attribution patching: the first-order (gradient) estimate of every exact patch from one forward and one
backward pass per recipient batch (Nanda 2023; Syed et al. 2023).

The estimate of patching site ``p`` at layer ``L`` is ``(h_donor[L, p] − h_recipient[L, p]) · ∂M/∂h[L, p]`` with the
gradient of the recipient's metric M = log p(accept) − log p(reject), taken at the unpatched recipient run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from afprobe._progress import progress_bar
from afprobe.experiments._patching import SPAN, Direction, PatchStore
from afprobe.experiments._rows import make_row_batch
from afprobe.experiments._scoring import continuation_logprobs
from afprobe.models import Backend, Edit


def attribution_patching(
    backend: Backend,
    store: PatchStore,
    pairs: Sequence[tuple[int, int]],
    sites: Sequence[str],
    direction: Direction,
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated shift of the recipient's metric, ``[layer, site, pair]`` over ``store.layers`` (NaN where a site
    does not apply: window and span sites on pairs that are not token-aligned), and ``[layer, site]`` the largest
    donor - recipient difference at each cell (0: the patch changes nothing, the cell is zero by construction)."""
    layers = store.layers
    recipients = [b if direction == "denoise" else a for a, b in pairs]
    est = np.full((len(layers), len(sites), len(pairs)), np.nan)
    delta_max = np.zeros((len(layers), len(sites)))
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    d = backend.lm.d_model
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"attribution ({direction})", total=len(recipients))
        for b0 in range(0, len(recipients), batch_size):
            chosen = recipients[b0 : b0 + batch_size]
            batch = make_row_batch(store.items, chosen, pad_id)
            seq = batch.seq_len
            pos = torch.arange(seq)[None, :].expand(batch.n_rows, seq)
            leaves = {layer: torch.zeros(batch.n_rows, seq, d, requires_grad=True) for layer in layers}
            with torch.enable_grad():
                out = backend.run(
                    batch.input_ids,
                    batch.attention_mask,
                    edits=[Edit(layer, "add", leaves[layer], pos) for layer in layers],
                    logit_positions=batch.logit_positions,
                )
                assert out.logits is not None
                lp = continuation_logprobs(out.logits, batch.targets, batch.target_mask)
                (lp[0::2] - lp[1::2]).sum().backward()
            for li, layer in enumerate(layers):
                g = leaves[layer].grad
                assert g is not None
                for r, i in enumerate(chosen):
                    for si, site in enumerate(sites):
                        if not _applies(store, site, layer, i):
                            continue
                        total, biggest = 0.0, 0.0
                        for row in (0, 1):  # the accept and the reject row (their prompts are the same)
                            where, mine = store.site(i, layer, site, row)
                            _, theirs = store.site(store.partner[i], layer, site, row)
                            k = min(len(mine), len(theirs))
                            delta = theirs[:k] - mine[:k]
                            total += float((delta * g[2 * r + row, where[:k]]).sum())
                            biggest = max(biggest, float(delta.abs().max()) if k else 0.0)
                        est[li, si, b0 + r] = total
                        delta_max[li, si] = max(delta_max[li, si], biggest)
            bar.advance(task, len(chosen))
    return est, delta_max


def _applies(store: PatchStore, site: str, layer: int, i: int) -> bool:
    if (site == SPAN or (site.startswith("cue") and site != "cue")) and i not in store.aligned:
        return False
    return not (site == SPAN and layer not in store.span_layers)


def attribution_matrix(
    est: np.ndarray, pairs: Sequence[tuple[int, int]], clean: np.ndarray, direction: Direction, min_gap: float
) -> tuple[list[list[float | None]], list[list[float]]]:
    """Normalized (0 = paid, 1 = free; ``None`` without a gap) and raw mean estimates, ``[layer][site]``."""
    free = np.array([clean[a] for a, _ in pairs])
    paid = np.array([clean[b] for _, b in pairs])
    norm_m, raw_m = [], []
    for li in range(est.shape[0]):
        nrow: list[float | None] = []
        rrow: list[float] = []
        for si in range(est.shape[1]):
            e = est[li, si]
            keep = np.isfinite(e)
            if not keep.any():
                nrow.append(None)
                rrow.append(float("nan"))
                continue
            raw = float(e[keep].mean())
            gap = float(free[keep].mean() - paid[keep].mean())
            rrow.append(raw)
            if abs(gap) < max(min_gap, 1e-12):
                nrow.append(None)
            else:
                nrow.append(raw / gap + (1.0 if direction == "noise" else 0.0))
        norm_m.append(nrow)
        raw_m.append(rrow)
    return norm_m, raw_m
