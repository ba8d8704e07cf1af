"""Padding token-id rows into batches: right-padded for scoring and caching, left-padded for generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"]]:
    """``input_ids`` and ``attention_mask`` with every row starting at column 0."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"], Int[Tensor, "b s"]]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` (0 at each row's first real token) with every row
    ending at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)
