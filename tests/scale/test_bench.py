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


def test_exponents_and_curve_tables_reach_results_md(bench, monkeypatch, tmp_path: Path) -> None:
    """An area's ``exponent`` numbers become rows and its ``markdown`` goes under the table in RESULTS.md."""
    from benchmarks._memory import slope
    from benchmarks.bench_growth import exponents, markdown

    assert slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    assert slope([10, 100], [5.0, 5.0]) == pytest.approx(0.0)
    curves = {
        "probes_vs_prompts (d 8)": {
            "size": "prompts",
            "points": [
                {"prompts": n, "batched_cpu_s": 0.01 * n, "peak_mib": 2.0 * n**2} for n in (10, 20, 40)
            ],
        }
    }
    exps = exponents(curves)
    assert exps["probes_vs_prompts: batched_cpu_s"] == pytest.approx(1.0)
    assert exps["probes_vs_prompts: peak_mib"] == pytest.approx(2.0)
    growth = types.ModuleType("benchmarks.bench_growth_fake")
    growth.main = lambda: {"exponent": exps, "markdown": markdown(curves, exps)}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_growth", growth)
    record = bench.run_all(["growth"], out=tmp_path)
    measures = {r["measure"]: r["value"] for r in record["rows"]}
    assert measures["exponent: probes_vs_prompts: batched_cpu_s"] == pytest.approx(1.0)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "### growth" in md and "| 40 | 0.4 | 3.2e+03 |" in md


def test_growth_points_run_at_tiny_sizes(tmp_path: Path) -> None:
    """The probe point (batched vs scikit-learn on the stage's problems) and the cache point (the cache's own
    loop on a random-init Llama) at sizes that take a second."""
    from benchmarks.bench_growth import _cache_point, _llama, _probe_point

    p = _probe_point(96, 32)
    assert p["solver"] == "newton" and p["batched_cpu_s"] > 0 and p["sklearn_cpu_s_extrapolated"] > 0
    c = _cache_point(_llama("tiny", 1), 4, tmp_path)
    assert c["cpu_s"] > 0 and not list(tmp_path.iterdir())  # the file is removed


def test_hdf5_bench_reads_the_same_bytes_both_ways(tmp_path: Path) -> None:
    """On a small file: the by-layer slice is one chunk (one byte range); h5py and the raw reads see it; the
    residency check answers a fraction."""
    from benchmarks import bench_hdf5

    path = tmp_path / "a.h5"
    bench_hdf5.write_file(path, 64, 2, 2, 32, old_layout=False)
    (ranges,) = [bench_hdf5.slice_ranges(path, 1, 0)]
    assert len(ranges) == 1 and ranges[0][1] == 64 * 32 * 2
    old = tmp_path / "b.h5"
    bench_hdf5.write_file(old, 64, 2, 2, 32, old_layout=True)
    assert len(bench_hdf5.slice_ranges(old, 1, 0)) == 4
    bench_hdf5.evict(path)
    assert 0.0 <= bench_hdf5.resident_fraction(path, *ranges[0]) <= 1.0
    m = bench_hdf5.measure(path, [(1, 0)])
    assert m["slice_mib"] == pytest.approx(64 * 32 * 2 / 2**20) and m["fraction"] > 0
