import pytest
import torch

from afprobe import AfprobeError
from afprobe.models import BACKENDS, Edit, apply_edit, fan_out_start, gather_positions, make_backend

LOCAL = [name for name, cls in BACKENDS.items() if not cls.remote]


def _batch(lm, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # a right-padded row
    pos = torch.tensor([[0, 7, 19], [2, 9, 13], [5, 6, 18]])
    return ids, mask, pos


@pytest.mark.parametrize("backend", LOCAL)
def test_backend_reads_match_hf_hidden_states(tiny_lm, backend: str) -> None:
    ids, mask, pos = _batch(tiny_lm)
    with torch.no_grad():
        ref = tiny_lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        b = make_backend(tiny_lm, backend)
        out = b.run(ids, mask, read_layers=range(tiny_lm.n_layers + 1), read_positions=pos)
        trunk = b.run(ids, mask, read_layers=[0, 1, 2], read_positions=pos, logits=False)
    for layer in range(tiny_lm.n_layers):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(
            out.resid[layer], gather_positions(ref.hidden_states[layer], pos), atol=1e-5, rtol=0
        )
    for layer in (0, 1, 2):
        torch.testing.assert_close(trunk.resid[layer], out.resid[layer], atol=1e-5, rtol=0)
    final = tiny_lm.model.model.norm(out.resid[tiny_lm.n_layers])
    torch.testing.assert_close(final, gather_positions(ref.hidden_states[-1], pos), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=0)
    assert trunk.logits is None


@pytest.mark.parametrize("backend", LOCAL)
def test_edits_add_set_ablate(tiny_lm, backend: str) -> None:
    ids, mask, pos = _batch(tiny_lm)
    b = make_backend(tiny_lm, backend)
    d = torch.randn(tiny_lm.d_model)
    unit = d / d.norm()
    with torch.no_grad():
        base = b.run(ids, mask, read_layers=[1, 2])
        zero = b.run(ids, mask, read_layers=[1, 2], edits=[Edit(1, "add", 0 * d)])
        added = b.run(ids, mask, read_layers=[1], edits=[Edit(1, "add", d, positions=pos)])
        ablated = b.run(ids, mask, read_layers=[2], edits=[Edit(2, "ablate", d)])
        donor = torch.randn(3, 3, tiny_lm.d_model)
        setted = b.run(
            ids, mask, read_layers=[2], read_positions=pos, edits=[Edit(2, "set", donor, positions=pos)]
        )
    torch.testing.assert_close(zero.logits, base.logits, atol=1e-5, rtol=0)
    delta = added.resid[1] - base.resid[1]
    torch.testing.assert_close(gather_positions(delta, pos), d.expand(3, 3, -1), atol=1e-5, rtol=0)
    untouched = torch.ones(3, 20, dtype=torch.bool)
    untouched.scatter_(1, pos, False)
    assert delta[untouched].abs().max() < 1e-6
    assert (ablated.resid[2] @ unit).abs().max() < 1e-4
    assert (base.resid[2] @ unit).abs().max() > 1e-2
    torch.testing.assert_close(setted.resid[2], donor, atol=1e-6, rtol=0)
    assert not torch.allclose(added.logits, base.logits)


def test_apply_edit_per_row_values() -> None:
    h = torch.zeros(2, 4, 3)
    v = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])
    out = apply_edit(h, Edit(0, "add", v))
    assert out[0, :, 0].eq(1).all() and out[1, :, 1].eq(2).all() and out[0, :, 1].eq(0).all()
    mask = torch.tensor([[True, False, False, False], [False, False, True, True]])
    out = apply_edit(h, Edit(0, "add", v, positions=mask))
    assert out[0, 0, 0] == 1 and out[0, 1:].abs().sum() == 0 and out[1, 2:, 1].eq(2).all()


