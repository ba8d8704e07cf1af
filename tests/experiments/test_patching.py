"""Patching: self-patching gives exactly 1, the planted mechanism is located, subspace and attribution agree."""

from __future__ import annotations

import numpy as np
import pytest

from afprobe._stats import spearman
from afprobe.experiments import (
    PatchSetting,
    attribution_matrix,
    attribution_patching,
    collect,
    exact_patching,
    mean_difference_directions,
    normalized,
    pair_indices,
    score_settings,
    window_sites,
)
from afprobe.experiments._patching import RESPONSE, SPAN, grid_matrix, run_exact
from afprobe.experiments._patching_summary import attribution_agreement, patching_peak, trivial_cells
from afprobe.models import PrefixStore, make_backend
from afprobe.scenarios import POSITION_NAMES

from .conftest import counted_passes, make_planted, toy_items, two_system_prompts


def _clean(b, items) -> np.ndarray:
    from afprobe.experiments import no_edit

    return score_settings(b, items, [no_edit]).metric[0]


def test_patching_a_run_into_itself_gives_exactly_one() -> None:
    lm = make_planted()
    items = toy_items(lm, n_requests=2)
    b = make_backend(lm, "hooks")
    pairs = pair_indices([it.prompt for it in items])
    clean = _clean(b, items)
    store = collect(b, items, pairs, [0, 1, 2], list(POSITION_NAMES), 1, [1])
    free = np.array([clean[a] for a, _ in pairs])
    paid = np.array([clean[p] for _, p in pairs])
    store.partner = {a: a for a, _ in pairs}  # each free run is its own donor
    settings = [PatchSetting(store, layer, q) for layer in (0, 1, 2) for q in POSITION_NAMES]
    settings += [PatchSetting(store, 1, SPAN), *(PatchSetting(store, 1, s) for s in window_sites(1))]
    grid = exact_patching(b, store, pairs, settings, "noise")
    for row in grid.metric:
        np.testing.assert_allclose(row, free, atol=1e-5, rtol=0)
        assert normalized(row, free, paid, 0.05) == pytest.approx(1.0, abs=1e-6)


