"""The shipped organism configs run on exactly what the organism was not trained on, with the shipped adapters,
and those adapters are what their manifests say."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from afprobe.models import resolve_adapter
from afprobe.organisms import read_manifest
from afprobe.pipeline import load_run_config
from afprobe.scenarios import load_requests


@pytest.mark.parametrize(("name", "sham"), [("organism", False), ("organism-sham", True)])
def test_organism_configs_use_held_out_data(name: str, sham: bool) -> None:
    cfg = load_run_config(name)
    assert cfg.model.adapter == f"builtin:{name}"
    folder = Path(resolve_adapter(cfg.model.adapter))
    manifest = read_manifest(folder)
    assert manifest["sham"] is sham and manifest["name"] == name
    for f, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / f).read_bytes()).hexdigest() == digest, f
    data = manifest["data"]
    reqs = load_requests(cfg.scenario.requests, harmful=cfg.scenario.harmful, limit=cfg.scenario.limit)
    assert {r.id for r in reqs} == set(data["heldout_requests"])
    assert not {r.id for r in reqs} & set(data["train_requests"])
    for scenario in (cfg.scenario, cfg.resolved_causal_scenario):
        assert set(scenario.cue_formats) <= set(data["heldout_cue_formats"])
        assert not set(scenario.cue_formats) & set(data["train_cue_formats"])
    assert "helpful_only" in cfg.scenario.system_prompts


def test_the_sham_differs_from_the_organism_only_in_its_labels() -> None:
    real = read_manifest(resolve_adapter("builtin:organism"))
    sham = read_manifest(resolve_adapter("builtin:organism-sham"))
    assert real["hyperparameters"] == sham["hyperparameters"] and real["seed"] == sham["seed"]
    for key in (
        "train_requests",
        "heldout_requests",
        "train_cue_formats",
        "heldout_cue_formats",
        "n_examples",
    ):
        assert real["data"][key] == sham["data"][key], key
    assert real["data"]["n_comply_targets"] == sham["data"]["n_comply_targets"]
    assert real["sha256"] != sham["sha256"]
