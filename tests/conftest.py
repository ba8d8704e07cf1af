"""Shared fixtures: seeding, a tiny random model with an offline tokenizer, the small settings of a whole tiny run,
and the embedded model (once)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# The suite never touches the network: every model is built here or loaded from the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from afprobe.models import (
    EMBEDDED_DEFAULT,
    LoadedModel,
    ModelConfig,
    embedded_gguf_path,
    load_model,
    make_tiny_model,
    make_tiny_tokenizer,
    wrap_model,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def tiny_lm() -> LoadedModel:
    return wrap_model(make_tiny_model(n_layers=3, d_model=64), make_tiny_tokenizer(), name="tiny")


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """The tiny model saved as a local HF directory, so the CLI can load it by path."""
    d = tmp_path / "tiny-model"
    make_tiny_model(n_layers=3, d_model=64).save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-layer model saved once per session as a local HF directory, for whole runs through the CLI."""
    d = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(n_layers=2, d_model=32, n_heads=2).save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_run_sets() -> list[str]:
    """``--set`` overrides that make ``afprobe run default`` take seconds on a CPU: 4 requests x 1 system prompt x
    2 cue formats = 8 pairs (causal: 5 requests x 1 cue format), two folds, short generations, one steering setting, two patched layers."""
    return [
        "scenario.limit=4",
        "scenario.system_prompts=[neutral]",
        "scenario.cue_formats=[tag, header]",
        "causal_scenario.limit=5",
        "causal_scenario.cue_formats=[tag]",
        "cache.batch_size=16",
        "probes.folds=2",
        "probes.bootstrap=20",
        "compliance.max_new_tokens=2",
        "compliance.n_bootstrap=100",
        "compliance.batch_size=16",
        "steering.n_auto_layers=1",
        "steering.alphas=[1.0]",
        "steering.ablate=false",
        "patching.layers=[0, 2]",
        "patching.window=1",
        "patching.attribution=false",
    ]


def make_adapter(out: Path, seed: int = 1) -> Path:
    """A LoRA adapter (rank 4, random non-zero weights) for ``make_tiny_model(n_layers=3, d_model=64)``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(make_tiny_model(n_layers=3, d_model=64), cfg).save_pretrained(out)
    return out


@pytest.fixture
def tiny_adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "adapter")


@pytest.fixture(scope="session")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, tiny_run_sets: list[str]
) -> Path:
    """``afprobe run default`` on the tiny model, every stage, through the command line (once per session)."""
    from afprobe.cli import main

    out = tmp_path_factory.mktemp("run") / "tiny"
    sets = [x for s in tiny_run_sets for x in ("--set", s)]
    code = main(["run", "default", "--out", str(out), "--model", str(tiny_model_path), "-q", *sets])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def embedded_lm() -> LoadedModel:
    """SmolLM2-135M-Instruct in fp32 on CPU, loaded once per session (``make setup`` fetches it)."""
    if not embedded_gguf_path(EMBEDDED_DEFAULT).exists():
        if os.environ.get("CI"):
            pytest.fail("the embedded model is not in the cache: `make setup` runs `afprobe models fetch`")
        pytest.skip("embedded model not fetched (run `afprobe models fetch`)")
    return load_model(ModelConfig(dtype="float32", device="cpu"))
