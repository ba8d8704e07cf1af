"""Grouped-query attention on CPU without copying the keys.

Hugging Face's ``sdpa`` attention repeats each key/value head for its query heads (``repeat_kv``, a copy of the
whole KV cache per layer and pass) whenever an attention mask is given, because CUDA's fast kernels refuse masked
grouped-query attention. PyTorch's CPU kernel takes ``enable_gqa`` with a mask and gives the same numbers, so on
CPU afprobe asks for it: with a 4,000-token system prompt shared by a batch, the copies were most of the time of
a pass that continues from it (``benchmarks/bench_prefix.py``). Other devices keep Hugging Face's rule.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

_MARK = "_afprobe_cpu_gqa"


def use_cpu_gqa() -> bool:
    """Make Hugging Face's ``sdpa`` attention use ``enable_gqa`` on CPU tensors (idempotent). False when this
    transformers has no such switch (then nothing changes)."""
    try:
        from transformers.integrations import sdpa_attention as sdpa
    except ImportError:  # pragma: no cover - transformers without the sdpa integration
        return False
    rule = getattr(sdpa, "use_gqa_in_sdpa", None)
    if rule is None:
        return False
    if getattr(rule, _MARK, False):
        return True

    def cpu_or_rule(attention_mask: Any, key: Any, value: Any) -> bool:
        if key.device.type == "cpu" and key.shape[-1] == value.shape[-1]:
            return True
        return bool(rule(attention_mask, key, value))

    setattr(cpu_or_rule, _MARK, True)
    sdpa.use_gqa_in_sdpa = cpu_or_rule
    return True


# --- one prefix row shared by the whole batch -----------------------------------------------------------------
#
# A batch continuing from a stored system prompt (``PrefixStore``) holds that prompt's keys and values once, as
# one row every row of the batch shares. Hugging Face's dynamic cache would concatenate the new tokens onto a
# copy of that row per batch row and layer (~0.2 GB per batch and pass for a 4,000-token prompt at SmolLM2's
# shape), and its attention would read every copy. A :class:`SharedPrefixLayer` keeps the prefix as the one row
# and only the rows' own tokens per row; the ``sdpa`` attention splits over the two (Hydragen, Juravsky et al.
# 2024): every row's queries against the prefix in one call (no copy, no mask), the rows' own tokens with their
# mask, the two results merged by their log-sum-exp. The same numbers up to float rounding (tested to 1e-5).

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - transformers without cache layers: prefixes are plain expanded views
    DynamicLayer = None

_SHARED = "_afprobe_shared_prefix"  # attribute of the own keys an update returns: the prefix's (keys, values)
_PATCHED = "_afprobe_prefix_sdpa"


if DynamicLayer is not None:

    class SharedPrefixLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        """A dynamic cache layer of ``rows`` rows whose first ``P`` tokens are one row they all share
        (``prefix_keys`` ``[1, kv_heads, P, d]``) and whose later tokens are each row's own (``keys``)."""

        def __init__(
            self, prefix_keys: Any, prefix_values: Any, rows: int, keys: Any = None, values: Any = None
        ):
            super().__init__()
            self.prefix_keys, self.prefix_values, self.rows = prefix_keys, prefix_values, rows
            self.device = prefix_keys.device
            empty = prefix_keys.new_empty(0)
            self.keys = empty if keys is None else keys
            self.values = empty if values is None else values
            self.is_initialized = True

        @property
        def own_length(self) -> int:
            return 0 if self.keys.numel() == 0 else int(self.keys.shape[-2])

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            self.rows = int(key_states.shape[0])
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            setattr(keys, _SHARED, (self.prefix_keys, self.prefix_values))
            return keys, values

        def get_seq_length(self) -> int:
            return int(self.prefix_keys.shape[-2]) + self.own_length

        def materialized(self) -> Any:
            """The same cache as a plain dynamic layer (the prefix copied into every row)."""
            layer = DynamicLayer()
            layer.lazy_initialization(self.prefix_keys, self.prefix_values)
            expand = (self.rows, *self.prefix_keys.shape[1:])
            layer.keys = self.prefix_keys.expand(expand)
            layer.values = self.prefix_values.expand(expand)
            if self.keys.numel():
                layer.keys = torch.cat([layer.keys, self.keys], dim=-2)
                layer.values = torch.cat([layer.values, self.values], dim=-2)
            return layer

        def reorder_cache(self, beam_idx: Any) -> None:
            if self.keys.numel():
                self.keys = self.keys.index_select(0, beam_idx.to(self.keys.device))
                self.values = self.values.index_select(0, beam_idx.to(self.values.device))
            self.rows = int(beam_idx.numel())

        def batch_select_indices(self, indices: Any) -> None:
            self.reorder_cache(torch.as_tensor(indices, device=self.device).reshape(-1))

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.keys.numel():
                self.keys = self.keys.repeat_interleave(repeats, dim=0)
                self.values = self.values.repeat_interleave(repeats, dim=0)
            self.rows *= repeats

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0 or -tokens_to_remove > self.own_length:
                raise ValueError("a SharedPrefixLayer crops at most its own tokens (a negative count)")
            super().crop(tokens_to_remove)

else:  # pragma: no cover
    SharedPrefixLayer = None  # type: ignore[assignment, misc]


