"""The engine under every experiment: teacher-forced log-probabilities of the accept and reject prefixes, under
any number of interventions ("settings"), several settings stacked into one forward pass.

A batch of ``B`` prompts becomes ``2B`` rows (:class:`~afprobe.experiments.RowBatch`). A *setting* is a function
of that batch returning the :class:`~afprobe.models.Edit` s to apply; :func:`score_settings` stacks up to
``max_rows`` rows of settings into one pass, each block of rows carrying its own edits
(:func:`afprobe.models.stack_edits`), and, when every edit starts after some token ``s``, runs the unedited prefix
``[0, s)`` once and shares its KV cache. The part of that prefix which every prompt with the same system prompt
starts with (the system prompt, thousands of tokens in the paper's files) is computed once per call, not once
per batch (:class:`afprobe.models.PrefixStore`), and batches are formed within one system prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from rich.progress import Progress
from torch import Tensor

from afprobe._progress import progress_bar
from afprobe.experiments._rows import RowBatch, make_row_batch
from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import (
    MIN_PREFIX,
    Backend,
    Edit,
    PrefixStore,
    fan_out_start,
    first_edited,
    plan_prefixes,
    prefix_batches,
    prompt_keys,
    select_cache,
    shift_edit,
    stack_edits,
)

Setting = Callable[[RowBatch], Sequence[Edit]]


def no_edit(batch: RowBatch) -> list[Edit]:
    """The unpatched, unsteered run."""
    return []


@dataclass
class Scores:
    """Log-probabilities of the accept and reject prefixes, ``[setting, prompt]``."""

    accept: Float[np.ndarray, "setting prompt"]
    reject: Float[np.ndarray, "setting prompt"]

    @property
    def metric(self) -> Float[np.ndarray, "setting prompt"]:
        """log p(accept prefix) − log p(reject prefix)."""
        return self.accept - self.reject


def continuation_logprobs(
    logits: Float[Tensor, "rows k vocab"], targets: Int[Tensor, "rows k"], mask: Bool[Tensor, "rows k"]
) -> Tensor:
    """Sum over the continuation of log p(target token)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.to(logits.device)[..., None])[..., 0]
    return (lp * mask.to(lp.device)).sum(-1)


