"""``afprobe steer``: compliance, then steering along the probe direction -> JSON + CSV (+ PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from afprobe.cli._app import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    ModelOpt,
    OverwriteOpt,
    QuietOpt,
    RequestsOpt,
    SeedOpt,
    SetOpt,
    app,
    build_config,
)

ProbesOpt = Annotated[
    Path | None,
    typer.Option(
        "--probes",
        help="Output directory of `afprobe probe` (its directions); without it, in-sample mean differences.",
    ),
]
if TYPE_CHECKING:
    from matplotlib.figure import Figure

PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="Also save the figures as PNG files.")]


@app.command("steer")
def steer(
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/steering.")],
    probes: ProbesOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    requests: RequestsOpt = None,
    limit: LimitOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    plots: PlotsOpt = True,
) -> None:
    """Steer along the probe direction (layers x alphas, both tiers, random band, ablation), against the gap."""
    from afprobe.experiments import SteerRunConfig, plot_compliance_gap, plot_dose_response, run_steering
    from afprobe.experiments._io import read_json

    cfg = build_config(
        SteerRunConfig,
        config,
        set_,
        model=model,
        requests=requests,
        limit=limit,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    result = run_steering(cfg, out, probes=probes, overwrite=overwrite, progress=not quiet)
    if plots:
        save_png(plot_dose_response(result), out / "steering_dose_response.png")
        comp = read_json(out / "compliance.json")
        save_png(plot_compliance_gap(comp, metric="logit", by="system_prompt"), out / "compliance_gap.png")
    typer.echo(f"wrote {out / 'steering.json'}")
    typer.echo(result["note"])


def save_png(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
