"""What a run leaves behind: summary.json with the DESIGN.md keys, a CSV behind every figure, and one
self-contained report.html (no script, nothing fetched, every image embedded)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from afprobe.cli import main
from afprobe.pipeline import run_results, stage_results
from afprobe.report import build_summary, read_stage, write_report

DESIGN_KEYS = {
    "model": None,
    "n_pairs": None,
    "compliance": {"logit", "generated"},
    "probes": {
        "best_layer",
        "best_position",
        "best_auroc",
        "best_accuracy",
        "per_layer",
        "shuffled_accuracy",
        "selectivity",
        "cross_format",
    },
    "steering": {"best_layer", "fraction_of_gap", "random_baseline"},
    "patching": {"peak_layer", "peak_position", "subspace_fraction"},
    "verdict": None,
    "timings": None,
}


def test_summary_has_the_design_keys(tiny_run: Path) -> None:
    s = json.loads((tiny_run / "summary.json").read_text())
    for key, sub in DESIGN_KEYS.items():
        assert key in s, key
        if sub:
            assert s[key] is not None and sub <= set(s[key]), (key, set(s[key] or {}))
    for metric in ("logit", "generated"):
        assert {"free", "paid", "gap", "gap_ci"} <= set(s["compliance"][metric])
    assert s["n_pairs"] == 8
    assert s["probes"]["per_layer"] and {"layer", "position", "auroc"} <= set(s["probes"]["per_layer"][0])
    assert set(s["timings"]) >= {
        "scenarios",
        "cache",
        "probes",
        "compliance",
        "steering",
        "patching",
        "report",
    }
    assert isinstance(s["verdict"], str) and s["verdict"].endswith(".")


def test_every_figure_has_its_table(tiny_run: Path) -> None:
    html = (tiny_run / "report.html").read_text()
    tables = re.findall(r"Table: <code>results/([\w.-]+\.csv)</code>", html)
    assert len(tables) >= 8
    for name in tables:
        path = tiny_run / "results" / name
        assert path.is_file(), name
        assert len(path.read_text().splitlines()) >= 2, name  # a header and at least one row
    assert (tiny_run / "report" / "figures" / "probes_auroc_by_layer.png").is_file()


def test_report_is_self_contained(tiny_run: Path) -> None:
    html = (tiny_run / "report.html").read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "@import" not in html and "url(" not in html
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)
    assert len(imgs) >= 8
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    for section in (
        "The question",
        "Verdict",
        "Setup",
        "A sample pair",
        "Compliance gap",
        "Probes by layer",
        "Generalization",
        "Steering",
        "Activation patching",
    ):
        assert section in html, section
    assert "<mark>" in html  # the tier cue is marked in the sample pair


def test_report_redraws_from_disk_only(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink()
    (run / "summary.json").unlink()
    assert main(["report", str(run)]) == 0
    before = json.loads((tiny_run / "summary.json").read_text())
    after = json.loads((run / "summary.json").read_text())
    assert after["verdict"] == before["verdict"]
    assert after["probes"] == before["probes"]
    assert (run / "report.html").is_file()


def test_stages_outside_the_run_are_not_mixed_in(tiny_run: Path) -> None:
    assert read_stage(run_results(tiny_run), "steering") is not None
    some = stage_results(tiny_run, ["scenarios", "probes"])
    assert read_stage(some, "steering") is None
    s = build_summary(some)
    assert s["steering"] is None and s["compliance"] is None and s["probes"] is not None


def test_no_finished_looking_report_on_failure(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink()
    (run / "summary.json").unlink()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("afprobe.report._html.render_html", boom)
    with pytest.raises(RuntimeError):
        write_report(run, run_results(run))
    assert not (run / "report.html").exists()
    assert not (run / "summary.json").exists()
    assert not list(run.glob(".*.partial"))


def test_report_of_a_directory_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not an afprobe run directory" in capsys.readouterr().err