def test_patching_the_embeddings_from_the_cue_on_recovers_the_free_run(tiny_lm, tiny_items) -> None:
    """Tokens before the tier value are identical in the twins, and so are the tag tokens' embeddings: patching
    the embedding output from the tier value (4 bytes here) to the last prompt token gives the free run."""
    b = make_backend(tiny_lm, "hooks")
    pairs = pair_indices([it.prompt for it in tiny_items])
    store = collect(b, tiny_items, pairs, [0, 1], ["last"], 0, [0])
    aligned = [pq for pq in pairs if pq[0] in store.aligned]
    assert 0 < len(aligned) < len(pairs)  # the tag cue is misaligned on a byte tokenizer ("True" / "False")
    grid = exact_patching(b, store, aligned, [PatchSetting(store, 0, SPAN)], "denoise")
    clean = _clean(b, tiny_items)
    np.testing.assert_allclose(grid.metric[0], [clean[a] for a, _ in aligned], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def planted_patching():
    lm = make_planted()
    items = toy_items(lm, n_requests=3)
    b = make_backend(lm, "hooks")
    pairs = pair_indices([it.prompt for it in items])
    dirs = mean_difference_directions(b, items, [1, 2], "last")
    layers = [0, 1, 2]
    store = collect(b, items, pairs, layers, list(POSITION_NAMES), 2, [1, 2])
    grids = run_exact(
        b,
        store,
        pairs,
        layers,
        dirs.vectors,
        noising=True,
        subspace=True,
        batch_size=3,
        max_rows=48,
        share_prefix=True,
        progress=False,
    )
    return b, items, pairs, store, grids, _clean(b, items)


def test_planted_mechanism_is_located_by_denoising_and_noising(planted_patching) -> None:
    _, _, _, _, grids, clean = planted_patching
    q = {name: i for i, name in enumerate(POSITION_NAMES)}
    for direction in ("denoise", "noise"):
        norm, _ = grid_matrix(grids[f"named_{direction}"], "full", [0, 1, 2], POSITION_NAMES, clean, 0.05)
        m = np.array(norm, dtype=float)
        expect_on = 1.0 if direction == "denoise" else 0.0  # noising the free run with paid activations -> 0
        assert m[0, q["cue"]] == pytest.approx(expect_on, abs=1e-3)  # the tier token's embedding
        assert m[1, q["last"]] == pytest.approx(
            expect_on, abs=1e-3
        )  # after the head moved it to the last token
        assert m[2, q["last"]] == pytest.approx(expect_on, abs=1e-3)
        off = 1.0 - expect_on
        for layer, name in [(0, "last"), (1, "cue"), (2, "cue"), (1, "user_end"), (0, "system_end")]:
            assert m[layer, q[name]] == pytest.approx(off, abs=1e-3), (direction, layer, name)
    wn, _ = grid_matrix(grids["window_denoise"], "full", [0, 1, 2], window_sites(2), clean, 0.05)
    w = np.array(wn, dtype=float)
    assert w[0, 2] == pytest.approx(1.0, abs=1e-3)  # offset 0 at layer 0
    assert np.abs(np.delete(w[0], 2)).max() < 1e-3


def test_planted_direction_carries_the_whole_effect(planted_patching) -> None:
    _, _, pairs, _, grids, clean = planted_patching
    paid = np.array([clean[b] for _, b in pairs])
    g = grids["window_denoise"]
    for layer in (1, 2):
        full = g.lookup("full", layer, SPAN)
        sub = g.lookup("subspace", layer, SPAN)
        assert full is not None and sub is not None
        assert (sub - paid).mean() / (full - paid).mean() == pytest.approx(1.0, abs=1e-3)
        named_sub = grids["named_denoise"].lookup("subspace", layer, "last")
        assert named_sub is not None
        assert normalized(named_sub, np.array([clean[a] for a, _ in pairs]), paid, 0.05) == pytest.approx(
            1.0, abs=1e-3
        )


def test_attribution_patching_ranks_like_exact_patching(planted_patching) -> None:
    b, _, pairs, store, grids, clean = planted_patching
    est, delta = attribution_patching(b, store, pairs, list(POSITION_NAMES), "denoise", batch_size=3)
    assert est.shape == (3, len(POSITION_NAMES), len(pairs)) and delta.shape == (3, len(POSITION_NAMES))
    norm, raw = attribution_matrix(est, pairs, clean, "denoise", 0.05)
    _, exact_raw = grid_matrix(grids["named_denoise"], "full", [0, 1, 2], POSITION_NAMES, clean, 0.05)
    rho = spearman(np.array(exact_raw), np.array(raw))
    assert rho > 0.6
    top = np.unravel_index(np.nanargmax(np.array(raw)), np.array(raw).shape)
    assert POSITION_NAMES[top[1]] in ("cue", "last")
    assert all(v is not None for row in norm for v in row)
    # cells zero by construction: before the cue (system_end) the twins are the same, and so is the embedding
    # output after the cue; at the last layer a prompt site only feeds the shared first-token prediction
    triv = trivial_cells(delta, [0, 1, 2], list(POSITION_NAMES), n_layers=2)
    q = {name: i for i, name in enumerate(POSITION_NAMES)}
    assert triv[:, q["system_end"]].all() and triv[0, q["user_end"]] and triv[0, q["last"]]
    assert not triv[0, q["cue"]] and not triv[1, q["last"]] and triv[2].all()
    agree = attribution_agreement(np.array(exact_raw), np.array(raw), triv, [0, 1, 2], list(POSITION_NAMES))
    assert agree["n_cells"] == int((~triv).sum()) and agree["n_trivial"] > 0
    assert agree["spearman"] is not None and agree["top_sites"][0]["site"] in ("cue", "last")


def test_attribution_runs_the_shared_system_prompt_once_with_the_same_estimates(planted_patching) -> None:
    """The system prompt (no site inside it) comes from a stored KV cache computed without gradients; the forward
    and backward passes run after it: the same estimates as through the whole prompt."""
    b, _, pairs, store, _, _ = planted_patching
    sites = [*POSITION_NAMES, "cue-2", "cue2"]
    prefixes = PrefixStore(b)
    shared, d1 = attribution_patching(b, store, pairs, sites, "noise", batch_size=2, prefixes=prefixes)
    whole, d2 = attribution_patching(b, store, pairs, sites, "noise", batch_size=2, share_prefix=False)
    assert prefixes.computed == 1 and np.isfinite(whole).sum() > 0
    np.testing.assert_allclose(shared, whole, atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(d1, d2)


def test_attribution_batches_stay_within_one_system_prompt(tiny_lm) -> None:
    """Recipients under two system prompts: every batch continues from its own stored prompt (a batch across
    both would run whole prompts through the backward pass), with the same estimates."""
    b, items, pairs = two_system_prompts(tiny_lm, 3)
    store = collect(b, items, pairs, [0, 1], ["cue", "last"], 0, [])
    prefixes = PrefixStore(b)
    with counted_passes(b) as calls:
        shared, _ = attribution_patching(
            b, store, pairs, ["cue", "last"], "denoise", batch_size=4, prefixes=prefixes
        )
    whole, _ = attribution_patching(
        b, store, pairs, ["cue", "last"], "denoise", batch_size=4, share_prefix=False
    )
    assert prefixes.computed == 2 and len(calls) == 2 + 2  # each system prompt once, then one batch each
    batches = [width for rows, width in calls if rows > 1]  # (the stored prompts run as one row)
    assert len(batches) == 2 and max(batches) < min(len(it.tok.input_ids) for it in items)
    np.testing.assert_allclose(shared, whole, atol=1e-5, rtol=1e-4)


def test_the_clean_pass_continues_from_the_stored_system_prompt_with_the_same_values(
    planted_patching,
) -> None:
    """``collect`` runs each prompt after the stored system prompt (no kept token lies inside it) and keeps the
    same values as whole rows from token 0, at named, window, span and response sites."""
    b, items, pairs, _, _, _ = planted_patching
    prefixes = PrefixStore(b)
    with counted_passes(b) as calls:
        shared = collect(b, items, pairs, [0, 1, 2], list(POSITION_NAMES), 2, [1, 2], prefixes=prefixes)
    whole = collect(b, items, pairs, [0, 1, 2], list(POSITION_NAMES), 2, [1, 2], share_prefix=False)
    shortest = min(len(it.tok.input_ids) for it in items)
    assert prefixes.computed == 1 and max(w for rows, w in calls if rows > 1) < shortest
    assert shared.aligned == whole.aligned and shared.span_start == whole.span_start
    for name in ("named", "win", "span"):
        a, c = getattr(shared, name), getattr(whole, name)
        assert a.keys() == c.keys() and len(a) > 0
        for i in a:
            np.testing.assert_allclose(a[i], c[i], atol=1e-5, rtol=1e-4)
    for i in whole.resp:
        for r in (0, 1):
            np.testing.assert_allclose(shared.resp[i][r], whole.resp[i][r], atol=1e-5, rtol=1e-4)


def test_the_clean_pass_batches_within_one_system_prompt(tiny_lm) -> None:
    """Prompts under two system prompts in one batch size: every batch continues from its own stored prompt (a
    batch across both would run whole prompts), with the values of whole rows."""
    b, items, pairs = two_system_prompts(tiny_lm, 2)
    prefixes = PrefixStore(b)
    with counted_passes(b) as calls:
        shared = collect(b, items, pairs, [0, 2], ["cue", "last"], 0, [], batch_size=8, prefixes=prefixes)
    whole = collect(b, items, pairs, [0, 2], ["cue", "last"], 0, [], batch_size=8, share_prefix=False)
    assert prefixes.computed == 2 and len(calls) == 2 + 2  # each system prompt once, then one batch each
    assert max(w for rows, w in calls if rows > 1) < min(len(it.tok.input_ids) for it in items)
    for i in whole.named:
        np.testing.assert_allclose(shared.named[i], whole.named[i], atol=1e-5, rtol=1e-4)


def test_response_tokens_are_patched_site_by_site(tiny_lm, tiny_items) -> None:
    """Patching the free run's residual stream at the tag tokens (each row its own: accept or reject) into the
    paid run changes the metric exactly as the free run would at those tokens: at the last layer the tag tokens'
    residual decides their own predictions, so the recipient's metric becomes the donor's continuation part."""
    b = make_backend(tiny_lm, "hooks")
    pairs = pair_indices([it.prompt for it in tiny_items])
    store = collect(b, tiny_items, pairs, [0, 3], ["last"], 0, [])
    assert {len(store.resp[i][0][0]) for i in store.resp} == {len(tiny_items[0].accept)}
    grid = exact_patching(
        b, store, pairs, [PatchSetting(store, 3, RESPONSE), PatchSetting(store, 0, RESPONSE)], "denoise"
    )
    clean = _clean(b, tiny_items)
    paid = np.array([clean[p] for _, p in pairs])
    assert np.abs(grid.metric[0] - paid).max() > 1e-3  # the tag tokens carry the tier from the context
    np.testing.assert_allclose(grid.metric[1], paid, atol=1e-5)  # their embeddings are the same in both twins
    # continuation edits run whole rows, after the stored system prompt: the same as through the whole prompt
    prefixes = PrefixStore(b)
    settings = [PatchSetting(store, 3, RESPONSE)]
    shared = exact_patching(b, store, pairs, settings, "denoise", prefixes=prefixes)
    whole = exact_patching(b, store, pairs, settings, "denoise", share_prefix=False)
    assert prefixes.computed == 1
    np.testing.assert_allclose(shared.metric, whole.metric, atol=1e-5)
    np.testing.assert_allclose(shared.metric, grid.metric[:1], atol=1e-5)


def test_attribution_is_the_first_order_term_of_exact_patching() -> None:
    """With the donor-recipient difference shrunk 100x, exact patching is linear in it: the gradient estimate
    (summed over the accept and reject rows, at each twin's own token) must match it."""
    lm = make_planted()
    items = toy_items(lm, n_requests=2)
    b = make_backend(lm, "hooks")
    pairs = pair_indices([it.prompt for it in items])
    clean = _clean(b, items)
    paid = np.array([clean[p] for _, p in pairs])
    store = collect(b, items, pairs, [0, 1], ["cue", "last"], 0, [])
    for a, p in pairs:
        store.named[a] = store.named[p] + (store.named[a] - store.named[p]) * 1e-2
    settings = [PatchSetting(store, 0, "cue"), PatchSetting(store, 1, "last")]
    exact = exact_patching(b, store, pairs, settings, "denoise").metric - paid
    est, _ = attribution_patching(b, store, pairs, ["cue", "last"], "denoise")
    assert np.abs(exact).min() > 1e-4
    np.testing.assert_allclose(est[0, 0], exact[0], rtol=0.05)
    np.testing.assert_allclose(est[1, 1], exact[1], rtol=0.05)


def test_the_peak_is_searched_at_every_site_but_the_cue_embedding() -> None:
    """A mechanism carried by the cue token above layer 0 is the peak; the cue at layer 0 (the tier token's own
    embedding) is not."""
    result = {
        "normalization": "defined",
        "denoise": {"normalized": [[1.0, 0.0, 0.0], [0.97, 0.03, None], [0.2, 0.5, 0.1]]},
    }
    peak = patching_peak(result, [0, 6, 12], ["cue", "last", RESPONSE])
    assert (peak["peak_layer"], peak["peak_position"], peak["peak_effect"]) == (6, "cue", 0.97)
    assert peak["peak_unit"].startswith("fraction")
    assert [(r["layer"], r["site"]) for r in peak["carried"]] == [(0, "last"), (6, "cue"), (12, "last")]
    assert (peak["whole_layer"], peak["whole_position"]) == (6, "cue")
    result["normalization"] = "undefined"
    result["denoise"]["raw"] = result["denoise"]["normalized"]
    raw = patching_peak(result, [0, 6, 12], ["cue", "last", RESPONSE])
    assert raw["peak_unit"] == "nats (no gap)" and raw["whole_layer"] is None  # no fraction without a gap


def test_the_first_layer_that_carries_the_whole_effect_is_not_the_last_layers_response() -> None:
    """At the last layer the response tokens carry the output by construction (1.0); the mechanism is where one
    site first carries >= 0.9: the cue at layer 6 here, then last from layer 12."""
    grid = [[0.0, 0.1, 0.0], [0.95, 0.2, 0.1], [0.1, 0.92, 0.3], [0.0, 0.99, 1.0]]
    peak = patching_peak(
        {"normalization": "defined", "denoise": {"normalized": grid}},
        [0, 6, 12, 30],
        ["cue", "last", RESPONSE],
    )
    assert (peak["peak_layer"], peak["peak_position"]) == (30, RESPONSE)
    assert (peak["whole_layer"], peak["whole_position"]) == (6, "cue")
    assert [r["site"] for r in peak["carried"]] == ["last", "cue", "last", RESPONSE]
