"""``afprobe steer``: compliance, then steering along the probe direction -> JSON + CSV (+ PNG plots); and what
``afprobe patch`` shares with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from matplotlib.figure import Figure

from afprobe._io import check_writable
from afprobe._lock import output_lock
from afprobe.cli._app import Flags, app, shared_flags
from afprobe.experiments import COMPLIANCE_FILE, SteeringRunner, SteerRunConfig
from afprobe.report import plot_compliance_gap, plot_dose_response, read_stage

CAUSAL_FLAGS = (
    "config",
    "set_",
    "model",
    "requests",
    "limit",
    "device",
    "dtype",
    "seed",
    "overwrite",
    "quiet",
)
ProbesOpt = Annotated[
    Path | None,
    typer.Option(
        "--probes",
        help="Output directory of `afprobe probe` (its directions); without it, in-sample mean differences.",
    ),
]
PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="Also save the figures as PNG files.")]


def run_causal(
    runner: Any,
    out: Path,
    probes: Path | None,
    figures: Callable[[dict[str, Any]], dict[str, Figure]] | None,
) -> None:
    """Run a steering or patching runner into ``out``, save its figures as PNG, print what was written."""
    check_writable(out)
    with output_lock(out):  # one writer per output directory
        result = runner.run(out, probes=probes)
    for name, fig in (figures(result) if figures else {}).items():
        fig.savefig(out / f"{name}.png", dpi=120)
    typer.echo(f"wrote {out / runner.RESULT_FILE}")
    for line in ((result.get("directions") or {}).get("note"), result["note"]):
        if line:
            typer.echo(line)


def _steering_figures(out: Path) -> Callable[[dict[str, Any]], dict[str, Figure]]:
    def figures(result: dict[str, Any]) -> dict[str, Figure]:
        comp = read_stage({"compliance": out / COMPLIANCE_FILE}, "compliance") or {}
        return {
            "steering_dose_response": plot_dose_response(result),
            "compliance_gap": plot_compliance_gap(comp, metric="logit", by="system_prompt"),
        }

    return figures


@app.command("steer")
@shared_flags(*CAUSAL_FLAGS)
def steer(
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/steering.")],
    flags: Flags,
    probes: ProbesOpt = None,
    plots: PlotsOpt = True,
) -> None:
    """Steer along the probe direction (layers x alphas, both tiers, random band, ablation), against the gap."""
    runner = SteeringRunner(
        flags.config_of(SteerRunConfig), overwrite=flags.overwrite, progress=flags.progress
    )
    run_causal(runner, out, probes, _steering_figures(out) if plots else None)
