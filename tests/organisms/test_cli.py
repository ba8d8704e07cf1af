"""``afprobe organism plant`` on the tiny model: a sweep of model directories with their truth; bad input is one
line, exit 2, and nothing that looks finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afprobe.cli import main
from afprobe.organisms import PLANTED_FILE, SWEEP_FILE

QUICK = ["--limit", "2", "-q", "--set", "scenario.cue_formats=[tag]", "--set", "plant.generations=0"]
QUICK += ["--set", "plant.n_gradient=2", "--set", "plant.n_bootstrap=100"]


def test_plant_sweep(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "planted"
    args = ["organism", "plant", "--model", str(tiny_model_dir), "--out", str(out), "--block", "1"]
    assert main([*args, "--strength", "0", "--strength", "20", *QUICK]) == 0
    said = capsys.readouterr().out
    assert "planted in block 1 (reads layer 1, writes layer 2)" in said
    sweep = json.loads((out / SWEEP_FILE).read_text())
    assert [p["dir"] for p in sweep["points"]] == ["strength-0", "strength-20"]
    rec = json.loads((out / "strength-20" / PLANTED_FILE).read_text())
    assert rec["mechanism"]["block"] == 1 and rec["mechanism"]["strength"] == 20.0
    assert main([*args, "--strength", "1", *QUICK]) == 2  # a finished output is not replaced
    assert "pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--gap", "1", "--strength", "2"], "give --gap or --strength, not both"),
        (["--block", "7"], "block 7 out of range"),
        (["--block", "0"], "free and paid prompts have the same residual"),  # the embeddings at `last`
        (["--block", "2"], "does not depend on block 2's output"),  # the last block's output at `last`
        (["--gap", "-1"], "key 'plant.gaps'"),
    ],
)
def test_bad_input(capsys, tmp_path: Path, tiny_model_dir: Path, extra: list[str], needle: str) -> None:
    out = tmp_path / "planted"
    code = main(["organism", "plant", "--model", str(tiny_model_dir), "--out", str(out), *QUICK, *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("afprobe: error:")]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()
