"""``afprobe report DIR``: redraw ``summary.json``, ``results/`` and ``report.html`` from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.cli._app import app
from afprobe.pipeline import render_run_report


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A directory written by `afprobe run`.")],
) -> None:
    """Re-render the report of a run from the stages' outputs on disk (no model is loaded)."""
    summary = render_run_report(run_dir)
    typer.echo(f"verdict: {summary['verdict']}")
    typer.echo(f"report: {run_dir / 'report.html'}")
