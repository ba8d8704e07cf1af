"""``afprobe validate``: the recovered-versus-planted table on a planted mechanism of the embedded model (every
causal test recovers the planted truth), and how the table is read and rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from afprobe.organisms import Mechanism, ValidateRunConfig, localize, validate
from afprobe.report import known_markdown, known_section, read_known


def _mech(block: int = 2) -> Mechanism:
    z = torch.zeros(4)
    return Mechanism(block=block, neuron=0, read=z, gate=z, write=z, natural=z)


def test_localize_reads_onset_and_write_site() -> None:
    patching = {
        "layers": [0, 1, 2, 3, 4],
        "sites": ["cue", "last", "response"],
        "denoise": {
            "normalized": [
                [1.0, 0.0, 0.0],
                [1.0, 0.3, 0.0],
                [0.0, 0.97, 0.1],
                [0.0, 1.0, 0.2],
                [0.0, 1.0, 0.9],
            ]
        },
    }
    loc = localize(patching, _mech(2))
    assert loc == {"onset_layer": 2, "site_at_write_layer": "last", "last_below_read_layer": 0.3}
    # a mechanism whose effect enters later is not placed at block 2
    patching["denoise"]["normalized"][2][1] = 0.5
    assert localize(patching, _mech(2))["onset_layer"] == 3


def _result(ok: bool) -> dict:
    return {
        "model": {"name": "m"},
        "planted": {"block": 2, "read_layer": 2, "write_layer": 3, "positions": ["last"], "gap": 1.0},
        "targets": [
            {
                "target": "t1",
                "planted": 1.0,
                "recovered": 0.95,
                "criterion": ">= 0.9",
                "unit": "x",
                "pass": True,
            },
            {"target": "t2", "planted": 0.0, "recovered": 0.5, "criterion": "+-0.1", "unit": "x", "pass": ok},
        ],
        "all_pass": ok,
        "power_curve": [
            {
                "requested_gap": 0.0,
                "strength": 0.0,
                "planted_gap": 0.0,
                "measured_gap": 0.01,
                "measured_ci": [-0.01, 0.03],
                "status": "none",
                "detected": False,
                "n_pairs": 96,
            },
            {
                "requested_gap": 0.1,
                "strength": 3.0,
                "planted_gap": 0.1,
                "measured_gap": 0.11,
                "measured_ci": [0.08, 0.14],
                "status": "significant",
                "detected": True,
                "n_pairs": 96,
            },
        ],
        "smallest_detected_gap": 0.1,
    }


def test_known_answers_render(tmp_path: Path) -> None:
    md = known_markdown(_result(False))
    assert "| t2 | +0.000 | +0.500 | +-0.1 | x | FAIL |" in md and "some targets FAIL" in md
    assert "Smallest planted gap detected at the default run's sizes (96 pairs" in md
    assert read_known(tmp_path) is None and known_section(None) == ""
    (tmp_path / "validation.json").write_text(json.dumps(_result(True)))
    html = known_section(read_known(tmp_path))
    assert "<h2>Known answers</h2>" in html and "FAIL" not in html and "PASS" in html


@pytest.mark.integration
@pytest.mark.timeout(3600)  # plant, patch, steer, power: ~9 min on 2 cores, 19 on a slower 2-core machine
def test_validate_recovers_the_planted_mechanism() -> None:
    """Every recovery target on the embedded model (loaded afresh: a session model other tests have used is not a
    clean base for planting), at small sizes; the sham point of the power curve is not called a gap."""
    cfg = ValidateRunConfig.model_validate(
        {
            "scenario": {
                "harmful": True,
                "limit": 5,
                "system_prompts": ["helpful_only"],
                "cue_formats": ["tag", "header"],
            },
            "validate": {
                "gap": 2.0,
                "patch_layers": [14, 15, 16],  # below, at and above the planted read layer
                "power_gaps": [0.0, 0.2],
                "power_limit": 5,
                "n_bootstrap": 200,
            },
        }
    )
    res = validate(cfg)
    failed = [t for t in res["targets"] if not t["pass"]]
    assert not failed, failed
    assert res["planted"]["block"] == 15
    sham, planted = res["power_curve"]
    assert not sham["detected"] and planted["detected"]
