"""``python -m benchmarks`` (``make bench``): one table of ratios from every area, JSON + RESULTS.md per device;
``bench_gpu`` skips cleanly without CUDA and runs its code on CPU at a tiny shape."""

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch


@pytest.fixture
def bench():
    """``benchmarks/__main__.py`` of this checkout (benchmarks are not installed; pytest runs from its root)."""
    return importlib.import_module("benchmarks.__main__")


@pytest.fixture
def fake_area(monkeypatch):
    mod = types.ModuleType("benchmarks.bench_cache")
    seen = {}

    def fake_main(rounds: int = 3) -> dict:
        seen["rounds"] = rounds
        return {"times_s": {"bare": 2.0, "afprobe": 2.2, "nnsight": 5.0}, "cache_ratio": 1.1, "target": 1.1}

    mod.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_cache", mod)
    return seen


def test_one_table_json_and_results_md(bench, fake_area, tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n## NVIDIA H100 80GB HBM3\n\nkept as is\n")
    record = bench.run_all(["cache", "nosuch"], rounds=1, out=tmp_path)
    assert fake_area["rounds"] == 1
    rows = {(r["area"], r["measure"]): r for r in record["rows"]}
    assert rows[("cache", "afprobe")]["value"] == pytest.approx(1.1)
    assert rows[("cache", "nnsight")]["value"] == pytest.approx(2.5)
    assert rows[("cache", "cache_ratio")]["note"] == "target=1.1"
    assert any("bench_nosuch.py is missing" in m for a, m in rows if a == "nosuch")
    (js,) = tmp_path.glob("results-*.json")
    assert json.loads(js.read_text())["device"] == bench.device_name()
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## NVIDIA H100 80GB HBM3\n\nkept as is" in md  # another device's section survives
    assert f"## {bench.device_name()}" in md and "| cache" in md
    bench.run_all(["cache"], rounds=1, out=tmp_path)
    assert (tmp_path / "RESULTS.md").read_text().count(f"## {bench.device_name()}") == 1


def test_only_keeps_the_other_areas_of_this_device(bench, fake_area, monkeypatch, tmp_path: Path) -> None:
    """``--only probes`` after a run of ``cache`` updates the probes rows and keeps the cache rows, each dated by
    its own run; a full run starts afresh."""
    bench.run_all(["cache"], out=tmp_path)
    probes = types.ModuleType("benchmarks.bench_probes")
    probes.main = lambda: {"times_s": {"sklearn": 1.0, "torch": 0.1}, "speedup": 10.0}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_probes", probes)
    json_path = next(tmp_path.glob("results-*.json"))
    record = json.loads(json_path.read_text())
    record["results"]["cache"]["created"] = "2026-01-01T00:00:00+00:00"  # as if measured in an earlier run
    json_path.write_text(json.dumps(record))
    merged = bench.run_all(["probes"], out=tmp_path)
    assert list(merged["results"]) == ["cache", "probes"]
    measures = {(r["area"], r["measure"]) for r in merged["rows"]}
    assert ("cache", "afprobe") in measures and ("probes", "speedup") in measures
    md = (tmp_path / "RESULTS.md").read_text()
    assert "Areas from separate runs" in md and "cache 2026-01-01T00:00:00+00:00" in md and "| probes" in md
    monkeypatch.setattr(bench, "AREAS", ("probes",))
    fresh = bench.run_all(None, out=tmp_path)
    assert list(fresh["results"]) == ["probes"]
    assert "Areas from separate runs" not in (tmp_path / "RESULTS.md").read_text()


def test_a_failing_area_does_not_lose_the_others(bench, fake_area, monkeypatch, tmp_path: Path) -> None:
    broken = types.ModuleType("benchmarks.bench_probes")
    broken.main = lambda: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_probes", broken)
    record = bench.run_all(["probes", "cache"], out=tmp_path)
    assert record["results"]["probes"]["note"].startswith("failed: ZeroDivisionError")
    assert record["results"]["cache"]["result"] is not None


def test_command_line(bench, fake_area, tmp_path: Path, capsys) -> None:
    assert bench.main(["--only", "cache", "--rounds", "1", "--out", str(tmp_path)]) == 0
    assert "all benchmarks on" in capsys.readouterr().out
    assert (tmp_path / "RESULTS.md").exists()
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "nonsense"])
    assert e.value.code == 2


def test_bench_gpu_skips_cleanly_without_cuda(bench) -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from benchmarks import bench_gpu

    assert bench_gpu.main() == {"skipped": "no CUDA device"}
    row = bench.rows_for("gpu", {"skipped": "no CUDA device"})
    assert row == []


def test_bench_gpu_code_runs_on_cpu_at_a_tiny_shape(bench) -> None:
    from benchmarks import bench_gpu

    r = bench_gpu.main(batches=2, batch_size=2, seq=32, rounds=1, shape="tiny", device="cpu")
    assert set(r["times_s"]) == set(r["tokens_per_s"]) and len(r["times_s"]) == 3
    assert r["cache_throughput_ratio"] > 0 and r["bare_forward_fraction_of_bf16_peak"] is None
    assert bench_gpu.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_gpu.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bench_gpu.bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    cfg = bench_gpu.build_model("tiny", "cpu", torch.float32).config
    assert bench_gpu.forward_flops_per_token(cfg, 32) > 2 * 3 * 64 * 64
