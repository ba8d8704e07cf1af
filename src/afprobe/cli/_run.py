"""``afprobe run [CONFIG] --out DIR``: every stage, from prompts to ``DIR/report.html``, reusing what is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe._errors import AfprobeError
from afprobe.cli._app import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    ModelOpt,
    QuietOpt,
    RequestsOpt,
    SeedOpt,
    SetOpt,
    app,
    shared_overrides,
)

ConfigArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[CONFIG]",
        help="A shipped config (default, llama-3.1-8b-instruct, qwen2.5-7b-instruct, llama-3.1-70b-instruct) "
        "or a YAML file. Default: default.",
        show_default=False,
    ),
]


@app.command("run")
def run(
    config_name: ConfigArg = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory, e.g. runs/default.")] = Path(
        "runs/default"
    ),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    requests: RequestsOpt = None,
    limit: LimitOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scenarios -> cache -> probes -> compliance -> steering -> patching -> report, under one progress display.

    Each stage is keyed by a hash of its inputs: a re-run reuses what has not changed and an interrupted run
    resumes. Writes DIR/summary.json, DIR/results/*.csv and DIR/report.html.
    """
    from afprobe.experiments._pipeline import load_run_config, run_pipeline

    if config_name is not None and config is not None:
        raise AfprobeError("give the config once: as the CONFIG argument or as --config, not both")
    spec = config if config is not None else config_name
    if quiet:
        _quiet_libraries()
    flags = shared_overrides(
        model=model, requests=requests, limit=limit, device=device, dtype=dtype, seed=seed
    )
    cfg = load_run_config(spec, [*flags, *(set_ or [])])
    result = run_pipeline(cfg, out, progress=not quiet, log=None if not quiet else (lambda _msg: None))
    summary = result.summary or {}
    ran = [r.stage for r in result.records if r.status == "ran"]
    reused = [r.stage for r in result.records if r.status == "reused"]
    typer.echo(f"stages run: {', '.join(ran) or 'none'}; reused: {', '.join(reused) or 'none'}")
    if summary.get("verdict"):
        typer.echo(f"verdict: {summary['verdict']}")
    if result.report is not None:
        typer.echo(f"report: {result.report}")
        typer.echo(f"summary: {out / 'summary.json'}; tables: {out / 'results'}/")


def _quiet_libraries() -> None:
    """No third-party progress bars either (model loading, GGUF conversion) under ``--quiet``."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
