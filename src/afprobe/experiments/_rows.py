"""A batch of prompts as rows for teacher-forced scoring: prompt ``i`` followed by the accept tag (row ``2i``)
and by the reject tag (row ``2i + 1``), right-padded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import right_pad
from afprobe.scenarios import EditStart, edit_start


@dataclass
class RowBatch:
    """``B`` prompts as ``2B`` right-padded rows (accept, reject, accept, reject, ...)."""

    indices: list[int]
    items: list[ScoredPrompt]
    input_ids: Int[Tensor, "rows seq"]
    attention_mask: Int[Tensor, "rows seq"]
    prompt_len: Tensor
    row_prompt: Tensor
    logit_positions: Int[Tensor, "rows k"]
    targets: Int[Tensor, "rows k"]
    target_mask: Bool[Tensor, "rows k"]

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def starts(self, mode: EditStart) -> Tensor:
        """Per row, the first token a steering edit in ``mode`` touches (it then covers every later token, the
        continuation included): the one rule of :func:`afprobe.scenarios.edit_start`."""
        return torch.tensor([edit_start(it.tok, mode) for it in self.items for _ in (0, 1)])

    def per_row(self, x: Tensor) -> Tensor:
        """Expand a per-prompt tensor ``[B, ...]`` to the rows ``[2B, ...]``."""
        return x[self.row_prompt]


def make_row_batch(items: Sequence[ScoredPrompt], indices: Sequence[int], pad_id: int) -> RowBatch:
    """The rows of ``items[indices]``: each prompt with its accept and its reject continuation."""
    chosen = [items[i] for i in indices]
    seqs: list[list[int]] = []
    prompt_len, conts = [], []
    for it in chosen:
        for cont in (it.accept, it.reject):
            seqs.append([*it.tok.input_ids, *cont])
            prompt_len.append(it.length)
            conts.append(list(cont))
    n = len(seqs)
    ids, mask = right_pad(seqs, pad_id)
    k = max(len(c) for c in conts)
    plen = torch.tensor(prompt_len)
    lpos = plen[:, None] - 1 + torch.arange(k)[None, :]
    cont_len = torch.tensor([len(c) for c in conts])
    tmask = torch.arange(k)[None, :] < cont_len[:, None]
    lpos = torch.where(tmask, lpos, plen[:, None] - 1)
    targets = torch.zeros((n, k), dtype=torch.long)
    for r, c in enumerate(conts):
        targets[r, : len(c)] = torch.tensor(c)
    return RowBatch(
        indices=list(indices),
        items=chosen,
        input_ids=ids,
        attention_mask=mask,
        prompt_len=plen,
        row_prompt=torch.arange(len(chosen)).repeat_interleave(2),
        logit_positions=lpos,
        targets=targets,
        target_mask=tmask,
    )
