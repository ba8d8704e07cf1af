"""Steering: identity at alpha 0, batched sweep = loop, ablation, and the planted mechanism recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afprobe.experiments import (
    Directions,
    LayerPlan,
    SteerSetting,
    make_row_batch,
    mean_difference_directions,
    median_norms,
    plan_layers,
    random_unit_vectors,
    read_named,
    run_sweep,
    score_settings,
    summarize_sweep,
    sweep_settings,
)
from afprobe.experiments._reads import mean_projections
from afprobe.models import Edit, PrefixStore, edit_mask, make_backend, stack_edits

from .conftest import U, counted_passes, make_planted, toy_items, two_system_prompts


def _unit(d: int, seed: int) -> torch.Tensor:
    return random_unit_vectors(1, d, seed)[0]


@pytest.mark.parametrize("mode", ["all", "from_cue", "generated"])
def test_alpha_zero_is_the_identity(tiny_lm, tiny_items, mode: str) -> None:
    b = make_backend(tiny_lm, "hooks")
    u = _unit(tiny_lm.d_model, 1)
    settings = [SteerSetting("clean", mode=mode), SteerSetting("probe", 2, 0.0, 0, u, 5.0, mode)]
    m = score_settings(b, tiny_items, settings).metric
    np.testing.assert_allclose(m[1], m[0], atol=1e-5, rtol=0)
    moved = score_settings(b, tiny_items, [SteerSetting("probe", 2, 1.0, 0, u, 5.0, mode)]).metric
    assert np.abs(moved[0] - m[0]).max() > 1e-3  # the same setting with alpha != 0 does something


@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_batched_sweep_equals_the_loop(tiny_lm, tiny_items, backend: str) -> None:
    b = make_backend(tiny_lm, backend)
    dirs = Directions({1: _unit(tiny_lm.d_model, 2), 3: _unit(tiny_lm.d_model, 3)}, "last", "given")
    plans, _ = plan_layers(b, tiny_items, dirs, [1, 3], mode="from_cue", n_random=8)
    settings = sweep_settings(plans, [-1.0, 0.5], mode="from_cue", ablate=True)
    assert len(settings) == 1 + 2 * (2 * 17 + 17)
    batched = score_settings(b, tiny_items, settings, batch_size=3, max_rows=200, share_prefix=True)
    loop = score_settings(b, tiny_items, settings, batch_size=3, max_rows=1, share_prefix=False)
    np.testing.assert_allclose(batched.accept, loop.accept, atol=2e-4, rtol=0)
    np.testing.assert_allclose(batched.reject, loop.reject, atol=2e-4, rtol=0)
    assert np.abs(batched.metric[1:] - batched.metric[0]).max() > 1e-2


def test_stack_edits_keeps_each_block_on_its_rows() -> None:
    rows, seq, d = 2, 5, 3
    a = Edit(1, "add", torch.ones(d), torch.tensor([[True, False, False, False, False]] * rows))
    c = Edit(2, "ablate", torch.ones(d), None)
    out = stack_edits([[a], [c], []], rows, seq)
    assert [(e.layer, e.op) for e in out] == [(1, "add"), (2, "ablate")]
    add, abl = out
    assert add.value.shape == (6, d) and add.value[:2].eq(1).all() and add.value[2:].eq(0).all()
    assert add.positions is not None and add.positions[2:].sum() == 0 and add.positions[:2, 0].all()
    assert abl.positions is not None and abl.positions[2:4].all() and not abl.positions[:2].any()
    with pytest.raises(ValueError, match="cannot be stacked"):
        stack_edits(
            [[Edit(1, "set", torch.zeros(rows, 1, d), torch.zeros(rows, 1, dtype=torch.long))]], rows, seq
        )


def test_ablation_removes_the_component_after_the_hook(tiny_lm, tiny_items) -> None:
    b = make_backend(tiny_lm, "hooks")
    u = _unit(tiny_lm.d_model, 4)
    batch = make_row_batch(tiny_items, [0, 1], int(tiny_lm.tokenizer.pad_token_id))
    edits = SteerSetting("ablate", 2, 0.0, 0, u, 1.0, "from_cue")(batch)
    with torch.no_grad():
        base = b.run(batch.input_ids, batch.attention_mask, read_layers=[2], logits=False).resid[2]
        out = b.run(batch.input_ids, batch.attention_mask, read_layers=[2], edits=edits, logits=False).resid[
            2
        ]
    mask = edit_mask(Edit(2, "add", u, batch.starts("from_cue")), batch.n_rows, batch.seq_len)
    assert (out[mask] @ u).abs().max() < 1e-5
    assert (base[mask] @ u).abs().max() > 1e-2
    torch.testing.assert_close(out[~mask], base[~mask])  # untouched before the cue


def test_median_norm_sets_the_magnitude(tiny_lm, tiny_items) -> None:
    b = make_backend(tiny_lm, "hooks")
    norms = median_norms(b, tiny_items, [0, 2], "all")
    batch = make_row_batch(tiny_items, [0], int(tiny_lm.tokenizer.pad_token_id))
    u = _unit(tiny_lm.d_model, 5)
    (edit,) = SteerSetting("probe", 2, 0.5, 0, u, norms[2], "all")(batch)
    assert edit.value.norm() == pytest.approx(0.5 * norms[2], rel=1e-5)
    assert all(v > 0 for v in norms.values())


class _Whole(PrefixStore):
    """No stored prefixes: every read runs its prompts whole."""

    @property
    def usable(self) -> bool:
        return False


def test_reads_continue_from_the_stored_system_prompt(tiny_lm) -> None:
    """The steering plan's reads (the residual at a named position, the norms and mean projections over the
    steered tokens) run each prompt after its stored system prompt, batches within one system prompt, and read
    the same values as whole prompts; ``all`` (from token 0) reads the system prompt too, so it runs whole."""
    b, items, _ = two_system_prompts(tiny_lm, 3)
    layers = [1, 2]
    shortest = min(it.length for it in items)
    v = {layer: random_unit_vectors(3, tiny_lm.d_model, layer) for layer in layers}
    got, ref = [], []
    for store, out in ((PrefixStore(b), got), (_Whole(b), ref)):
        with counted_passes(b) as calls:
            out.append(read_named(b, items, layers, "cue", batch_size=4, prefixes=store))
            out.append(median_norms(b, items, layers, "from_cue", batch_size=4, prefixes=store))
            out.append(mean_projections(b, items, v, "from_cue", batch_size=4, prefixes=store))
        if store.usable:  # beyond the store's own passes (one per system prompt, for all three reads)
            assert store.computed == 2 and len(calls) > 2
            assert sum(width >= shortest for _, width in calls) <= store.computed
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=0)
    assert got[1] == pytest.approx(ref[1], abs=1e-5)
    for layer in layers:
        torch.testing.assert_close(got[2][layer], ref[2][layer], atol=1e-5, rtol=0)
    with counted_passes(b) as calls:
        median_norms(b, items, layers, "all", batch_size=4, prefixes=PrefixStore(b))
    assert max(width for _, width in calls) == max(it.length for it in items)


@pytest.fixture(scope="module")
def planted_sweep():
    lm = make_planted(
        gain=1.0
    )  # tier separation ~ 1/3 of the residual norm (at gain 5 it is the whole residual)
    items = toy_items(lm, n_requests=6)
    b = make_backend(lm, "hooks")
    dirs = mean_difference_directions(b, items, [0, 1, 2], "last")
    plans, info = plan_layers(b, items, dirs, [1, 2], mode="from_cue", n_random=8)
    settings = sweep_settings(plans, [-1.0, -0.5, 0.5, 1.0], mode="from_cue", ablate=True)
    return dirs, info, run_sweep(b, items, settings, batch_size=4, max_rows=64)


def test_planted_direction_is_recovered(planted_sweep) -> None:
    dirs, _, _ = planted_sweep
    assert (
        isinstance(dirs, Directions) and 0 not in dirs.vectors and dirs.skipped == [0]
    )  # layer 0 sees no tier
    for layer in (1, 2):
        assert float(dirs[layer][U]) == pytest.approx(1.0, abs=1e-5)  # +u: toward free


def test_planted_steering_in_natural_units_recovers_the_whole_gap(planted_sweep) -> None:
    """The toy's readout is linear in u, so moving paid prompts by the free - paid separation along u (alpha = 1)
    reproduces exactly the gap and the reverse removes it, and random directions of the same magnitude (from the activations' covariance, or isotropic) do next to nothing."""
    _, info, sweep = planted_sweep
    assert info["scale"] == "natural" and all(v > 0 for v in info["separation"].values())
    s = summarize_sweep(sweep, gap_usable=True, n_boot=200)
    grid = {(r["layer"], r["alpha"]): r for r in s["grid"]}
    for layer in (1, 2):
        assert grid[layer, 0.5]["paid_shift"]["value"] == pytest.approx(0.5, abs=0.02)  # dose-response
        assert grid[layer, 1.0]["paid_shift"]["value"] == pytest.approx(1.0, abs=0.02)
        assert grid[layer, -1.0]["free_shift"]["value"] == pytest.approx(1.0, abs=0.02)
        # both tiers are steered: the change of the gap is reported beside each tier's shift, with its band
        assert grid[layer, 1.0]["gap_change"]["value"] is not None
        assert grid[layer, 1.0]["random_gap_change"]["n"] == 8
        for key in ("random_paid_shift", "isotropic_paid_shift"):
            band = grid[layer, 1.0][key]
            assert band["n"] == 8 and abs(band["mean"]) < 0.1
        assert not grid[layer, 1.0]["paid_shift"]["implausible"]
    abl = {r["layer"]: r for r in s["ablation"]}
    for layer in (1, 2):
        assert abl[layer]["removed"]["value"] == pytest.approx(
            1.0, abs=1e-3
        )  # mean ablation: the gap lives on u
        assert abl[layer]["gap_after"] == pytest.approx(0.0, abs=1e-3)
        assert abs(abl[layer]["random"]["mean"]) < 0.1 and abs(abl[layer]["isotropic"]["mean"]) < 0.1
    assert s["best_layer"] in (1, 2)
    fr = s["fraction_of_gap"]
    assert fr["reproduced"]["alpha"] == 1.0 and fr["removed"]["alpha"] == -1.0
    lo, hi = fr["reproduced"]["ci"]
    assert lo <= fr["reproduced"]["value"] <= hi
    assert s["random_baseline"]["band"] == "covariance" and s["random_baseline"]["ablation"]["n"] == 8
    assert s["random_isotropic"]["reproduced"]["n"] == 8


def test_the_residual_norm_unit_overshoots_and_is_flagged() -> None:
    """The old unit (alpha x median residual norm) is far larger than the tier separation: on the toy it moves
    the metric many gaps at once, and the fraction is flagged as implausible."""
    lm = make_planted(gain=1.0)
    items = toy_items(lm, n_requests=6)
    b = make_backend(lm, "hooks")
    dirs = mean_difference_directions(b, items, [1], "last")
    plans, info = plan_layers(b, items, dirs, [1], mode="from_cue", n_random=8, scale="residual_norm")
    assert info["magnitude"]["1"] > 3 * info["separation"]["1"]
    sweep = run_sweep(b, items, sweep_settings(plans, [1.0], mode="from_cue", ablate=False))
    rep = summarize_sweep(sweep, gap_usable=True, n_boot=100)["fraction_of_gap"]["reproduced"]
    assert rep["value"] > 1.5 and rep["implausible"]


def test_mean_ablation_sets_the_component_to_its_mean(tiny_lm, tiny_items) -> None:
    b = make_backend(tiny_lm, "hooks")
    u = _unit(tiny_lm.d_model, 6)
    batch = make_row_batch(tiny_items, [0, 1], int(tiny_lm.tokenizer.pad_token_id))
    edits = SteerSetting("ablate", 2, 0.0, 0, u, 1.0, "from_cue", mean=0.7)(batch)
    stacked = stack_edits([[], edits], batch.n_rows, batch.seq_len)  # ablate, then add: the order is kept
    assert [e.op for e in stacked] == ["ablate", "add"]
    with torch.no_grad():
        out = b.run(batch.input_ids, batch.attention_mask, read_layers=[2], edits=edits, logits=False).resid[
            2
        ]
    mask = edit_mask(edits[0], batch.n_rows, batch.seq_len)
    assert torch.allclose(out[mask] @ u, torch.full((int(mask.sum()),), 0.7), atol=1e-5)


def test_no_gap_leaves_fractions_undefined() -> None:
    lm = make_planted(gain=0.0)
    items = toy_items(lm, n_requests=2)
    b = make_backend(lm, "hooks")
    u = torch.zeros(lm.d_model)
    u[U] = 1.0
    plans = {1: LayerPlan(u, 1.0, random={"covariance": random_unit_vectors(8, lm.d_model, 0)})}
    settings = sweep_settings(plans, [1.0], mode="from_cue", ablate=True)
    s = summarize_sweep(run_sweep(b, items, settings), gap_usable=False, n_boot=100)
    assert s["fraction_of_gap"]["reproduced"]["value"] is None
    assert s["fraction_of_gap"]["reproduced"]["effect_nats"] is not None
    assert s["fraction_of_gap"]["unit"].startswith("none")