def test_layer_out_of_range_is_a_user_error(tiny_lm) -> None:
    b = make_backend(tiny_lm, "hooks")
    ids, mask, _ = _batch(tiny_lm)
    with pytest.raises(AfprobeError, match="layer 9 out of range"):
        b.run(ids, mask, read_layers=[9])


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_embedded_backends_agree_with_hf_to_1e4(embedded_lm, backend: str) -> None:
    from afprobe.models import right_pad
    from afprobe.scenarios import build_pairs, builtin_requests, tokenize_prompts

    toks = tokenize_prompts(
        embedded_lm.tokenizer, build_pairs(builtin_requests()[:2], ["tag"], ["helpful_only"])
    )
    ids, mask = right_pad([t.input_ids for t in toks], embedded_lm.tokenizer.pad_token_id)
    pos = torch.tensor([list(t.positions.values()) for t in toks])
    layers = list(range(embedded_lm.n_layers + 1))
    # Built first: TransformerLens switches the shared HF module to eager attention, and the reference forward
    # should run the same kernels (sdpa vs eager alone differ by ~1e-4 on this model's largest activations).
    b = make_backend(embedded_lm, backend)
    with torch.no_grad():
        ref = embedded_lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        out = b.run(ids, mask, read_layers=layers, read_positions=pos, logits=False)
    for layer in layers[:-1]:
        torch.testing.assert_close(out.resid[layer], gather_positions(ref[layer], pos), atol=1e-4, rtol=0)
    normed = embedded_lm.model.model.norm(out.resid[layers[-1]])
    torch.testing.assert_close(normed, gather_positions(ref[-1], pos), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_fan_out_equals_running_every_copy(tiny_lm, layer: int, backend: str) -> None:
    """Copying the rows at ``layer`` gives what the copies give run in full, with and without a KV cache."""
    ids, mask, pos = _batch(tiny_lm)
    n, rows, d = 3, ids.shape[0], tiny_lm.d_model
    g = torch.Generator().manual_seed(1)
    vals = torch.randn(n * rows, d, generator=g)
    edits = [
        Edit(layer, "add", vals, pos.repeat(n, 1)),
        Edit(2, "ablate", torch.nn.functional.normalize(vals[0], dim=0)),
    ]
    b = make_backend(tiny_lm, backend)
    with torch.no_grad():
        full = b.run(ids.repeat(n, 1), mask.repeat(n, 1), edits=edits, read_layers=[2])
        fan = b.run(ids, mask, edits=edits, read_layers=[2], fan_out=(layer, n))
        torch.testing.assert_close(fan.logits, full.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(fan.resid[2], full.resid[2], atol=1e-5, rtol=0)
        # continue from a prefix cache: 10 tokens cached, the edits on the last 10
        s = 10
        later = [Edit(layer, "add", vals, pos.repeat(n, 1).clamp(min=s) - s), edits[1]]
        prefix = b.run(ids[:, :s], mask[:, :s], use_cache=True).cache
        ref = b.run(
            ids[:, s:].repeat(n, 1),
            mask.repeat(n, 1),
            edits=later,
            cache=_select(prefix, {i: torch.arange(rows).repeat(n) for i in range(tiny_lm.n_layers)}),
        )
        blocks_below = {
            i: torch.arange(rows) if i < fan_out_start(layer) else torch.arange(rows).repeat(n)
            for i in range(tiny_lm.n_layers)
        }
        got = b.run(
            ids[:, s:],
            mask.repeat(n, 1)[:rows],
            edits=later,
            cache=_select(prefix, blocks_below),
            fan_out=(layer, n),
        )
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=0)


def _select(cache, rows_per_layer):
    import copy

    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    for i, layer in enumerate(new.layers):
        layer.reorder_cache(rows_per_layer[i])
    return new


def test_fan_out_is_refused_where_unsupported(tiny_lm) -> None:
    ids, mask, _ = _batch(tiny_lm)
    with pytest.raises(ValueError, match="cannot fan out"):
        make_backend(tiny_lm, "transformer_lens").run(ids, mask, fan_out=(1, 2))
