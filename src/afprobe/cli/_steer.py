"""``afprobe steer``: compliance, then steering along the probe direction -> JSON + CSV (+ PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.cli._app import Flags, app, shared_flags
from afprobe.experiments import COMPLIANCE_FILE, STEERING_FILE, SteeringRunner, SteerRunConfig
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


@app.command("steer")
@shared_flags(*CAUSAL_FLAGS)
def steer(
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/steering.")],
    flags: Flags,
    probes: ProbesOpt = None,
    plots: PlotsOpt = True,
) -> None:
    """Steer along the probe direction (layers x alphas, both tiers, random band, ablation), against the gap."""
    cfg = flags.config_of(SteerRunConfig)
    result = SteeringRunner(cfg, overwrite=flags.overwrite, progress=flags.progress).run(out, probes=probes)
    if plots:
        plot_dose_response(result).savefig(out / "steering_dose_response.png", dpi=120)
        comp = read_stage({"compliance": out / COMPLIANCE_FILE}, "compliance") or {}
        plot_compliance_gap(comp, metric="logit", by="system_prompt").savefig(
            out / "compliance_gap.png", dpi=120
        )
    typer.echo(f"wrote {out / STEERING_FILE}")
    for line in (result["directions"].get("note"), result["note"]):
        if line:
            typer.echo(line)
