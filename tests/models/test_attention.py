"""Attention on CPU: with afprobe's switch, Hugging Face's ``sdpa`` attention hands the key/value heads to PyTorch
(``enable_gqa``) instead of copying them per query head, and a prefix one row shared by the whole batch
(``SharedPrefixLayer``) is attended to as that one row; the same numbers as the copies in both cases."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.integrations import sdpa_attention as sdpa

import afprobe.models._attention as attention
from afprobe.models import make_backend, make_tiny_tokenizer, select_cache, wrap_model
from afprobe.models._attention import SharedPrefixLayer, materialize_shared, use_cpu_gqa


def _gqa_model(attn: str = "sdpa") -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        attn_implementation=attn,
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


def _shared_prefix_pass(model, monkeypatch):  # type: ignore[no-untyped-def]
    """A 30-token prefix handed to 3 rows as one shared row, then each row's own 12 tokens (right-padded: row 1
    has 7, row 2 none) and one more decoding step; the same passes from the prefix copied into every row."""
    backend = make_backend(wrap_model(model, make_tiny_tokenizer(), name="gqa"))
    torch.manual_seed(1)
    prefix = torch.randint(3, 259, (1, 30))
    own = torch.randint(3, 259, (3, 12))
    step = torch.randint(3, 259, (3, 1))
    mask = torch.ones(3, 42, dtype=torch.long)
    mask[1, 37:] = 0
    mask[2, 30:] = 0
    split = {"n": 0}
    inner = attention._split_attention

    def counted(*a, **k):  # type: ignore[no-untyped-def]
        out = inner(*a, **k)
        split["n"] += out is not None
        return out

    monkeypatch.setattr(attention, "_split_attention", counted)
    with torch.inference_mode():
        stored = backend.run(prefix, use_cache=True).cache
        outs = []
        for cache in (select_cache(stored, torch.zeros(3, dtype=torch.long)), None):
            if cache is None:  # the reference: the prefix copied into every row, the plain attention
                cache = materialize_shared(select_cache(stored, torch.zeros(3, dtype=torch.long)))
            a = backend.run(
                own, mask, cache=cache, use_cache=True, position_ids=torch.arange(30, 42).expand(3, -1)
            )
            b = backend.run(
                step,
                torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1),
                cache=a.cache,
                use_cache=True,
                position_ids=torch.full((3, 1), 42),
            )
            outs.append((a, b))
    return outs, split["n"], mask


def test_shared_prefix_is_attended_as_one_row_with_the_same_logits(monkeypatch) -> None:
    model = _gqa_model()
    [(shared, shared_step), (copied, copied_step)], n_split, mask = _shared_prefix_pass(model, monkeypatch)
    assert n_split == 2 * model.config.num_hidden_layers  # every layer of both passes took the split
    keep = mask[:, 30:].bool()
    assert torch.allclose(shared.logits[keep], copied.logits[keep], atol=1e-5)
    assert torch.allclose(shared_step.logits, copied_step.logits, atol=1e-5)
    for layer in shared_step.cache.layers:  # the prefix stayed one row; only the rows' own tokens grew
        assert isinstance(layer, SharedPrefixLayer) and layer.prefix_keys.shape[0] == 1
        assert layer.keys.shape[0] == 3 and layer.own_length == 13
    assert shared_step.cache.get_seq_length() == 43


def test_a_mask_over_the_prefix_or_another_attention_copies_it(monkeypatch) -> None:
    """Where the split does not apply the prefix is copied, with the same numbers: a model on ``eager``
    attention gets plain layers (no split taken)."""
    model = _gqa_model("eager")
    [(shared, shared_step), (copied, copied_step)], n_split, mask = _shared_prefix_pass(model, monkeypatch)
    assert n_split == 0
    keep = mask[:, 30:].bool()
    assert torch.allclose(shared.logits[keep], copied.logits[keep], atol=1e-5)
    assert torch.allclose(shared_step.logits, copied_step.logits, atol=1e-5)


def test_split_declines_a_mask_that_hides_part_of_the_prefix() -> None:
    q = torch.randn(2, 4, 3, 8)
    pk = pv = torch.randn(1, 2, 5, 8)
    k = v = torch.randn(2, 2, 3, 8)
    mask = torch.ones(2, 1, 3, 8, dtype=torch.bool)
    assert attention._split_attention(q, k, v, (pk, pv), mask) is not None
    mask[1, 0, 0, 2] = False
    assert attention._split_attention(q, k, v, (pk, pv), mask) is None


def test_shared_rows_stay_shared_on_cpu_only() -> None:
    """A model whose attention splits keeps shared rows on CPU; elsewhere (here the meta device) and for any
    other attention they become plain layers, the prefix expanded into every row."""
    on_cpu = SharedPrefixLayer(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), rows=3)
    elsewhere = SharedPrefixLayer(
        torch.empty(1, 2, 5, 8, device="meta"), torch.empty(1, 2, 5, 8, device="meta"), 3
    )
    cache = DynamicCache()
    cache.layers = [on_cpu, elsewhere]
    kept = materialize_shared(cache, keep_on_cpu=True)
    assert kept.layers[0] is on_cpu and not isinstance(kept.layers[1], SharedPrefixLayer)
    assert kept.layers[1].keys.shape == (3, 2, 5, 8)
    plain = materialize_shared(cache)
    assert not any(isinstance(x, SharedPrefixLayer) for x in plain.layers)
    assert torch.equal(plain.layers[0].keys[2], on_cpu.prefix_keys[0]) and plain.get_seq_length() == 5
    assert cache.layers == [on_cpu, elsewhere]  # the original is left as it was
