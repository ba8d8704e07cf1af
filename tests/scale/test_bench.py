"""``python -m benchmarks`` / ``afprobe bench``: one table of ratios from every area, JSON + RESULTS.md per device;
``bench_gpu`` skips cleanly without CUDA and runs its code on CPU at a tiny shape."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from afprobe.cli import main
from afprobe.cli._bench import _benchmarks_module


@pytest.fixture
def bench():
    return _benchmarks_module()


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


def test_a_failing_area_does_not_lose_the_others(bench, fake_area, monkeypatch, tmp_path: Path) -> None:
    broken = types.ModuleType("benchmarks.bench_probes")
    broken.main = lambda: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_probes", broken)
    record = bench.run_all(["probes", "cache"], out=tmp_path)
    assert record["results"]["probes"]["note"].startswith("failed: ZeroDivisionError")
    assert record["results"]["cache"]["result"] is not None


def test_cli_bench(fake_area, tmp_path: Path, capsys) -> None:
    assert main(["bench", "--only", "cache", "--rounds", "1", "--out", str(tmp_path)]) == 0
    assert "all benchmarks on" in capsys.readouterr().out
    assert (tmp_path / "RESULTS.md").exists()
    assert main(["bench", "--only", "nonsense"]) == 2


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
