"""Attribution patching: the first-order (gradient) estimate of every exact patch from one forward and one
backward pass per recipient batch (Nanda 2023; Syed et al. 2023).

The estimate of patching site ``p`` at layer ``L`` is ``(h_donor[L, p] − h_recipient[L, p]) · ∂M/∂h[L, p]`` with the
gradient of the recipient's metric M = log p(accept) − log p(reject), taken at the unpatched recipient run.

The system prompt every recipient of a batch starts with holds no site, so its KV cache is computed once without
gradients (:class:`~afprobe.models.PrefixStore`) and the forward and backward passes run on the tokens after it:
the same estimates (tested), without a backward pass through thousands of system-prompt tokens per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from afprobe._progress import progress_bar
from afprobe.experiments._patching import SPAN, Direction, PatchStore
from afprobe.experiments._rows import make_row_batch
from afprobe.experiments._scoring import continuation_logprobs
from afprobe.models import Backend, Edit, PrefixStore, plan_prefixes, prefix_batches, prompt_keys


def attribution_patching(
    backend: Backend,
    store: PatchStore,
    pairs: Sequence[tuple[int, int]],
    sites: Sequence[str],
    direction: Direction,
    *,
    batch_size: int = 4,
    progress: bool = False,
    share_prefix: bool = True,
    prefixes: PrefixStore | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated shift of the recipient's metric, ``[layer, site, pair]`` over ``store.layers`` (NaN where a site
    does not apply: window and span sites on pairs that are not token-aligned), and ``[layer, site]`` the largest
    donor - recipient difference at each cell (0: the patch changes nothing, the cell is zero by construction).
    ``share_prefix``: the recipients' shared system prompt runs once, without gradients (in ``prefixes``)."""
    layers = store.layers
    recipients = [b if direction == "denoise" else a for a, b in pairs]
    est = np.full((len(layers), len(sites), len(pairs)), np.nan)
    delta_max = np.zeros((len(layers), len(sites)))
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    d = backend.lm.d_model
    prefixes = prefixes if prefixes is not None else PrefixStore(backend)
    toks = [store.items[i].tok for i in recipients]
    plan = [0] * len(recipients)
    if share_prefix and prefixes.usable:
        limits = [_first_site(store, i) for i in recipients]
        plan = plan_prefixes([t.input_ids for t in toks], prompt_keys(toks), limits)
    # batches within one shared prefix (a batch across two system prompts would run the whole prompts through
    # the backward pass); ``est`` keeps the pairs' order
    batches = prefix_batches([t.input_ids for t in toks], plan, batch_size)
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"attribution ({direction})", total=len(recipients))
        for cols in batches:
            chosen = [recipients[k] for k in cols]
            batch = make_row_batch(store.items, chosen, pad_id)
            p = plan[cols[0]]  # columns [0, p) come from the stored prefix (one per batch, by construction)
            seq = batch.seq_len
            pos = torch.arange(seq - p)[None, :].expand(batch.n_rows, seq - p)
            leaves = {layer: torch.zeros(batch.n_rows, seq - p, d, requires_grad=True) for layer in layers}
            kwargs = prefixes.continue_from(toks[cols[0]].input_ids[:p], batch.n_rows, seq) if p else {}
            with torch.enable_grad():
                out = backend.run(
                    batch.input_ids[:, p:],
                    batch.attention_mask,
                    edits=[Edit(layer, "add", leaves[layer], pos) for layer in layers],
                    logit_positions=batch.logit_positions - p,
                    **kwargs,
                )
                assert out.logits is not None
                lp = continuation_logprobs(out.logits, batch.targets, batch.target_mask)
                (lp[0::2] - lp[1::2]).sum().backward()
            for li, layer in enumerate(layers):
                g = leaves[layer].grad
                assert g is not None
                for r, (i, k_pair) in enumerate(zip(chosen, cols, strict=True)):
                    for si, site in enumerate(sites):
                        if not _applies(store, site, layer, i):
                            continue
                        total, biggest = 0.0, 0.0
                        for row in (0, 1):  # the accept and the reject row (their prompts are the same)
                            where, mine = store.site(i, layer, site, row)
                            _, theirs = store.site(store.partner[i], layer, site, row)
                            k = min(len(mine), len(theirs))
                            delta = theirs[:k] - mine[:k]
                            total += float((delta * g[2 * r + row, where[:k] - p]).sum())
                            biggest = max(biggest, float(delta.abs().max()) if k else 0.0)
                        est[li, si, k_pair] = total
                        delta_max[li, si] = max(delta_max[li, si], biggest)
            bar.advance(task, len(chosen))
    return est, delta_max


def _first_site(store: PatchStore, i: int) -> int:
    """The first token of prompt ``i`` any site can patch (the stored prefix must end before it)."""
    tok = store.items[i].tok
    first = min([*tok.positions.values(), store.items[i].length - 1])
    if i in store.win_pos and len(store.win_pos[i]):
        first = min(first, int(store.win_pos[i].min()))
    if i in store.span_start:
        first = min(first, store.span_start[i])
    return max(0, first)


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
