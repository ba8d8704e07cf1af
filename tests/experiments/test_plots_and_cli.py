"""Plots return figures; ``afprobe steer`` and ``afprobe patch`` run end to end and write JSON + CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from afprobe.cli import main
from afprobe.report import plot_compliance_gap, plot_dose_response, plot_patching_heatmap

TINY_STEER = [
    "--limit",
    "1",
    "-q",
    "--set",
    "scenario.cue_formats=[sentence]",
    "--set",
    "steering.layers=[1, 3]",
    "--set",
    "steering.alphas=[-0.5, 0.5]",
    "--set",
    "compliance.max_new_tokens=4",
    "--set",
    "compliance.n_bootstrap=100",
]
TINY_PATCH = [
    "--limit",
    "1",
    "-q",
    "--set",
    "scenario.cue_formats=[sentence, tag]",
    "--set",
    "patching.window=1",
    "--set",
    "compliance.n_bootstrap=100",
]


def _steer_out(tmp_path: Path, model_dir: Path, capsys) -> tuple[Path, dict]:
    out = tmp_path / "steer"
    code = main(["steer", "--model", str(model_dir), "--out", str(out), *TINY_STEER])
    assert code == 0, capsys.readouterr().err
    return out, json.loads((out / "steering.json").read_text())


def test_afprobe_steer_writes_results(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out, res = _steer_out(tmp_path, tiny_model_dir, capsys)
    for name in (
        "compliance.json",
        "compliance.csv",
        "steering.csv",
        "steering_dose_response.png",
        "compliance_gap.png",
    ):
        assert (out / name).is_file(), name
    assert {"best_layer", "fraction_of_gap", "random_baseline", "natural_gap", "grid", "note"} <= set(res)
    assert res["layers"] == [1, 3] and res["n_random"] == 8
    comp = json.loads((out / "compliance.json").read_text())
    for block in ("logit", "generated"):
        assert {"free", "paid", "gap", "gap_ci"} <= set(comp[block])
    rows = list(csv.DictReader((out / "steering.csv").open()))
    assert {r["kind"] for r in rows} == {"clean", "probe", "random", "ablate", "random_ablate"}
    assert res["clean_consistency_max_abs"] < 1e-3
    # a finished result is not silently replaced
    code = main(["steer", "--model", str(tiny_model_dir), "--out", str(out), *TINY_STEER])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_afprobe_patch_writes_results(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out = tmp_path / "patch"
    code = main(["patch", "--model", str(tiny_model_dir), "--out", str(out), *TINY_PATCH])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "patching.json").read_text())
    assert {
        "peak_layer",
        "peak_position",
        "subspace_fraction",
        "denoise",
        "noise",
        "window",
        "attribution",
    } <= set(res)
    assert res["n_pairs"] == 4 and res["n_aligned_pairs"] == 2  # the tag cue is not token-aligned on bytes
    assert (
        len(res["denoise"]["raw"]) == 4
        and len(res["denoise"]["raw"][0]) == 5
        and res["sites"][-1] == "response"
    )
    assert "spearman" in res["attribution"]
    for name in ("patching.csv", "patching_pairs.csv", "patching_denoise.png"):
        assert (out / name).is_file()


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory, tiny_model_path: Path) -> Path:
    """A default ``afprobe probe`` output on the tiny model: layer 0 at ``last`` and ``user_end`` holds the same
    token on both tiers, so its directions are zero (the case a divergent loader once refused)."""
    d = tmp_path_factory.mktemp("probed")
    limit = ["--limit", "4", "-q", "--set", "scenario.cue_formats=[sentence, tag]"]
    assert main(["cache", "--model", str(tiny_model_path), "--out", str(d / "a.h5"), *limit]) == 0
    assert main(["probe", str(d / "a.h5"), "--out", str(d / "probes"), "-q", "--set", "probes.folds=2"]) == 0
    return d / "probes"


@pytest.mark.parametrize("command", ["steer", "patch"])
def test_steer_and_patch_take_a_default_probe_output(
    tmp_path: Path, tiny_model_path: Path, probe_dir: Path, capsys, command: str
) -> None:
    out = tmp_path / command
    extra = (
        ["--set", "steering.alphas=[1.0]", "--set", "steering.n_auto_layers=2"] if command == "steer" else []
    )
    args = [command, "--model", str(tiny_model_path), "--out", str(out), "--probes", str(probe_dir)]
    code = main([*args, "--limit", "1", "-q", "--set", "compliance.max_new_tokens=2", "--no-plots", *extra])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    res = json.loads((out / ("steering.json" if command == "steer" else "patching.json")).read_text())
    meta = res["directions"]
    assert meta["source"].startswith("probes:") and 0 in meta["skipped_layers"] and 0 not in meta["layers"]
    assert "zero direction" in meta["note"] and "zero direction" in printed.out
    results = json.loads((probe_dir / "probe_results.json").read_text())
    if results["best"]["position"] == "last":  # the one best-layer rule: the probes' headline
        assert meta["best_layer"] == results["best"]["layer"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--probes", "no/such/dir"], "no probe directions"),
        (["--set", "steering.layers=[7]"], "layer 7 out of range"),
        (["--set", "steering.n_random=3"], "steering.n_random"),
        (["--set", "steering.edit_start=middle"], "steering.edit_start"),
    ],
)
def test_steer_bad_input_exits_2(tmp_path: Path, tiny_model_dir: Path, capsys, extra, needle) -> None:
    code = main(
        ["steer", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--limit", "1", "-q", *extra]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("afprobe: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o" / "steering.json").exists()


def test_patch_bad_position_exits_2(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    code = main(
        [
            "patch",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "o"),
            "--limit",
            "1",
            "-q",
            "--set",
            "patching.positions=[middle]",
        ]
    )
    assert code == 2 and "unknown position" in capsys.readouterr().err


def test_plots_return_figures(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out, res = _steer_out(tmp_path, tiny_model_dir, capsys)
    assert isinstance(plot_dose_response(res), Figure)
    comp = json.loads((out / "compliance.json").read_text())
    assert isinstance(plot_compliance_gap(comp, metric="generated", by="cue_format"), Figure)
    fig = plot_patching_heatmap([[0.0, 1.0], [None, 0.5]], [0, 1], ["cue", "last"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
