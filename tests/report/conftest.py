"""One finished run of the whole pipeline on the tiny random model (once per session), for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from afprobe.cli import main
from afprobe.models import make_tiny_model, make_tiny_tokenizer

# Small enough for seconds on a CPU: 4 requests x 1 system prompt x 2 cue formats = 8 pairs.
TINY_SETS = [
    "scenario.limit=4",
    "scenario.system_prompts=[neutral]",
    "scenario.cue_formats=[tag, header]",
    "causal_scenario.limit=2",
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


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(n_layers=2, d_model=32, n_heads=2).save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """``afprobe run default`` on the tiny model, every stage, through the command line."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    sets = [x for s in TINY_SETS for x in ("--set", s)]
    code = main(["run", "default", "--out", str(out), "--model", str(tiny_model_path), "-q", *sets])
    assert code == 0
    return out
