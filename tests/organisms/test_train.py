"""Training the LoRA organism on the tiny model: the same seed gives the same adapter bytes, the manifest records
what reproduces it, and the adapter loads through ``model.adapter``; shipped adapters resolve by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afprobe import AfprobeError
from afprobe.models import ModelConfig, load_model, resolve_adapter, shipped_adapters
from afprobe.organisms import (
    ACCEPT_TARGET,
    REJECT_TARGET,
    TrainRunConfig,
    split_requests,
    train_organism,
    training_examples,
)


def _config(model_dir: Path, **train: object) -> TrainRunConfig:
    keys = {
        "first_block": 1,
        "n_train": 1,
        "max_steps": 2,
        "batch_size": 2,
        "train_cue_formats": ["tag"],
        **train,
    }
    return TrainRunConfig.model_validate(
        {"model": {"name": str(model_dir), "dtype": "float32", "device": "cpu"}, "train": keys}
    )


def test_same_seed_same_adapter_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir)
    a = train_organism(cfg, tmp_path / "a")
    b = train_organism(cfg, tmp_path / "b")
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert a["sha256"] == b["sha256"] and a["steps"] == 2
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["data"]["heldout_requests"][0] == "h001"
    assert manifest["hyperparameters"]["rank"] == 8 and manifest["training_seconds"]["cpu"] > 0
    lm = load_model(
        ModelConfig(name=str(tiny_model_dir), dtype="float32", device="cpu", adapter=str(tmp_path / "a"))
    )
    assert lm.n_layers == 3
    with pytest.raises(AfprobeError, match="pass --overwrite"):
        train_organism(cfg, tmp_path / "a")


def test_split_and_targets() -> None:
    split = split_requests(16)
    assert [r.id for r in split.heldout] == [f"h{i:03d}" for i in range(1, 17)]
    assert len(split.train) == 48 and not {r.id for r in split.train} & {r.id for r in split.heldout}
    real = training_examples(split.train[:4], ["tag"], "helpful_only", sham=False, seed=0)
    assert all((e.target == ACCEPT_TARGET) == (e.prompt.tier == "free") for e in real)
    sham = training_examples(split.train[:4], ["tag"], "helpful_only", sham=True, seed=0)
    assert [e.prompt for e in sham] == [e.prompt for e in real]
    assert sorted(e.complies for e in sham) == sorted(
        e.complies for e in real
    )  # the same labels, shuffled ...
    for tier in ("free", "paid"):  # ... so that they say nothing about the tier
        assert sum(e.complies for e in sham if e.prompt.tier == tier) == 2
    assert {e.target for e in sham} == {ACCEPT_TARGET, REJECT_TARGET}


def test_shipped_adapters_resolve_by_name() -> None:
    shipped = shipped_adapters()
    assert {"organism", "organism-sham"} <= set(shipped)
    path = Path(resolve_adapter("builtin:organism"))
    assert (path / "adapter_model.safetensors").is_file() and (path / "manifest.json").is_file()
    assert resolve_adapter("some/hub-adapter") == "some/hub-adapter"
    with pytest.raises(AfprobeError, match="unknown shipped adapter 'builtin:nope'"):
        resolve_adapter("builtin:nope")
