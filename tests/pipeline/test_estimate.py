"""``afprobe run --dry-run``: the estimate of each stage's cost from the config and the model's shape, checked
against what a run really writes, and the refusal of a run that cannot fit on its disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from afprobe import AfprobeError
from afprobe.cli import main
from afprobe.models import make_tiny_model, make_tiny_tokenizer
from afprobe.pipeline import ACTIVATIONS, check_fits, estimate_run, load_run_config, model_shape, run_pipeline

SETS = [
    "scenario.limit=4",
    "scenario.system_prompts=[neutral]",
    "scenario.cue_formats=[tag, header]",
    "cache.batch_size=4",
    "stages=[scenarios, cache]",
]


def _model(tmp: Path, n_layers: int, d_model: int) -> Path:
    d = tmp / f"tiny-{n_layers}-{d_model}"
    make_tiny_model(n_layers=n_layers, d_model=d_model, n_heads=2).save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize(("n_layers", "d_model", "dtype"), [(2, 32, "float32"), (3, 128, "float16")])
def test_cache_bytes_within_a_quarter_of_the_file_written(tmp_path: Path, n_layers, d_model, dtype) -> None:
    model = _model(tmp_path, n_layers, d_model)
    cfg = load_run_config("default", [*SETS, f"model.name={model}", f"cache.dtype={dtype}"])
    est = estimate_run(cfg, rate=1e10)
    assert est.tokens_exact and est.model.d_model == d_model and est.model.n_layers == n_layers
    cache = next(s for s in est.stages if s.stage == "cache")
    assert cache.prompts == 16 and cache.forward_passes == 16
    run_pipeline(cfg, tmp_path / "run", progress=False)
    written = (tmp_path / "run" / "cache" / ACTIVATIONS).stat().st_size
    assert abs(cache.disk_bytes - written) / written <= 0.25, (cache.disk_bytes, written)


def test_dry_run_beside_a_finished_run(tmp_path: Path, capsys) -> None:
    """With --out a finished run, the dry run prints what each of its stages took beside the estimate."""
    model = _model(tmp_path, 2, 32)
    sets = [x for s in [*SETS, f"model.name={model}"] for x in ("--set", s)]
    assert main(["run", "--dry-run", "--out", str(tmp_path / "run"), *sets, "-q"]) == 0
    assert "measured" not in capsys.readouterr().out  # nothing has run there yet
    run_pipeline(load_run_config("default", [*SETS, f"model.name={model}"]), tmp_path / "run", progress=False)
    assert main(["run", "--dry-run", "--out", str(tmp_path / "run"), *sets, "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "measured" in lines[0]
    estimated, took = next(line for line in lines if line.startswith("cache ")).split()[-2:]
    assert estimated.endswith("s") and took.endswith("s") and float(took[:-1]) >= 0
    assert next(line for line in lines if line.startswith("total ")).split()[-1].endswith("s")


def test_times_scale_with_the_rate_and_the_table_names_it() -> None:
    """Every stage's time is FLOPs over the rate plus per-call costs: a rate 4x higher takes less than half the
    time but more than a quarter, and the table says which rate it assumed."""
    cfg = load_run_config("default")
    slow, fast = estimate_run(cfg, rate=4e10), estimate_run(cfg, rate=1.6e11)
    assert slow.seconds / 4 < fast.seconds < slow.seconds / 2
    assert "at 40 GFLOP/s" in slow.table() and "at 160 GFLOP/s" in fast.table()


def test_shapes_without_weights() -> None:
    big = model_shape("llama-3.1-70b-instruct")
    assert (big.n_layers, big.d_model) == (80, 8192) and 6.5e10 < big.n_params < 7.5e10
    emb = model_shape("smollm2-135m-instruct")
    assert 1.2e8 < emb.n_params < 1.5e8
    with pytest.raises(AfprobeError, match="cannot tell the shape"):
        model_shape("no-such-org/no-such-model")


def test_a_run_too_big_for_the_disk_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The 70B config caches 80 layers x 4 positions x 8192 floats per prompt: refused on a disk with 1 GB free
    (a fake free-space function), accepted with 10 TB; the CLI exits 2 with one line."""
    cfg = load_run_config("llama-3.1-70b-instruct")
    est = estimate_run(cfg, rate=1e12)
    cache = next(s for s in est.stages if s.stage == "cache")
    assert cache.disk_bytes > cache.prompts * 81 * 4 * 8192 * 2
    with pytest.raises(AfprobeError, match=r"needs about .* on disk"):
        check_fits(est, tmp_path, free=lambda _p: 10**9)
    check_fits(est, tmp_path, free=lambda _p: 10**13)
    import afprobe.pipeline._estimate as estimate

    monkeypatch.setattr(estimate, "free_bytes", lambda _p: 10**6)
    code = main(["run", "llama-3.1-70b-instruct", "--dry-run", "--out", str(tmp_path / "x"), "-q"])
    assert code == 2 and not (tmp_path / "x").exists()


def test_the_paper_stages_are_estimated() -> None:
    """The scratchpad sampling and the transcripts' replay have rows of their own: the sampling's cost follows
    the turns' length, a local judge's votes add to it and an endpoint's do not; the replay stores every layer
    of each span of every transcript."""

    def stage(name: str, *sets: str):  # type: ignore[no-untyped-def]
        est = estimate_run(load_run_config("paper", list(sets)), rate=1e11)
        return next(s for s in est.stages if s.stage == name)

    base = stage("scratchpad")
    rows = 8 * 2 * 2  # 8 pairs, 2 samples
    assert base.prompts == 16 and base.forward_passes == rows * (1 + 2 * (48 + 16))
    assert stage("scratchpad", "scratchpad.max_new_tokens=96").seconds > 1.2 * base.seconds
    assert stage("scratchpad", "scratchpad.judge.kind=local").seconds > 2 * base.seconds
    endpoint = stage(
        "scratchpad", "scratchpad.judge.kind=endpoint", "scratchpad.judge.base_url=http://127.0.0.1:1"
    )
    assert endpoint.seconds == base.seconds and "endpoint" in endpoint.note
    replay = stage("transcripts")
    assert replay.prompts == rows and replay.disk_bytes >= rows * 31 * 1 * 576 * 4
    no_sampling = estimate_run(load_run_config("default"), rate=1e11)
    assert not {"scratchpad", "transcripts"} & {s.stage for s in no_sampling.stages}


def test_the_run_directory_defaults_to_the_config_name(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "paper", "--dry-run", "-q"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == f"fits: {Path('runs') / 'paper'} has room for the run's outputs"
    )
    assert main(["run", "--dry-run", "-q"]) == 0
    assert "runs/default" in capsys.readouterr().out.splitlines()[-1]
