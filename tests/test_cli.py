"""Bad input on the command line: one line naming the problem, exit code 2, nothing written."""

from pathlib import Path

import pytest

from afprobe.cli import main


def _run(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("cache", "models"):
        assert cmd in out


def test_models_lists_aliases(capsys) -> None:
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "no-such-alias"], "unknown model 'no-such-alias'"),
        (["--model", "./no/such/dir"], "model path not found"),
        (["--model", "missing.gguf"], "model file not found"),
        (["--set", "cache.layers=[0, 99]"], "layer 99 out of range"),
        (["--set", "cache.bogus=1"], "unknown key 'cache.bogus'"),
        (["--set", "cache.batch_size=lots"], "key 'cache.batch_size'"),
        (["--set", "scenario.cue_formats=[semaphore]"], "unknown cue format"),
        (["--requests", "missing.csv"], "missing.csv"),
        (["--config", "missing.yaml"], "config file not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, tiny_model_dir: Path, extra, needle) -> None:
    out = tmp_path / "x.h5"
    args = ["cache", "--model", str(tiny_model_dir), "--limit", "1", "--out", str(out), "-q", *extra]
    code, err = _run(capsys, args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("afprobe: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert not list(tmp_path.glob("x.h5*"))


@pytest.mark.parametrize(
    ("content", "suffix", "needle"),
    [("", ".txt", "no requests"), ("same request\nsame request\n", ".txt", "duplicate")],
)
def test_empty_or_duplicate_request_files(
    capsys, tmp_path: Path, tiny_model_dir: Path, content, suffix, needle
):
    req = tmp_path / f"reqs{suffix}"
    req.write_text(content)
    code, err = _run(
        capsys,
        [
            "cache",
            "--model",
            str(tiny_model_dir),
            "--requests",
            str(req),
            "--out",
            str(tmp_path / "x.h5"),
            "-q",
        ],
    )
    assert code == 2 and needle in err.lower(), err
    assert not list(tmp_path.glob("x.h5*"))


@pytest.mark.parametrize("dry", [False, True])
def test_a_run_with_a_layer_the_model_lacks_stops_before_any_stage(
    capsys, tmp_path: Path, tiny_model_dir: Path, dry: bool
) -> None:
    """A layer a later stage names (here patching's) is checked when the model is loaded, and by ``--dry-run``
    from its shape: one line and exit 2 before the cache is written, not after steering has run."""
    run = tmp_path / "run"
    args = ["run", "--model", str(tiny_model_dir), "--out", str(run), "--set", "patching.layers=[1,9]", "-q"]
    code, err = _run(capsys, [*args, "--dry-run"] if dry else args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("afprobe: error:")]
    assert len(lines) == 1 and "patching.layers: layer 9 out of range" in lines[0], err
    assert not (run / "cache").exists()


def test_output_path_that_is_a_directory(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    code, err = _run(capsys, ["cache", "--model", str(tiny_model_dir), "--out", str(tmp_path), "-q"])
    assert code == 2 and "is a directory" in err


def test_cache_cli_writes_a_finished_file(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "ok.h5"
    args = [
        "cache",
        "--model",
        str(tiny_model_dir),
        "--limit",
        "2",
        "--out",
        str(out),
        "-q",
        "--set",
        "scenario.cue_formats=[tag]",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    assert out.exists()
    code, err = _run(capsys, args)
    assert code == 2 and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0


def test_missing_required_option_is_a_usage_error(capsys) -> None:
    assert main(["cache"]) == 2
