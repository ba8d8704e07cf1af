"""``afprobe run [CONFIG] --out DIR``: every stage, from prompts to ``DIR/report.html``, reusing what is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe import AfprobeError
from afprobe.cli._app import Flags, app, shared_flags
from afprobe.pipeline import (
    STAGE_NAMES,
    check_fits,
    check_model_layers,
    estimate_run,
    load_run_config,
    run_pipeline,
    shipped_configs,
    stamped_seconds,
)

ConfigArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[CONFIG]",
        help=f"A shipped config ({', '.join(shipped_configs())}) or a YAML file. Default: default.",
        show_default=False,
    ),
]


@app.command("run")
@shared_flags("config", "set_", "model", "requests", "limit", "device", "dtype", "seed", "quiet")
def run(
    flags: Flags,
    config_name: ConfigArg = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory. Default: runs/CONFIG (runs/default, runs/paper, ...).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print each stage's tokens, forward passes, disk, memory and time (no weights loaded) and stop; "
            "refuses a run that cannot fit on the disk of --out. When --out holds a run, what its stages took "
            "is printed beside the estimate.",
        ),
    ] = False,
) -> None:
    """Scenarios -> cache -> probes -> compliance -> steering -> patching -> report, under one progress display.

    Each stage is keyed by a hash of its inputs: a re-run reuses what has not changed and an interrupted run
    resumes. Writes DIR/summary.json, DIR/results/*.csv and DIR/report.html.
    """
    if config_name is not None and flags.config is not None:
        raise AfprobeError("give the config once: as the CONFIG argument or as --config, not both")
    spec = flags.config if flags.config is not None else config_name
    cfg = load_run_config(spec, [*flags.overrides(), *(flags.set_ or [])])
    if out is None:
        out = Path("runs") / (Path(spec).stem if spec is not None else "default")
    if dry_run:
        est = estimate_run(cfg)
        check_model_layers(cfg, est.model.n_layers, cfg.model.name)
        typer.echo(est.table(stamped_seconds(out, STAGE_NAMES)))
        check_fits(est, out)
        typer.echo(f"fits: {out} has room for the run's outputs")
        return
    result = run_pipeline(cfg, out, progress=flags.progress, log=(lambda _msg: None) if flags.quiet else None)
    summary = result.summary or {}
    ran = [r.stage for r in result.records if r.status == "ran"]
    reused = [r.stage for r in result.records if r.status == "reused"]
    typer.echo(f"stages run: {', '.join(ran) or 'none'}; reused: {', '.join(reused) or 'none'}")
    if summary.get("verdict"):
        typer.echo(f"verdict: {summary['verdict']}")
    if result.report is not None:
        typer.echo(f"report: {result.report}")
        typer.echo(f"summary: {out / 'summary.json'}; tables: {out / 'results'}/")
