"""The one edit type: a change to the residual stream at one layer, and the operations every runner shares on it
(apply it, find the first token it touches, move it to a pass that starts later, stack several batches' edits).

Layer numbers follow the activation file: layer 0 is the embedding output (the input of block 0), layer ``l`` the
residual stream after block ``l``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

EditOp = Literal["add", "set", "ablate"]


@dataclass(frozen=True)
class Edit:
    """A change to the residual stream at ``layer``.

    - ``add``: ``value`` is ``[d]``, ``[batch, d]`` (broadcast over the selected positions) or ``[batch, k, d]``
      (one vector per index in ``positions``).
    - ``set``: ``value`` is ``[batch, k, d]``, written at ``positions`` ``[batch, k]``.
    - ``ablate``: ``value`` is a direction ``[d]`` or ``[batch, d]``; its component is projected out.

    ``positions`` selects the tokens:
    - ``None``: every token;
    - a long tensor ``[batch, k]``: those token indices;
    - a bool tensor ``[batch, seq]``: a mask;
    - a long tensor ``[batch]``: every token from that index on, including tokens generated later (how steering
      is written: see :func:`afprobe.scenarios.edit_starts` for the one rule that picks the index).

    In a pass that continues from a KV cache, token indices count from the first new token.
    """

    layer: int
    op: EditOp
    value: Tensor
    positions: Tensor | None = None

    @property
    def indexed(self) -> bool:
        """Per-token values or index positions (``[batch, k]``), as opposed to a mask or a start."""
        p = self.positions
        return p is not None and p.dtype != torch.bool and p.ndim == 2

    @property
    def from_start(self) -> bool:
        p = self.positions
        return p is not None and p.dtype != torch.bool and p.ndim == 1


def gather_positions(
    h: Float[Tensor, "batch seq d"], positions: Int[Tensor, "batch k"]
) -> Float[Tensor, "batch k d"]:
    rows = torch.arange(h.shape[0], device=h.device)[:, None]
    return h[rows, positions.to(h.device)]


def apply_edit(h: Float[Tensor, "batch seq d"], edit: Edit) -> Float[Tensor, "batch seq d"]:
    """Return ``h`` with ``edit`` applied (out of place, so autograd and nnsight both see a new value)."""
    v = edit.value.to(device=h.device, dtype=h.dtype)
    pos = edit.positions
    if edit.op == "set" or (edit.op == "add" and v.ndim == 3):
        if pos is None or pos.dtype == torch.bool or pos.ndim != 2:
            raise ValueError(f"{edit.op} with per-position values needs index positions [batch, k]")
        rows = torch.arange(h.shape[0], device=h.device)[:, None].expand_as(pos)
        return h.index_put((rows, pos.to(h.device)), v, accumulate=edit.op == "add")
    mask = _position_mask(h, pos)
    if v.ndim == 1:
        v = v.expand(h.shape[0], -1)
    if edit.op == "add":
        return h + mask * v[:, None, :]
    if edit.op == "ablate":
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        coef = (h * unit[:, None, :]).sum(-1, keepdim=True)
        return h - mask * coef * unit[:, None, :]
    raise ValueError(f"unknown edit op {edit.op!r}")


def _position_mask(h: Tensor, pos: Tensor | None) -> Tensor:
    if pos is None:
        return torch.ones(h.shape[0], h.shape[1], 1, device=h.device, dtype=h.dtype)
    if pos.dtype == torch.bool:
        return pos.to(h.device, h.dtype)[..., None]
    if pos.ndim == 1:
        cols = torch.arange(h.shape[1], device=h.device)[None, :]
        return (cols >= pos.to(h.device)[:, None]).to(h.dtype)[..., None]
    mask = torch.zeros(h.shape[0], h.shape[1], device=h.device, dtype=h.dtype)
    mask.scatter_(1, pos.to(h.device), 1.0)
    return mask[..., None]


def edit_mask(e: Edit, rows: int, seq_len: int) -> Tensor:
    """The bool ``[rows, seq_len]`` mask of the tokens ``e`` touches (on the CPU)."""
    pos = e.positions
    if pos is None:
        return torch.ones(rows, seq_len, dtype=torch.bool)
    pos = pos.to("cpu")
    if pos.dtype == torch.bool:
        return pos
    if pos.ndim == 1:
        return torch.arange(seq_len)[None, :] >= pos[:, None]
    m = torch.zeros(rows, seq_len, dtype=torch.bool)
    m.scatter_(1, pos, True)
    return m


def first_edited(e: Edit, seq_len: int) -> int:
    """The first token ``e`` touches in any row (``seq_len`` if none)."""
    pos = e.positions
    if pos is None:
        return 0
    if pos.dtype == torch.bool:
        cols = pos.any(0).nonzero()
        return int(cols[0]) if len(cols) else seq_len
    return min(int(pos.min()), seq_len) if pos.numel() else seq_len


def shift_edit(e: Edit, s: int) -> Edit:
    """The same edit for a pass that starts at token ``s`` (the tokens before it come from a KV cache)."""
    if s == 0:
        return e
    if e.positions is None:
        raise ValueError("an edit on every position cannot skip a prefix")
    pos = e.positions[:, s:] if e.positions.dtype == torch.bool else e.positions - s
    return Edit(e.layer, e.op, e.value, pos)


def stack_edits(blocks: Sequence[Sequence[Edit]], rows: int, seq_len: int) -> list[Edit]:
    """Edits for ``len(blocks)`` copies of a ``rows``-row batch stacked along the batch dimension: block ``b``'s
    edits act on rows ``b * rows ... (b + 1) * rows - 1`` only. Edits of one kind at one layer from different
    blocks merge into one; the merged edits keep every block's own order at each layer (an ``ablate`` then an
    ``add`` at one layer, as in mean ablation, stays in that order). ``set`` edits cannot be stacked (write them
    as an ``add`` of the difference)."""
    slots: dict[tuple[int, str, bool, int], list[tuple[int, Edit]]] = {}
    after: dict[tuple[int, str, bool, int], set[tuple[int, str, bool, int]]] = {}
    for b, edits in enumerate(blocks):
        seen: Counter[tuple[int, str, bool]] = Counter()
        prev: dict[int, tuple[int, str, bool, int]] = {}
        for e in edits:
            if e.op == "set":
                raise ValueError("set edits cannot be stacked: use an add of (new - old)")
            indexed = e.op == "add" and e.value.ndim == 3
            key = (e.layer, e.op, indexed)
            slot = (*key, seen[key])
            slots.setdefault(slot, []).append((b, e))
            after.setdefault(slot, set())
            if e.layer in prev:
                after[slot].add(prev[e.layer])
            prev[e.layer] = slot
            seen[key] += 1
    total = len(blocks) * rows
    return [_merge(slot, slots[slot], total, rows, seq_len) for slot in _ordered(list(slots), after)]


def _ordered(
    slots: list[tuple[int, str, bool, int]],
    after: dict[tuple[int, str, bool, int], set[tuple[int, str, bool, int]]],
) -> list[tuple[int, str, bool, int]]:
    """``slots`` in first-seen order, moved only as far as each block's own order at a layer requires."""
    out: list[tuple[int, str, bool, int]] = []
    todo = list(slots)
    while todo:
        ready = next((s for s in todo if after[s] <= set(out)), None)
        if ready is None:
            raise ValueError(
                "the settings order the same edits differently at one layer: they cannot share a pass"
            )
        out.append(ready)
        todo.remove(ready)
    return out