def score_settings(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    settings: Sequence[Setting],
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 4,
    max_rows: int = 64,
    share_prefix: bool = True,
    prefixes: PrefixStore | None = None,
    progress: bool = False,
    description: str = "scoring",
) -> Scores:
    """Log-probabilities of the accept and reject prefixes of ``items[indices]`` under every setting.

    Up to ``max_rows`` rows (copies of a ``2 × batch_size``-row batch, one per setting) run in one forward pass.
    With ``share_prefix`` the tokens before the first edited one are run once per batch and their KV cache is
    shared by every setting, and the system-prompt prefix those tokens start with is run once per call (or once
    per ``prefixes`` store, when one is passed in): the result is the same, up to float rounding."""
    idx = list(range(len(items))) if indices is None else list(indices)
    n_set = len(settings)
    acc = np.zeros((n_set, len(idx)))
    rej = np.zeros((n_set, len(idx)))
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    store = prefixes if prefixes is not None else PrefixStore(backend)
    rows = [items[i].tok.input_ids for i in idx]
    plan = plan_prefixes(rows, prompt_keys([items[i].tok for i in idx])) if share_prefix else [0] * len(idx)
    # batches within one shared prefix, of similar length: less padding, and a per-batch prefix that is nearly
    # each row's own
    batches = prefix_batches(rows, plan, batch_size, [items[i].length for i in idx])
    with progress_bar(progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task(description, total=len(batches) * n_set)
        for cols in batches:
            batch = make_row_batch(items, [idx[c] for c in cols], pad_id)
            shared = tuple(rows[cols[0]][: plan[cols[0]]]) if store.usable else ()
            lp_acc, lp_rej = _score_batch(
                backend, batch, settings, max_rows, share_prefix, bar, task, (store, shared)
            )
            acc[:, cols] = lp_acc
            rej[:, cols] = lp_rej
    return Scores(acc, rej)


def _score_batch(
    backend: Backend,
    batch: RowBatch,
    settings: Sequence[Setting],
    max_rows: int,
    share_prefix: bool,
    bar: Progress,
    task: Any,
    shared: tuple[PrefixStore, tuple[int, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    rows, seq = batch.n_rows, batch.seq_len
    blocks = [list(setting(batch)) for setting in settings]
    width = int(batch.prompt_len.max())
    staged = (
        share_prefix
        and backend.supports_cache
        and all(_prompt_only(e, width) for block in blocks for e in block)
    )
    per_pass = max(1, max_rows // rows)
    out_acc = np.zeros((len(settings), rows // 2))
    out_rej = np.zeros((len(settings), rows // 2))
    if not staged:  # edits in the continuation: whole rows per pass, after the stored system prompt
        first = min((first_edited(e, seq) for block in blocks for e in block), default=seq)
        usable = share_prefix and shared is not None and MIN_PREFIX <= len(shared[1]) <= first
        for c0 in range(0, len(settings), per_pass):
            chunk = blocks[c0 : c0 + per_pass]
            lp = _single_pass(
                backend, batch, stack_edits(chunk, rows, seq), len(chunk), shared if usable else None
            )
            out_acc[c0 : c0 + len(chunk)], out_rej[c0 : c0 + len(chunk)] = lp[..., 0], lp[..., 1]
            bar.advance(task, len(chunk))
        return out_acc, out_rej
    first = min((first_edited(e, seq) for block in blocks for e in block), default=seq)
    s = max(0, min(first, int(batch.prompt_len.min()) - 1))
    chunks = _chunks_by_layer(blocks, per_pass, backend.n_layers)
    if len(chunks) == 1 and shared is not None and MIN_PREFIX <= len(shared[1]) < s:
        # one pass: nothing to share between passes beyond the stored system-prompt prefix, so stage A starts
        # where it ends (one pass over the batch's KV cache fewer)
        s = len(shared[1])
    prefix = None
    if s > 0:  # the unedited prefix, once per prompt, from the system-prompt prefix every prompt shares
        prefix = _batch_prefix(backend, batch, s, shared)
    for chosen in chunks:
        chunk = [blocks[i] for i in chosen]
        fan = min((e.layer for block in chunk for e in block), default=backend.n_layers)
        lp = _staged_pass(
            backend,
            batch,
            stack_edits(chunk, rows, seq),
            len(chunk),
            s,
            prefix,
            fan if backend.supports_fan_out else None,
        )
        out_acc[chosen], out_rej[chosen] = lp[..., 0], lp[..., 1]
        bar.advance(task, len(chunk))
    return out_acc, out_rej


def _batch_prefix(
    backend: Backend, batch: RowBatch, s: int, shared: tuple[PrefixStore, tuple[int, ...]] | None
) -> Any:
    """The KV cache of tokens ``[0, s)`` of every prompt of the batch (one row each): continued from the stored
    cache of the prefix the batch's prompts share when it is long enough, else run whole."""
    even = slice(0, batch.n_rows, 2)
    nb = batch.n_rows // 2
    zero = torch.zeros(nb, 1, dtype=torch.long)
    store, tokens = shared if shared is not None else (None, ())
    p = min(len(tokens), s)
    if store is None or p < MIN_PREFIX:
        return backend.run(
            batch.input_ids[even, :s], batch.attention_mask[even, :s], use_cache=True, logit_positions=zero
        ).cache
    if p == s:
        return store.rows(tokens[:p], nb)
    return backend.run(
        batch.input_ids[even, p:s],
        batch.attention_mask[even, :s],
        logit_positions=zero,
        **store.continue_from(tokens[:p], nb, s),
    ).cache


def _chunks_by_layer(blocks: Sequence[Sequence[Edit]], per_pass: int, n_layers: int) -> list[list[int]]:
    """Settings in passes of at most ``per_pass``, each pass holding settings that first edit the same layer (the
    blocks below it then run once for the whole pass)."""
    groups: dict[int, list[int]] = {}
    for i, block in enumerate(blocks):
        groups.setdefault(min((e.layer for e in block), default=n_layers), []).append(i)
    return [g[c : c + per_pass] for _, g in sorted(groups.items()) for c in range(0, len(g), per_pass)]


def _prompt_only(e: Edit, width: int) -> bool:
    """Masked and from-start edits can be split between the stages; indexed ones must stay inside the prompt."""
    if e.positions is None or not e.indexed:
        return True
    return int(e.positions.max()) < width


def _single_pass(
    backend: Backend,
    batch: RowBatch,
    edits: list[Edit],
    n: int,
    shared: tuple[PrefixStore, tuple[int, ...]] | None = None,
) -> np.ndarray:
    """Every row in full (prompt and continuation), ``n`` stacked copies: ``[n, B, 2]`` log-probabilities. With
    ``shared`` (a stored prefix no edit reaches into), the rows continue from its KV cache."""
    p = len(shared[1]) if shared is not None else 0
    kwargs: dict[str, Any] = {}
    if shared is not None:
        kwargs = shared[0].continue_from(shared[1], n * batch.n_rows, batch.seq_len)
    out = backend.run(
        batch.input_ids.repeat(n, 1)[:, p:],
        batch.attention_mask.repeat(n, 1),
        edits=[shift_edit(e, p) for e in edits],
        logit_positions=batch.logit_positions.repeat(n, 1) - p,
        **kwargs,
    )
    assert out.logits is not None
    lp = continuation_logprobs(out.logits, batch.targets.repeat(n, 1), batch.target_mask.repeat(n, 1))
    return lp.view(n, batch.n_rows // 2, 2).cpu().numpy()


def _staged_pass(
    backend: Backend, batch: RowBatch, edits: list[Edit], n: int, s: int, prefix: Any, fan: int | None = None
) -> np.ndarray:
    """Stage A: each prompt once per copy, from token ``s`` (earlier tokens from the ``prefix`` cache), edited;
    it gives the first continuation token's logits. Stage B: both continuations from stage A's cache. With
    ``fan`` (the lowest edited layer), both stages run the blocks below it once for all ``n`` copies."""
    rows, nb = batch.n_rows, batch.n_rows // 2
    m = n if fan is None else 1  # copies fed in (a fanned-out pass makes the n copies at layer ``fan``)
    fan_out = None if fan is None else (fan, n)
    plen = batch.prompt_len[0::2]  # [B]
    width = int(plen.max())
    # stage A: rows (copy c, prompt b) = stacked rows c * 2B + 2b
    rows_a = (torch.arange(n)[:, None] * rows + torch.arange(0, rows, 2)[None, :]).reshape(-1)
    prompt_ids = torch.where(
        torch.arange(width)[None, :] < plen[:, None], batch.input_ids[0::2, :width], batch.input_ids[0, 0]
    )
    prompt_mask = (torch.arange(width)[None, :] < plen[:, None]).long()
    kwargs: dict[str, Any] = {"use_cache": True, "fan_out": fan_out}
    if prefix is not None:
        below = None if fan is None else (fan_out_start(fan), torch.arange(nb))
        kwargs["cache"] = select_cache(prefix, torch.arange(nb).repeat(n), below)
    out_a = backend.run(
        prompt_ids[:, s:].repeat(m, 1),
        prompt_mask.repeat(m, 1),
        edits=[_remap_prompt(e, rows_a, s, width) for e in edits],
        logit_positions=(plen - 1 - s).repeat(n)[:, None],
        position_ids=torch.arange(s, width).expand(m * nb, -1),
        **kwargs,
    )
    assert out_a.logits is not None
    targets = batch.targets.repeat(n, 1)
    tmask = batch.target_mask.repeat(n, 1)
    first = torch.log_softmax(out_a.logits[:, 0].float(), -1).repeat_interleave(2, dim=0)  # b -> 2b, 2b+1
    lp = first.gather(-1, targets[:, :1].to(first.device))[:, 0]
    k = int(batch.targets.shape[1])
    if k > 1:
        # continuation columns in the batch's coordinates
        cols = batch.prompt_len.repeat(n)[:, None] + torch.arange(k)[None, :]
        ids_b = torch.where(tmask, targets, batch.input_ids[0, 0])[: m * rows]
        below = None if fan is None else (fan_out_start(fan), torch.arange(nb).repeat_interleave(2))
        out_b = backend.run(
            ids_b,
            torch.cat(
                [prompt_mask.repeat(m, 1).repeat_interleave(2, dim=0), tmask[: m * rows].long()], dim=1
            ),
            edits=[e for e in (_remap_continuation(e, cols, tmask) for e in edits) if e is not None],
            logit_positions=torch.arange(k - 1).expand(n * rows, -1),
            position_ids=cols[: m * rows],
            cache=select_cache(out_a.cache, torch.arange(n * nb).repeat_interleave(2), below),
            use_cache=True,
            fan_out=fan_out,
        )
        assert out_b.logits is not None
        lp = lp + continuation_logprobs(out_b.logits, targets[:, 1:], tmask[:, 1:])
    return lp.view(n, nb, 2).cpu().numpy()


def _remap_prompt(e: Edit, rows: Tensor, s: int, width: int) -> Edit:
    """``e`` on stage A: batch rows ``rows`` and the prompt columns ``[s, width)``."""
    value = e.value[rows] if e.value.ndim >= 2 else e.value
    if e.positions is None:
        return Edit(e.layer, e.op, value, None)
    if e.positions.dtype == torch.bool:
        return Edit(e.layer, e.op, value, e.positions[rows, s:width])
    return Edit(e.layer, e.op, value, e.positions[rows] - s)


def _remap_continuation(e: Edit, cols: Tensor, valid: Tensor) -> Edit | None:
    """``e`` on stage B: every row, at its continuation columns ``cols`` ``[rows, k]``; indexed edits (prompt
    tokens only) have nothing there."""
    if e.positions is not None and e.positions.dtype != torch.bool:
        return None
    if e.positions is None:
        return Edit(e.layer, e.op, e.value, valid)
    mask = e.positions.gather(1, cols.clamp(max=e.positions.shape[1] - 1))
    return Edit(e.layer, e.op, e.value, mask & valid)
