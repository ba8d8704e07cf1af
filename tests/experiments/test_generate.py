"""Steered generation: the same tokens with and without the KV cache; no edits = Hugging Face's greedy decode."""

from __future__ import annotations

import pytest
import torch

from afprobe.experiments import GenerationEdit, generate, random_unit_vectors, stop_token_ids
from afprobe.models import make_backend


@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
@pytest.mark.parametrize("start", ["all", "from_cue", "generated"])
def test_steered_generation_is_the_same_with_and_without_kv_cache(
    tiny_lm, tiny_items, backend, start
) -> None:
    b = make_backend(tiny_lm, backend)
    toks = [it.tok for it in tiny_items[:3]]  # different prompt lengths in one batch
    u = random_unit_vectors(1, tiny_lm.d_model, 0)[0]
    edits = [GenerationEdit(2, "add", 4.0 * u, start), GenerationEdit(1, "ablate", u, start)]
    kw = {"max_new_tokens": 12, "edits": edits, "batch_size": 3}
    cached = generate(b, toks, use_cache=True, **kw)
    recomputed = generate(b, toks, use_cache=False, **kw)
    plain = generate(b, toks, max_new_tokens=12, batch_size=3)
    assert cached == recomputed
    assert all(len(x) > 0 for x in cached)
    assert cached != plain  # the steering is applied


def test_sampled_generation_is_seeded_and_cache_independent(tiny_lm, tiny_items) -> None:
    b = make_backend(tiny_lm, "hooks")
    toks = [it.tok for it in tiny_items[:2]]
    kw = {"max_new_tokens": 10, "sample": True, "temperature": 1.0, "batch_size": 2}
    a = generate(b, toks, seed=3, use_cache=True, **kw)
    assert a == generate(b, toks, seed=3, use_cache=False, **kw)
    assert a != generate(b, toks, seed=4, use_cache=True, **kw)


def test_unsteered_greedy_matches_hugging_face(tiny_lm, tiny_items) -> None:
    b = make_backend(tiny_lm, "hooks")
    toks = [it.tok for it in tiny_items[:2]]
    ours = generate(b, toks, max_new_tokens=8, batch_size=2)
    for tp, mine in zip(toks, ours, strict=True):
        ids = torch.tensor([tp.input_ids])
        with torch.no_grad():
            ref = tiny_lm.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[
                0, ids.shape[1] :
            ]
        stops = stop_token_ids(tiny_lm.tokenizer)
        expect = []
        for t in ref.tolist():
            if t in stops:
                break
            expect.append(t)
        assert mine == expect