def _merge(
    slot: tuple[int, str, bool, int], members: list[tuple[int, Edit]], total: int, rows: int, seq_len: int
) -> Edit:
    layer, op, indexed, _ = slot
    d = members[0][1].value.shape[-1]
    if not indexed:
        value = torch.zeros(total, d)
        mask = torch.zeros(total, seq_len, dtype=torch.bool)
        for b, e in members:
            v = e.value.detach().to("cpu", torch.float32)
            value[b * rows : (b + 1) * rows] = v.expand(rows, d) if v.ndim == 1 else v
            mask[b * rows : (b + 1) * rows] = edit_mask(e, rows, seq_len)
        return Edit(layer, op, value, mask)  # type: ignore[arg-type]
    k = max(int(e.value.shape[1]) for _, e in members)
    fill = max(int(e.positions.max()) for _, e in members if e.positions is not None)  # keeps the prefix free
    pos = torch.full((total, k), fill, dtype=torch.long)
    vals = torch.zeros(total, k, d)
    for b, e in members:
        assert e.positions is not None
        kk = int(e.value.shape[1])
        pos[b * rows : (b + 1) * rows, :kk] = e.positions.to("cpu")
        vals[b * rows : (b + 1) * rows, :kk] = e.value.detach().to("cpu", torch.float32)
    return Edit(layer, "add", vals, pos)
