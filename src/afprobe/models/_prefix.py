"""Long shared prefixes, computed once: the system prompt is the same token run at the start of every prompt that
uses it (thousands of tokens with the paper's prompt files), so its KV cache is computed once and every batch of
those prompts continues from a view of it.

- :func:`plan_prefixes` picks, for each row, the length of the prefix it shares with the other rows of its group
  (rows with the same key, e.g. the same system text): the group's longest common token prefix, capped so that
  every row keeps at least one token of its own (and, with ``limits``, stops before the first token a caller must
  read or edit there).
- :func:`prefix_batches` forms batches that each hold one prefix.
- :class:`PrefixStore` computes the unedited KV cache of each prefix once (batch 1) and hands out views with as
  many rows as a batch needs (:func:`select_cache`); the stored cache itself is never extended.

A pass that continues from a prefix cache of length ``P`` runs the rows' remaining tokens with an attention mask
covering ``P + suffix`` columns and position ids counting from ``P``: the same numbers as the whole rows in one
pass, up to float rounding (tested to 1e-4 in fp32).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from afprobe.models._attention import DynamicLayer, SharedPrefixLayer, materialize_shared
from afprobe.models._backend import Backend

MIN_PREFIX = 32  # shorter shared prefixes are not worth a separate pass


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row starts with."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


def plan_prefixes(
    rows: Sequence[Sequence[int]],
    keys: Sequence[Hashable] | None = None,
    limits: Sequence[int] | None = None,
    min_len: int = MIN_PREFIX,
) -> list[int]:
    """The shared-prefix length of every row (0: none).

    Rows are grouped by ``keys`` (default: their first ``min_len`` tokens); a group of two or more rows shares its
    longest common prefix, cut to at most ``len(row) - 1`` and to ``limits[i]`` (the first token row ``i`` needs
    outside the prefix) for every row of the group. Shorter than ``min_len``: not shared."""
    groups: dict[Hashable, list[int]] = {}
    for i, r in enumerate(rows):
        key = keys[i] if keys is not None else tuple(r[:min_len])
        groups.setdefault(key, []).append(i)
    out = [0] * len(rows)
    for members in groups.values():
        if len(members) < 2:
            continue
        p = common_prefix_len([rows[i] for i in members])
        p = min([p, *(len(rows[i]) - 1 for i in members)])
        if limits is not None:
            p = min([p, *(int(limits[i]) for i in members)])
        if p >= min_len:
            for i in members:
                out[i] = p
    return out


def prefix_batches(
    rows: Sequence[Sequence[int]], plan: Sequence[int], batch_size: int, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """Row indices in batches of at most ``batch_size``, each holding rows of one shared prefix only (``plan``:
    each row's prefix length, 0 for none) and, within it, rows of similar length (``lengths``, default the rows'
    own): a batch across two prefixes would have to run its rows whole."""
    size = [len(r) for r in rows] if lengths is None else list(lengths)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: (size[i], i)):
        groups.setdefault(tuple(rows[i][: plan[i]]), []).append(i)
    return [g[b : b + batch_size] for g in groups.values() for b in range(0, len(g), batch_size)]


def prompt_keys(prompts: Sequence[Any]) -> list[Hashable] | None:
    """The grouping key of tokenized prompts: their system text (None when a prompt carries none)."""
    keys: list[Hashable] = []
    for t in prompts:
        p = getattr(t, "prompt", None)
        text = getattr(p, "system_text", None)
        if text is None:
            return None
        keys.append(text)
    return keys


def select_cache(
    cache: Any, rows: Tensor, below: tuple[int, Tensor] | None = None, length: int | None = None
) -> Any:
    """A cache holding the batch rows ``rows`` (in that order; repeats allowed), cut to its first ``length``
    tokens when given; the original is left intact. ``below=(block, other)``: the blocks before ``block`` take
    the rows ``other`` instead (a fanned-out pass, see ``Backend.run``).

    The rows of a dynamic cache are views where they can be (one row repeated: an expanded view; every row in
    order: the same tensors), not copies: a dynamic cache never writes into its tensors (each step concatenates
    into new ones), so the original stays intact, and a 4,000-token prefix is not copied once per batch."""

    def pick(i: int) -> Tensor:
        return below[1] if below is not None and i < below[0] else rows

    def cut(t: Tensor) -> Tensor:
        return t if length is None else t[..., :length, :]

    if isinstance(cache, tuple):
        return tuple(
            tuple(cut(_gather_rows(t, pick(i).to(t.device))) for t in layer) for i, layer in enumerate(cache)
        )
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    for i, layer in enumerate(new.layers):
        if SharedPrefixLayer is not None and isinstance(layer, SharedPrefixLayer):
            new.layers[i] = _select_shared(layer, pick(i).to(layer.device), length)
            continue
        shared = _shared_row(layer, pick(i))
        if shared is not None:  # one row for all: kept once, not once per row (models/_attention.py)
            keys, values = cut(layer.keys[shared : shared + 1]), cut(layer.values[shared : shared + 1])
            new.layers[i] = SharedPrefixLayer(keys, values, int(pick(i).numel()))
            continue
        if type(layer) in _VIEW_SAFE and getattr(layer, "keys", None) is not None and layer.keys.numel() > 0:
            idx = pick(i).to(layer.keys.device)
            layer.keys, layer.values = _gather_rows(layer.keys, idx), _gather_rows(layer.values, idx)
        else:
            layer.reorder_cache(pick(i))
        if length is not None and getattr(layer, "keys", None) is not None:
            layer.keys, layer.values = cut(layer.keys), cut(layer.values)
    return new


def _select_shared(layer: Any, rows: Tensor, length: int | None) -> Any:
    """The rows ``rows`` of a :class:`SharedPrefixLayer` (its prefix stays the one shared row), cut to its first
    ``length`` tokens when given."""
    pk, pv, keys, values = layer.prefix_keys, layer.prefix_values, layer.keys, layer.values
    p = int(pk.shape[-2])
    if length is not None and length <= p:
        return SharedPrefixLayer(pk[..., :length, :], pv[..., :length, :], int(rows.numel()))
    if layer.own_length:
        keys, values = _gather_rows(keys, rows), _gather_rows(values, rows)
        if length is not None:
            keys, values = keys[..., : length - p, :], values[..., : length - p, :]
    return SharedPrefixLayer(pk, pv, int(rows.numel()), keys, values)


def _shared_row(layer: Any, rows: Tensor) -> int | None:
    """The one row ``rows`` repeats, where a plain dynamic layer can hand it out as a shared prefix row."""
    if SharedPrefixLayer is None or type(layer) is not DynamicLayer or rows.numel() == 0:
        return None
    if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
        return None
    first = int(rows[0])
    return first if bool((rows == first).all()) else None


def _gather_rows(t: Tensor, rows: Tensor) -> Tensor:
    """``t.index_select(0, rows)``, as a view where it can be one, else by advanced indexing (on CPU several
    times faster than ``index_select`` for the long rows of a KV cache)."""
    n = int(rows.numel())
    if n == 0:
        return t[:0]
    first = int(rows[0])
    if bool((rows == first).all()):
        return t[first : first + 1].expand(n, *t.shape[1:])
    if n == t.shape[0] and bool((rows == torch.arange(n, device=rows.device)).all()):
        return t
    return t[rows]


def _view_safe_layers() -> tuple[type, ...]:
    """The cache layer types whose tensors are never written in place (they may hold views)."""
    try:
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    except ImportError:  # older transformers: the legacy tuple caches only
        return ()
    return (DynamicLayer, DynamicSlidingWindowLayer)


_VIEW_SAFE = _view_safe_layers()


def cache_length(cache: Any) -> int:
    if isinstance(cache, tuple):
        return int(cache[0][0].shape[-2])
    return int(cache.get_seq_length())


class PrefixStore:
    """The unedited KV cache of each shared prefix of one backend, computed once (``computed`` counts the
    passes) and handed out per batch as views. A prefix that starts a stored longer one is cut from it, and one that
    extends a stored shorter one continues from it: neither is recomputed from the start."""

    def __init__(self, backend: Backend, max_entries: int = 8):
        self.backend = backend
        self.max_entries = max_entries
        self.computed = 0
        self._caches: dict[tuple[int, ...], Any] = {}

    @property
    def usable(self) -> bool:
        """Whether the backend can continue a pass from a cache (hooks and nnsight can; TransformerLens cannot)."""
        return bool(self.backend.supports_cache) and not self.backend.remote

    def _get(self, tokens: tuple[int, ...]) -> tuple[Any, int | None]:
        if tokens in self._caches:
            return self._caches[tokens], None
        for key, cache in self._caches.items():
            if len(key) > len(tokens) and key[: len(tokens)] == tokens:
                return cache, len(tokens)
        # the longest stored prefix of ``tokens``: continue from it instead of starting over
        base = max(
            (k for k in self._caches if len(k) < len(tokens) and tokens[: len(k)] == k), key=len, default=()
        )
        evict = next((k for k in self._caches if k != base), None)
        if len(self._caches) >= self.max_entries and evict is not None:
            self._caches.pop(evict)
        zero = torch.zeros(1, 1, dtype=torch.long)
        with torch.inference_mode():
            if base:
                out = self.backend.run(
                    torch.tensor([tokens[len(base) :]], dtype=torch.long),
                    torch.ones(1, len(tokens), dtype=torch.long),
                    cache=select_cache(self._caches[base], torch.zeros(1, dtype=torch.long)),
                    use_cache=True,
                    logit_positions=zero,
                    position_ids=torch.arange(len(base), len(tokens))[None],
                )
            else:
                out = self.backend.run(
                    torch.tensor([tokens], dtype=torch.long), use_cache=True, logit_positions=zero
                )
        self.computed += 1
        self._caches[tokens] = materialize_shared(out.cache)  # one plain row, handed out as a shared one
        return self._caches[tokens], None

    def rows(self, tokens: Sequence[int], n: int) -> Any:
        """A fresh cache of the prefix ``tokens`` with ``n`` identical rows (for a batch to continue from)."""
        cache, length = self._get(tuple(int(t) for t in tokens))
        return select_cache(cache, torch.zeros(n, dtype=torch.long), length=length)

    def continue_from(self, tokens: Sequence[int], n: int, end: int) -> dict[str, Any]:
        """``Backend.run`` keywords for a pass of ``n`` rows over columns ``[len(tokens), end)`` that continues
        from the stored prefix ``tokens``: its cache and the position ids counting from its length (the pass's
        inputs, and the token indices it reads or edits, then start at that column)."""
        p = len(tokens)
        return {
            "cache": self.rows(tokens, n),
            "use_cache": True,
            "position_ids": torch.arange(p, end).expand(n, -1),
        }


def continue_mask(prefix_len: int, mask: Tensor) -> Tensor:
    """The attention mask of a pass over ``mask``'s columns that continues from a ``prefix_len``-token cache."""
    ones = torch.ones(mask.shape[0], prefix_len, dtype=mask.dtype, device=mask.device)
    return torch.cat([ones, mask], dim=1)
