"""``afprobe validate``: plant a mechanism with a known answer, run the causal tests on it, and write the
recovered-versus-planted table (``validation.json``, ``validation.md``) with pass/fail per target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe import AfprobeError
from afprobe.cli._app import Flags, app, shared_flags


@app.command("validate")
@shared_flags("config", "set_", "model", "device", "dtype", "seed", "overwrite", "quiet")
def validate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output directory (validation.json, validation.md).")],
    *,
    flags: Flags,
) -> None:
    """Does afprobe find an effect when there is one? Plant one, recover it, print the table (exit 1 on a FAIL)."""
    from afprobe.organisms import VALIDATION_FILE, ValidateRunConfig, validate, write_validation
    from afprobe.pipeline import load_run_config
    from afprobe.report import known_markdown

    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if (out / VALIDATION_FILE).exists() and not flags.overwrite:
        raise AfprobeError(f"{out} already holds {VALIDATION_FILE}; pass --overwrite to replace it")
    cfg = flags.config_of(ValidateRunConfig)
    default = load_run_config("default")
    result = validate(cfg, power_sizes=(default.scenario, default.compliance), progress=flags.progress)
    md = known_markdown(result)
    write_validation(result, out, md)
    typer.echo(md)
    typer.echo(f"wrote {out / VALIDATION_FILE}")
    if not result["all_pass"]:
        raise typer.Exit(1)
