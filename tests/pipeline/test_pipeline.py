"""``afprobe run``: configs, per-stage hashes and stamps (reuse, redo, resume) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afprobe import AfprobeError
from afprobe.activations import ActivationWriter
from afprobe.cli import main
from afprobe.models import LoadedModel, make_tiny_model, make_tiny_tokenizer, wrap_model
from afprobe.pipeline import (
    Pipeline,
    RunConfig,
    dump_config,
    load_run_config,
    run_pipeline,
    shipped_configs,
)
from afprobe.pipeline._stages import BY_NAME
from afprobe.pipeline._stamps import STAMP, config_inputs
from afprobe.pipeline._stamps import stage_hash as _stage_hash

FAST = [
    "model.name=tiny",
    "scenario.limit=4",
    "scenario.system_prompts=[neutral]",
    "scenario.cue_formats=[tag, header]",
    "cache.batch_size=4",
    "probes.folds=2",
    "probes.bootstrap=20",
    "probes.probes=[mass_mean]",
    "probes.plots=false",
    "stages=[scenarios, cache, probes, report]",
]


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return wrap_model(make_tiny_model(n_layers=2, d_model=32, n_heads=2), make_tiny_tokenizer(), name="tiny")


def _run(lm: LoadedModel, out: Path, *sets: str):
    return run_pipeline(load_run_config("default", [*FAST, *sets]), out, lm=lm, progress=False)


def stage_hash(cfg: RunConfig, stage: str, upstream: dict[str, str]) -> str:
    return _stage_hash(stage, config_inputs(cfg, BY_NAME[stage].inputs), upstream)


def _statuses(result) -> dict[str, str]:
    return {r.stage: r.status for r in result.records}


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name", ["default", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "llama-3.1-70b-instruct"]
)
def test_shipped_configs_load(name: str) -> None:
    assert name in shipped_configs()
    cfg = load_run_config(name)
    assert cfg.stages[0] == "scenarios" and cfg.stages[-1] == "report"
    assert load_run_config_text_roundtrip(cfg) == cfg


def load_run_config_text_roundtrip(cfg: RunConfig) -> RunConfig:
    import yaml

    from afprobe.config import validate

    return validate(RunConfig, yaml.safe_load(dump_config(cfg)))


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["probes.bogus=1"], "unknown key 'probes.bogus'"),
        (["steering.alphas=lots"], "key 'steering.alphas'"),
        (["stages=[cache, stear]"], "unknown stage 'stear'"),
        (["cache.positions=[cue, middle]"], "cache.positions: unknown position 'middle'"),
        (
            ["cache.positions=[cue, last]", "probes.positions=[user_end]"],
            "probes.positions: position 'user_end'",
        ),
    ],
)
def test_bad_config_values_name_the_key(sets: list[str], needle: str) -> None:
    with pytest.raises(AfprobeError, match=needle.replace("[", r"\[")):
        load_run_config("default", sets)


def test_unknown_config_name() -> None:
    with pytest.raises(AfprobeError, match="unknown config 'nope'"):
        load_run_config("nope")


def test_causal_scenario_changes_only_its_keys() -> None:
    cfg = load_run_config("default", ["scenario.requests=my.csv", "causal_scenario.limit=6"])
    causal = cfg.resolved_causal_scenario
    assert causal.requests == "my.csv" and causal.limit == 6
    assert causal.cue_formats == cfg.causal_scenario.cue_formats  # type: ignore[union-attr]
    assert load_run_config(
        "default", ["causal_scenario=null"]
    ).resolved_causal_scenario == cfg.scenario.model_copy(update={"requests": "builtin"})


def test_plan_adds_what_a_stage_reads() -> None:
    cfg = load_run_config("default", ["stages=[steering]"])
    assert [s.name for s in Pipeline(cfg, Path("x")).plan()] == ["scenarios", "cache", "probes", "steering"]
    cfg = load_run_config("default", ["stages=[compliance, report]"])
    assert [s.name for s in Pipeline(cfg, Path("x")).plan()] == ["scenarios", "compliance", "report"]


def test_hash_covers_what_a_stage_computes_not_where() -> None:
    cfg = load_run_config("default")
    base = stage_hash(cfg, "probes", {"cache": "abc"})
    assert stage_hash(cfg, "probes", {"cache": "abd"}) != base
    assert stage_hash(load_run_config("default", ["probes.C=2.0"]), "probes", {"cache": "abc"}) != base
    assert stage_hash(load_run_config("default", ["probes.device=cpu"]), "probes", {"cache": "abc"}) == base
    assert stage_hash(load_run_config("default", ["steering.n_random=9"]), "probes", {"cache": "abc"}) == base
    cache = stage_hash(cfg, "cache", {})
    assert stage_hash(load_run_config("default", ["model.device=cuda"]), "cache", {}) == cache
    assert stage_hash(load_run_config("default", ["model.dtype=bfloat16"]), "cache", {}) != cache


# ---------------------------------------------------------------------------------------------- reuse / redo


def test_rerun_reuses_and_a_change_redoes_only_downstream(lm: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _run(lm, out)
    assert set(_statuses(first).values()) == {"ran"}
    assert first.report is not None and first.summary is not None
    for stage in ("scenarios", "cache", "probes", "report"):
        assert (out / stage / STAMP).is_file()
    h5_mtime = (out / "cache" / "activations.h5").stat().st_mtime_ns

    again = _run(lm, out)
    assert set(_statuses(again).values()) == {"reused"}
    assert (out / "cache" / "activations.h5").stat().st_mtime_ns == h5_mtime

    changed = _run(lm, out, "probes.bootstrap=30")
    assert _statuses(changed) == {"scenarios": "reused", "cache": "reused", "probes": "ran", "report": "ran"}

    title = _run(lm, out, "probes.bootstrap=30", "report.title=Hello")
    assert _statuses(title) == {"scenarios": "reused", "cache": "reused", "probes": "reused", "report": "ran"}
    assert "<title>Hello</title>" in (out / "report.html").read_text()

    (out / "probes" / STAMP).unlink()  # as if killed before the stage finished
    redo = _run(lm, out, "probes.bootstrap=30", "report.title=Hello")
    assert _statuses(redo) == {"scenarios": "reused", "cache": "reused", "probes": "ran", "report": "ran"}


def test_interrupted_cache_resumes_from_its_partial_file(
    lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    original = ActivationWriter.write_batch
    starts: list[int] = []

    def flaky(self, start, *args, **kwargs):
        starts.append(start)
        if len(starts) == 3:
            raise RuntimeError("killed")
        return original(self, start, *args, **kwargs)

    monkeypatch.setattr(ActivationWriter, "write_batch", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        _run(lm, out)
    assert (out / "cache" / "activations.h5.partial").is_file()
    assert not (out / "cache" / STAMP).exists()
    assert not (out / "report.html").exists() and not (out / "summary.json").exists()

    starts.clear()
    monkeypatch.setattr(ActivationWriter, "write_batch", original)
    spy: list[int] = []

    def record(self, start, *args, **kwargs):
        spy.append(start)
        return original(self, start, *args, **kwargs)

    monkeypatch.setattr(ActivationWriter, "write_batch", record)
    result = _run(lm, out)
    assert _statuses(result)["scenarios"] == "reused"
    assert _statuses(result)["cache"] == "ran"
    assert spy[0] == 8  # two batches of 4 were already in: it resumed, not restarted
    assert result.report is not None


def test_partial_from_another_config_is_discarded(
    lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    original = ActivationWriter.write_batch

    def flaky(self, start, *args, **kwargs):
        if start >= 4:
            raise RuntimeError("killed")
        return original(self, start, *args, **kwargs)

    monkeypatch.setattr(ActivationWriter, "write_batch", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        _run(lm, out)
    monkeypatch.setattr(ActivationWriter, "write_batch", original)
    result = _run(lm, out, "cache.dtype=float16")
    assert _statuses(result)["cache"] == "ran" and result.report is not None


def test_a_failed_run_leaves_no_finished_looking_report(lm: LoadedModel, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    _run(lm, out)
    assert (out / "report.html").is_file()

    def boom(*a, **k):
        raise RuntimeError("probe fit crashed")

    monkeypatch.setattr("afprobe.pipeline._stages.ProbeRunner.run", boom)
    with pytest.raises(RuntimeError):
        _run(lm, out, "probes.bootstrap=40")
    assert not (out / "report.html").exists() and not (out / "summary.json").exists()


def test_refuses_a_directory_that_is_not_a_run(lm: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AfprobeError, match="not an afprobe run"):
        _run(lm, tmp_path)


# ---------------------------------------------------------------------------------------------- bad input (CLI)

DROPS_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{'<|im_start|>user\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for name, template in (("ok", None), ("drops_system", DROPS_SYSTEM)):
        d = tmp_path_factory.mktemp(name)
        make_tiny_model(n_layers=2, d_model=32, n_heads=2).save_pretrained(d)
        tok = make_tiny_tokenizer() if template is None else make_tiny_tokenizer(chat_template=template)
        tok.save_pretrained(d)
        dirs[name] = d
    return dirs


@pytest.mark.parametrize(
    ("model", "extra", "needle"),
    [
        ("ok", ["--set", "scenario.requests=missing.csv"], "request file not found: missing.csv"),
        ("ok", ["--requests", "nowhere.jsonl"], "request file not found"),
        ("ok", ["--set", "stages=[cache, stear]"], "unknown stage 'stear'"),
        ("ok", ["--set", "cache.positions=[middle]"], "unknown position 'middle'"),
        (
            "drops_system",
            ["--set", "patching.layers=[1]"],
            "the chat template changed the system message text",
        ),
        ("ok", ["--config", "missing.yaml"], "config file not found: missing.yaml"),
        ("ok", ["unknown-config"], "unknown config 'unknown-config'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_report(
    capsys, tmp_path: Path, model_dirs: dict[str, Path], model: str, extra: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        *extra,
        "--out",
        str(out),
        "--model",
        str(model_dirs[model]),
        "-q",
        *[x for s in FAST[1:-1] for x in ("--set", s)],
    ]
    if extra and not extra[0].startswith("-"):
        args = ["run", extra[0], *args[2:]]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("afprobe: error:") and needle in lines[0], err
    assert not (out / "report.html").exists() and not (out / "summary.json").exists()


def test_bad_yaml_config_file_names_the_key(capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("scenario:\n  limit: four\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert "key 'scenario.limit'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_summary_round_trips_as_json(lm: LoadedModel, tmp_path: Path) -> None:
    result = _run(lm, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == result.summary


def test_causal_limit_below_min_requests_is_refused_with_one_line() -> None:
    with pytest.raises(AfprobeError, match=r"causal_scenario.limit=3 is below 5 requests"):
        load_run_config("default", ["causal_scenario.limit=3"])
    # without the causal stages the limit does not matter
    assert load_run_config("default", ["causal_scenario.limit=3", "stages=[compliance]"]).causal_scenario
