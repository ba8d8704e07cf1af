"""Grouped-query attention on CPU without copying the keys.

Hugging Face's ``sdpa`` attention repeats each key/value head for its query heads (``repeat_kv``, a copy of the
whole KV cache per layer and pass) whenever an attention mask is given, because CUDA's fast kernels refuse masked
grouped-query attention. PyTorch's CPU kernel takes ``enable_gqa`` with a mask and gives the same numbers, so on
CPU afprobe asks for it: with a 4,000-token system prompt shared by a batch, the copies were most of the time of
a pass that continues from it (``benchmarks/bench_prefix.py``). Other devices keep Hugging Face's rule.
"""

from __future__ import annotations

from typing import Any

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
