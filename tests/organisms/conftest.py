"""A planted tiny model, built once per module: strengths 0 (the sham) and 50 on 2 requests x 1 cue format."""

from __future__ import annotations

import pytest

from afprobe.models import LoadedModel, make_tiny_model, make_tiny_tokenizer, wrap_model
from afprobe.organisms import PlantResult, PlantRunConfig, plant

STRENGTH = 50.0


def tiny_lm(seed: int = 0) -> LoadedModel:
    return wrap_model(make_tiny_model(n_layers=3, d_model=64, seed=seed), make_tiny_tokenizer(), name="tiny")


def plant_config(**plant_keys: object) -> PlantRunConfig:
    return PlantRunConfig.model_validate(
        {
            "scenario": {
                "harmful": True,
                "limit": 2,
                "system_prompts": ["helpful_only"],
                "cue_formats": ["tag"],
            },
            "plant": {
                "generations": 1,
                "max_new_tokens": 2,
                "n_gradient": 2,
                "n_bootstrap": 100,
                **plant_keys,
            },
        }
    )


@pytest.fixture(scope="module")
def planted() -> PlantResult:
    return plant(tiny_lm(), plant_config(strengths=[0.0, STRENGTH]))
