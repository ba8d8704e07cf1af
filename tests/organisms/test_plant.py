"""The planted neuron on the tiny model: it records its truth, reads only its read direction at its layer, writes
only its write direction, is exactly the base model at strength 0 without isolation, and saves as a model
directory that loads like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from afprobe import AfprobeError
from afprobe.experiments import score_settings
from afprobe.models import Edit, ModelConfig, decoder_layers, load_model, make_backend
from afprobe.organisms import (
    PLANTED_FILE,
    SWEEP_FILE,
    PlantResult,
    apply_mechanism,
    plant,
    read_planted,
    save_sweep,
    set_strength,
)
from afprobe.organisms._plant import _interpolate
from afprobe.organisms._surgery import check_block, norm_scale
from tests.organisms.conftest import STRENGTH, plant_config, tiny_lm


def _metric(res: PlantResult, strength: float, settings: list | None = None) -> np.ndarray:
    set_strength(res.lm.model, res.mechanism, strength)
    s = score_settings(make_backend(res.lm, "hooks"), res.items, settings or [lambda b: []], batch_size=4)
    return s.metric


def test_records_the_truth(planted: PlantResult) -> None:
    m = planted.mechanism
    assert (m.block, m.read_layer, m.write_layer, m.positions) == (1, 1, 2, ("last",))
    assert m.neuron == 128  # the tiny model's MLP had 128 neurons; the planted one is the 129th
    assert torch.isclose(m.read.norm(), torch.tensor(1.0)) and torch.isclose(
        m.write.norm(), torch.tensor(1.0)
    )
    assert abs(float(m.gate @ m.read)) < 1e-4 * float(
        m.gate.norm()
    )  # the gate is blind to the read direction
    blk = decoder_layers(planted.lm.model)[m.block]
    s = norm_scale(blk.post_attention_layernorm, 64)
    up = blk.mlp.up_proj.weight[m.neuron] * s
    assert torch.allclose(up, m.read, atol=1e-5)  # the up row reads u through the norm's scale
    assert (
        float((m.read @ blk.self_attn.o_proj.weight).abs().max()) < 1e-5
    )  # attention writes nothing along u
    for i, other in enumerate(decoder_layers(planted.lm.model)):
        if i != m.block:
            assert float(other.mlp.down_proj.weight[:, m.neuron].abs().max()) == 0.0
    assert [p.strength for p in planted.points] == [0.0, STRENGTH]
    assert planted.points[0].planted_gap["gap"] == 0.0


def test_writes_only_along_w_at_its_block(planted: PlantResult) -> None:
    m = planted.mechanism
    it = planted.items[0]
    ids = torch.tensor([it.tok.input_ids])
    reads = {}
    for k in (0.0, STRENGTH):
        set_strength(planted.lm.model, m, k)
        reads[k] = make_backend(planted.lm, "hooks").run(ids, read_layers=[0, 1, 2, 3], logits=False).resid
    for layer in (0, 1):  # below the write: untouched
        assert torch.equal(reads[0.0][layer], reads[STRENGTH][layer])
    diff = (reads[STRENGTH][2] - reads[0.0][2])[0]
    along = diff @ m.write
    assert float(along.abs().max()) > 1e-3
    assert float((diff - along[:, None] * m.write).norm()) < 1e-5 * float(diff.norm())
    assert float(along[it.tok.positions["last"]].abs()) > 1e-3
    # (the random tiny model's gate also opens at other '\n' tokens: where it acts is checked on the embedded model)


def test_ablating_the_read_direction_silences_it(planted: PlantResult) -> None:
    m = planted.mechanism

    def ablate(batch: object) -> list[Edit]:
        return [Edit(m.read_layer, "ablate", m.read)]

    plain = _metric(planted, STRENGTH)[0], _metric(planted, 0.0)[0]
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # the neuron does something ...
    ablated = _metric(planted, STRENGTH, [ablate])[0], _metric(planted, 0.0, [ablate])[0]
    np.testing.assert_allclose(
        ablated[0], ablated[1], rtol=0, atol=1e-4
    )  # ... nothing once u is gone at its layer


def test_strength_zero_without_isolation_is_the_base_model() -> None:
    res = plant(tiny_lm(), plant_config(strengths=[0.0], isolate=False, generations=0))
    np.testing.assert_allclose(res.points[0].metric, res.base_metric, atol=1e-5)
    np.testing.assert_allclose(res.sham_metric, res.base_metric, atol=1e-5)


def test_saved_directory_loads_and_replants(planted: PlantResult, tmp_path: Path) -> None:
    paths = save_sweep(planted, tmp_path / "sweep")
    assert [p.name for p in paths] == ["strength-0", "strength-50"]
    sweep = json.loads((tmp_path / "sweep" / SWEEP_FILE).read_text())
    assert [p["strength"] for p in sweep["points"]] == [0.0, STRENGTH]
    rec, mech = read_planted(paths[1])
    assert rec["mechanism"]["block"] == 1 and rec["mechanism"]["write_layer"] == 2
    assert rec["gap"]["unit"] == "nats" and rec["gap"]["planted"]["n_pairs"] == 2
    assert rec["prompts"]["request_ids"] == sorted({it.prompt.request_id for it in planted.items})
    lm = load_model(ModelConfig(name=str(paths[1]), dtype="float32", device="cpu"))
    loaded = score_settings(make_backend(lm, "hooks"), planted.items, [lambda b: []], batch_size=4).metric[0]
    np.testing.assert_allclose(loaded, planted.points[1].metric, atol=1e-4)
    fresh = tiny_lm().model
    apply_mechanism(fresh, mech)
    want = lm.model.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_refuses_what_it_cannot_plant_exactly(planted: PlantResult, tmp_path: Path) -> None:
    with pytest.raises(AfprobeError, match="block 3 out of range"):
        check_block(tiny_lm().model, 3)
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma2 = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
        )
    )
    with pytest.raises(AfprobeError, match=r"(post|pre)_feedforward_layernorm"):
        check_block(gemma2, 0)
    with pytest.raises(AfprobeError, match="cannot plant a gap of 3 nats"):
        _interpolate([0.0, 1.0, 2.0], np.array([0.0, 0.5, 1.0]), 3.0)
    assert _interpolate([0.0, 1.0, 2.0], np.array([0.0, 0.5, 1.0]), 0.75) == pytest.approx(1.5)
    assert not (tmp_path / PLANTED_FILE).exists()
