"""Grouped-query attention on CPU: with afprobe's switch, Hugging Face's ``sdpa`` attention hands the key/value
heads to PyTorch (``enable_gqa``) instead of copying them per query head, with the same numbers."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations import sdpa_attention as sdpa

from afprobe.models import make_tiny_tokenizer, wrap_model
from afprobe.models._attention import use_cpu_gqa


def _gqa_model() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_masked_gqa_runs_without_copies_and_gives_the_same_logits(monkeypatch) -> None:
    model = _gqa_model()
    ids = torch.randint(3, 259, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 25:] = 0  # a padded row: the mask is passed on, the case Hugging Face repeats the heads for
    mask[2, 10:] = 0
    with monkeypatch.context() as m, torch.inference_mode():
        m.setattr(sdpa, "use_gqa_in_sdpa", lambda *_a: False)  # Hugging Face's rule on CPU with a mask
        copied = model(input_ids=ids, attention_mask=mask).logits
    wrap_model(model, make_tiny_tokenizer(), name="gqa")  # installs the switch
    assert use_cpu_gqa() and getattr(sdpa.use_gqa_in_sdpa, "_afprobe_cpu_gqa", False)

    def no_copies(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("repeat_kv called on CPU")

    monkeypatch.setattr(sdpa, "repeat_kv", no_copies)
    with torch.inference_mode():
        native = model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert torch.allclose(native[keep], copied[keep], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_other_devices_keep_the_rule() -> None:
    use_cpu_gqa()
    k = torch.zeros(1, 2, 4, 8, device="cuda")
    assert not sdpa.use_gqa_in_sdpa(torch.ones(1, 1, 4, 4, dtype=torch.bool, device="cuda"), k, k)
