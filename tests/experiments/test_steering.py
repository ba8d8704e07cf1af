"""Steering: identity at alpha 0, batched sweep = loop, ablation, and the planted mechanism recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afprobe.experiments import (
    Directions,
    SteerSetting,
    make_row_batch,
    mean_difference_directions,
    median_norms,
    random_unit_vectors,
    run_sweep,
    score_settings,
    summarize_sweep,
    sweep_settings,
)
from afprobe.models import Edit, edit_mask, make_backend, stack_edits

from .conftest import U, make_planted, toy_items


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
    dirs = {1: _unit(tiny_lm.d_model, 2), 3: _unit(tiny_lm.d_model, 3)}
    norms = median_norms(b, tiny_items, [1, 3], "from_cue")
    settings = sweep_settings(
        dirs, [1, 3], [-1.0, 0.5], norms, mode="from_cue", n_random=8, ablate=True, seed=0
    )
    assert len(settings) == 1 + 2 * (2 * 9 + 9)
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


@pytest.fixture(scope="module")
def planted_sweep():
    lm = make_planted()
    items = toy_items(lm, n_requests=4)
    b = make_backend(lm, "hooks")
    dirs = mean_difference_directions(b, items, [0, 1, 2], "last")
    norms = median_norms(b, items, [1, 2], "from_cue")
    settings = sweep_settings(
        dirs.vectors, [1, 2], [-1.0, -0.5, 0.5, 1.0], norms, mode="from_cue", n_random=8, ablate=True, seed=0
    )
    return dirs, run_sweep(b, items, settings, batch_size=4, max_rows=64)


def test_planted_direction_is_recovered(planted_sweep) -> None:
    dirs, _ = planted_sweep
    assert isinstance(dirs, Directions) and 0 not in dirs.vectors  # layer 0 at `last` does not see the tier
    for layer in (1, 2):
        assert float(dirs[layer][U]) == pytest.approx(1.0, abs=1e-5)  # +u: toward free


def test_planted_steering_reproduces_and_removes_the_gap(planted_sweep) -> None:
    _, sweep = planted_sweep
    s = summarize_sweep(sweep, gap_usable=True, n_boot=200)
    grid = {(r["layer"], r["alpha"]): r for r in s["grid"]}
    for layer in (1, 2):
        up = [grid[layer, a]["paid_shift"]["value"] for a in (0.5, 1.0)]
        assert 0 < up[0] < up[1]  # dose-response along +direction
        assert up[1] > 0.3
        rand = grid[layer, 1.0]["random_paid_shift"]
        assert rand["n"] == 8 and abs(rand["mean"]) + 2 * rand["sd"] < up[1]
        assert grid[layer, -1.0]["free_shift"]["value"] > 0.3
    abl = {r["layer"]: r for r in s["ablation"]}
    for layer in (1, 2):
        assert abl[layer]["removed"]["value"] == pytest.approx(1.0, abs=1e-4)  # the whole gap lives on u
        assert abl[layer]["gap_after"] == pytest.approx(0.0, abs=1e-3)
        assert abs(abl[layer]["random"]["mean"]) < 0.2
    assert s["best_layer"] in (1, 2)
    fr = s["fraction_of_gap"]
    assert fr["reproduced"]["alpha"] == 1.0 and fr["removed"]["alpha"] == -1.0
    lo, hi = fr["reproduced"]["ci"]
    assert lo <= fr["reproduced"]["value"] <= hi
    assert s["random_baseline"]["ablation"]["n"] == 8


def test_no_gap_leaves_fractions_undefined() -> None:
    lm = make_planted(gain=0.0)
    items = toy_items(lm, n_requests=2)
    b = make_backend(lm, "hooks")
    u = torch.zeros(lm.d_model)
    u[U] = 1.0
    settings = sweep_settings({1: u}, [1], [1.0], {1: 1.0}, mode="from_cue", n_random=8, ablate=True, seed=0)
    s = summarize_sweep(run_sweep(b, items, settings), gap_usable=False, n_boot=100)
    assert s["fraction_of_gap"]["reproduced"]["value"] is None
    assert s["fraction_of_gap"]["reproduced"]["effect_nats"] is not None
    assert s["fraction_of_gap"]["unit"].startswith("none")
