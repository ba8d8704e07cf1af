"""Long shared prefixes computed once: the plan, the store (cut from a longer prefix, continued from a shorter
one), and the same numbers to 1e-4 with and without the store in generation, the compliance metric (edited
passes included) and the activation cache, with the prefix computed once per system prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.experiments import make_subject, no_edit, score_settings
from afprobe.models import Edit, PrefixStore, generate, make_backend, plan_prefixes
from afprobe.models._attention import SharedPrefixLayer, materialize_shared
from afprobe.scenarios import ScenarioConfig, build_scenario


class NoStore(PrefixStore):
    @property
    def usable(self) -> bool:
        return False


def n_systems(toks) -> int:
    return len({t.prompt.system_text for t in toks})


@pytest.fixture
def subject(tiny_lm):
    cfg = ScenarioConfig(limit=3, system_prompts=["helpful_only", "neutral"], cue_formats=["tag", "json"])
    return make_subject(tiny_lm, build_scenario(cfg))


def test_plan_groups_caps_and_limits() -> None:
    a, b, c = [1] * 40 + [2, 3], [1] * 40 + [4], [9] * 40
    assert plan_prefixes([a, b, c]) == [40, 40, 0]  # c has no partner
    assert plan_prefixes([a, b], limits=[35, 50]) == [35, 35]
    assert plan_prefixes([a, b], limits=[10, 50]) == [0, 0]  # below min_len: not shared
    assert plan_prefixes([a, a]) == [41, 41]  # every row keeps one token of its own


def test_store_cuts_and_continues(tiny_lm) -> None:
    backend = make_backend(tiny_lm)
    store = PrefixStore(backend)
    toks = torch.randint(3, 250, (60,)).tolist()
    full = tiny_lm.model(torch.tensor([toks]), use_cache=True).past_key_values
    long = store.rows(toks, 2)
    short = store.rows(toks[:40], 1)  # cut from the stored 60-token prefix
    assert store.computed == 1
    store2 = PrefixStore(backend)
    store2.rows(toks[:40], 1)
    cont = store2.rows(toks, 1)  # continued from the stored 40-token prefix
    assert store2.computed == 2
    for got, n in ((long, 60), (short, 40), (cont, 60)):
        got = materialize_shared(got)  # the one stored row, as a plain cache
        for layer in range(len(full.layers)):
            ref = full.layers[layer].keys[..., :n, :]
            assert torch.allclose(got.layers[layer].keys[:1], ref, atol=1e-5)


def test_generation_same_with_and_without_the_store(tiny_lm, subject) -> None:
    b = make_backend(tiny_lm, "hooks")
    toks = subject.toks
    store = PrefixStore(b)
    shared = generate(b, toks, max_new_tokens=6, batch_size=3, prefixes=store)
    assert shared == generate(b, toks, max_new_tokens=6, batch_size=3, share_prefix=False)
    assert 0 < store.computed <= n_systems(toks)  # at most once per system message
    # an edit from the cue on: the prefix stops before it, the tokens still match
    start = torch.tensor([t.positions["cue"] for t in toks])
    e = [Edit(1, "add", torch.randn(tiny_lm.d_model) * 3, start)]
    assert generate(b, toks, edits=e, max_new_tokens=4) == generate(
        b, toks, edits=e, max_new_tokens=4, share_prefix=False
    )
    sampled = generate(b, toks, max_new_tokens=4, sample=True, seeds=list(range(len(toks))))
    assert sampled == generate(
        b, toks, max_new_tokens=4, sample=True, seeds=list(range(len(toks))), batch_size=1
    )


def test_metric_same_with_and_without_the_store(tiny_lm, subject) -> None:
    b = make_backend(tiny_lm)
    store = PrefixStore(b)
    vec = torch.randn(tiny_lm.d_model) * 2

    def steer(batch):  # an edit after the system prompt: the store's prefix is still unedited
        return [Edit(1, "add", vec, torch.as_tensor(batch.prompt_len) - 2)]

    got = score_settings(b, subject.items, [no_edit, steer], batch_size=4, prefixes=store)
    ref = score_settings(b, subject.items, [no_edit, steer], batch_size=4, prefixes=NoStore(b))
    whole = score_settings(b, subject.items, [no_edit, steer], batch_size=4, share_prefix=False)
    assert 0 < store.computed <= n_systems(subject.toks)
    for other in (ref, whole):
        np.testing.assert_allclose(got.accept, other.accept, atol=1e-4)
        np.testing.assert_allclose(got.reject, other.reject, atol=1e-4)
    assert not np.allclose(got.accept[0], got.accept[1])  # the edit did something


@pytest.mark.parametrize("batch_size", [4, 24])
def test_cache_same_with_and_without_the_store(
    tiny_lm, subject, tmp_path: Path, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same numbers; with every prompt in one batch, the rows of each system prompt run in one pass (they are
    not neighbours in the file: each request's prompts alternate system prompts)."""
    import afprobe.activations._runner as runner_mod

    passes: list[int] = []
    real = runner_mod.make_backend

    def counting(lm):  # type: ignore[no-untyped-def]
        b = real(lm)
        run = b.run

        def counted(ids, *a, **k):  # type: ignore[no-untyped-def]
            passes.append(ids.shape[0])
            return run(ids, *a, **k)

        b.run = counted  # type: ignore[method-assign]
        return b

    monkeypatch.setattr(runner_mod, "make_backend", counting)
    out = {}
    for share in (True, False):
        passes.clear()
        runner = CacheRunner(
            CacheRunConfig(cache=CacheConfig(batch_size=batch_size, share_prefix=share)), progress=False
        )
        path = runner.run(tmp_path / f"{share}.h5", lm=tiny_lm, prompts=subject.toks)
        with ActivationReader(path) as r:
            out[share] = np.asarray(r.resid[()])
        if share:
            assert runner.prefix_store is not None
            assert 0 < runner.prefix_store.computed <= n_systems(subject.toks)
            if batch_size == len(subject.toks):  # one pass per system prompt, after its stored prefix
                assert len([n for n in passes if n > 1]) == n_systems(subject.toks)
    np.testing.assert_allclose(out[True], out[False], atol=1e-4)


def test_store_hands_out_views_and_stays_intact(tiny_lm, subject) -> None:
    """The stored prefix is handed out as one row every row of the batch shares (no per-batch copy of a long
    prefix), and the batches that continue from it (a single-pass metric: stage A starts where the stored
    prefix ends) leave it as it was; the numbers match the whole rows run without a store."""
    b = make_backend(tiny_lm)
    store = PrefixStore(b)
    toks = torch.randint(3, 250, (50,)).tolist()
    rows = store.rows(toks, 3)
    stored = store._caches[tuple(toks)]
    for got, ref in zip(rows.layers, stored.layers, strict=True):
        assert isinstance(got, SharedPrefixLayer) and got.rows == 3 and got.own_length == 0
        assert got.prefix_keys.shape[0] == 1 and got.prefix_keys.data_ptr() == ref.keys.data_ptr()
    before = [layer.keys.clone() for layer in stored.layers]
    got = score_settings(b, subject.items, [no_edit], batch_size=4, prefixes=store)
    whole = score_settings(b, subject.items, [no_edit], batch_size=4, share_prefix=False)
    np.testing.assert_allclose(got.accept, whole.accept, atol=1e-4)
    np.testing.assert_allclose(got.reject, whole.reject, atol=1e-4)
    for layer, keys in zip(stored.layers, before, strict=True):
        assert torch.equal(layer.keys, keys)