def takes_shared_prefix(model: Any) -> bool:
    """Whether ``model``'s attention reads a :class:`SharedPrefixLayer` (a Hugging Face model on ``sdpa`` with
    the split installed); for any other, such layers are materialized before the pass (:func:`materialize_shared`)."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover
        return False
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    # remote code may not use the attention registry
    ours = type(model).__module__.startswith("transformers.")
    return ours and impl == "sdpa" and bool(getattr(ALL_ATTENTION_FUNCTIONS.get("sdpa"), _PATCHED, False))


def materialize_shared(cache: Any, keep_on_cpu: bool = False) -> Any:
    """``cache`` with every :class:`SharedPrefixLayer` turned into a plain layer (for an attention without the
    split; ``keep_on_cpu``: except those on CPU, where the split runs); other caches unchanged. Elsewhere a plain
    layer is the faster one: its first pass copies the prefix once and generation writes into reserved room
    (``models/_generate.reserve``), where a shared layer would copy the prefix again for every pass."""
    layers = getattr(cache, "layers", None)
    if SharedPrefixLayer is None or layers is None:
        return cache

    def plain(x: Any) -> bool:
        return isinstance(x, SharedPrefixLayer) and not (keep_on_cpu and x.device.type == "cpu")

    if not any(plain(x) for x in layers):
        return cache
    new = copy.copy(cache)
    new.layers = [x.materialized() if plain(x) else x for x in layers]
    return new


def use_prefix_attention() -> bool:
    """Make Hugging Face's ``sdpa`` attention split over a :class:`SharedPrefixLayer` (idempotent; every other
    call goes to the original unchanged). False when this transformers has no attention registry."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover
        return False
    original = ALL_ATTENTION_FUNCTIONS.get("sdpa")
    if original is None or SharedPrefixLayer is None:
        return False
    if getattr(original, _PATCHED, False):
        return True

    def sdpa(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any
    ) -> Any:
        shared = getattr(key, _SHARED, None)
        if shared is None:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        split = _split_attention(query, key, value, shared, attention_mask, *args, **kwargs)
        if split is not None:
            return split, None
        pk, pv = shared  # something the split does not do: the plain attention over a materialized prefix
        shape = (key.shape[0], *pk.shape[1:])
        key = torch.cat([pk.expand(shape), key], dim=-2)
        value = torch.cat([pv.expand(shape), value], dim=-2)
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    setattr(sdpa, _PATCHED, True)
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
    return True


def _split_attention(
    query: Any,
    key: Any,
    value: Any,
    shared: tuple[Any, Any],
    mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Any = None,
    **kwargs: Any,
) -> Any:
    """Attention of ``query`` ``[B, H, Q, d]`` over the shared prefix then the rows' own ``key``/``value``
    ``[B, kv, T, d]``, as ``[B, Q, H, d]`` (Hugging Face's layout); None where the split does not apply (a mask
    that hides part of the prefix, dropout, a position bias, a softcap, sliding windows, another device, or a
    pass that needs gradients: the kernel's log-sum-exp has none, so the merge would not differentiate)."""
    pk, pv = shared
    b, h, q, d = query.shape
    kv, p, t = int(pk.shape[1]), int(pk.shape[-2]), int(key.shape[-2])
    if (
        query.device.type != "cpu"
        or (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))
        or dropout
        or position_bias is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("sliding_window") is not None
        or h % kv
        or (mask is not None and (mask.dtype != torch.bool or not bool(mask[..., :p].all())))
    ):
        return None
    r = h // kv
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    # the prefix: one call, every row's queries (grouped by their key head) against the one row, no mask
    qp = query.reshape(b, kv, r * q, d).transpose(0, 1).reshape(1, kv, b * r * q, d)
    out_p, lse_p = flash(qp, pk, pv, scale=scaling)
    out_p = out_p.reshape(kv, b, r * q, d).transpose(0, 1)
    lse_p = lse_p.reshape(kv, b, r * q).transpose(0, 1)
    # the rows' own tokens, with their mask (causal, counted from the end when the model passed none)
    own = mask[..., p:] if mask is not None else None
    if own is None and q > 1:
        own = torch.ones(q, t, dtype=torch.bool, device=query.device).tril(t - q)[None, None]
    extra: dict[str, Any] = {}
    if own is not None:
        own = own.expand(own.shape[0], 1, q, t).repeat(1, 1, r, 1)  # [B or 1, 1, r * Q, T]
        extra["attn_mask"] = torch.zeros(own.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~own, float("-inf")
        )
    out_o, lse_o = flash(query.reshape(b, kv, r * q, d), key, value, scale=scaling, **extra)
    if own is not None:  # a query that sees none of its own keys: the kernel gives 0 and log-sum-exp 0
        lse_o = lse_o.masked_fill(~own.any(-1), float("-inf"))
    m = torch.maximum(lse_p, lse_o)
    w_p, w_o = (lse_p - m).exp(), (lse_o - m).exp()
    out = (out_p.float() * w_p[..., None] + out_o.float() * w_o[..., None]) / (w_p + w_o)[..., None]
    return out.to(query.dtype).reshape(b, h, q, d).transpose(1, 2).contiguous()
