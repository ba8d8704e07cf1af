"""One finished run of the whole pipeline on the tiny random model (once per session), for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from afprobe.cli import main


@pytest.fixture(scope="session")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, tiny_run_sets: list[str]
) -> Path:
    """``afprobe run default`` on the tiny model, every stage, through the command line."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    sets = [x for s in tiny_run_sets for x in ("--set", s)]
    code = main(["run", "default", "--out", str(out), "--model", str(tiny_model_path), "-q", *sets])
    assert code == 0
    return out
