"""Directions: safetensors + JSON (never pickle), unit vectors with + toward "training", refused for another
model; cosine tables between probe types and neighbouring layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from afprobe import AfprobeError
from afprobe.probes import (
    SIGN_CONVENTION,
    ProbeDirections,
    cosine_between_layers,
    cosine_between_probes,
    load_directions,
    save_directions,
)
from afprobe.probes._directions import unit_rows


def make_dirs(d: int = 16, layers: tuple[int, ...] = (0, 2, 4)) -> ProbeDirections:
    rng = np.random.default_rng(0)
    base = unit_rows(rng.normal(size=(len(layers), d)))
    return ProbeDirections(
        vectors={
            ("torch_logistic", "last"): base,
            ("mass_mean", "last"): unit_rows(base + 0.1 * rng.normal(size=base.shape)),
            ("torch_logistic", "cue"): unit_rows(rng.normal(size=(len(layers), d))),
            ("mass_mean", "cue"): unit_rows(rng.normal(size=(len(layers), d))),
        },
        layers=list(layers),
        model_id="org/model-a",
        weights_hash="a" * 64,
        d_model=d,
        seed=7,
        default_probe="torch_logistic",
    )


def test_round_trip(tmp_path: Path) -> None:
    dirs = make_dirs()
    tensors_path, meta_path = save_directions(tmp_path, dirs)
    assert tensors_path.suffix == ".safetensors"
    raw = load_file(str(tensors_path))  # plain safetensors, readable without afprobe
    assert raw["torch_logistic/last"].dtype == np.float32 and raw["layers"].tolist() == [0, 2, 4]
    meta = json.loads(meta_path.read_text())
    assert meta["sign_convention"] == SIGN_CONVENTION and "training" in SIGN_CONVENTION
    assert {"model_id", "d_model", "seed", "entries"} <= meta.keys()
    assert {"layer": 2, "position": "cue", "probe": "mass_mean"}.items() <= next(
        e for e in meta["entries"] if e["layer"] == 2 and e["position"] == "cue" and e["probe"] == "mass_mean"
    ).items()
    back = load_directions(
        tmp_path, expect_model_id="org/model-a", expect_weights_hash="a" * 64, expect_d_model=16
    )
    for key, v in dirs.vectors.items():
        np.testing.assert_array_equal(back.vectors[key], v)
    v = back.direction(2, "last")
    assert v.dtype == np.float32 and v.shape == (16,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(v, dirs.vectors["torch_logistic", "last"][1])
    np.testing.assert_array_equal(
        back.direction(4, "cue", probe="mass_mean"), dirs.vectors["mass_mean", "cue"][2]
    )
    assert back.direction_tensor(0, "last").shape == (16,)
    assert load_directions(tmp_path / "directions.safetensors").model_id == "org/model-a"


@pytest.mark.parametrize(
    ("expect", "needle"),
    [
        ({"expect_model_id": "org/model-b"}, "fitted on org/model-a.*model in use is org/model-b"),
        ({"expect_weights_hash": "b" * 64}, "other weights"),
        ({"expect_d_model": 4096}, "d_model 4096"),
    ],
)
def test_another_model_is_refused_in_one_line(tmp_path: Path, expect: dict, needle: str) -> None:
    save_directions(tmp_path, make_dirs())
    with pytest.raises(AfprobeError, match=needle) as e:
        load_directions(tmp_path, **expect)
    assert "\n" not in str(e.value)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(AfprobeError, match="no probe directions"):
        load_directions(tmp_path)
    save_directions(tmp_path, make_dirs())
    (tmp_path / "directions.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(AfprobeError, match="cannot read probe directions"):
        load_directions(tmp_path)


def test_unknown_entries_name_what_exists(tmp_path: Path) -> None:
    dirs = make_dirs()
    with pytest.raises(AfprobeError, match="positions: last, cue"):
        dirs.direction(0, "user_end")
    with pytest.raises(AfprobeError, match=r"layers with directions: \[0, 2, 4\]"):
        dirs.direction(1, "last")


def test_cosine_tables() -> None:
    dirs = make_dirs()
    between = cosine_between_probes(dirs)
    assert len(between) == 2 * 3  # one probe pair x 2 positions x 3 layers
    last = [r["cosine"] for r in between if r["position"] == "last"]
    assert min(last) > 0.9  # mass_mean/last was built close to torch_logistic/last
    layers = cosine_between_layers(dirs)
    assert len(layers) == 4 * 2 and {(r["layer_a"], r["layer_b"]) for r in layers} == {(0, 2), (2, 4)}
    v = dirs.vectors["torch_logistic", "last"]
    row = next(
        r for r in layers if r["probe"] == "torch_logistic" and r["position"] == "last" and r["layer_a"] == 2
    )
    assert row["cosine"] == pytest.approx(float(v[1] @ v[2]), abs=1e-6)
