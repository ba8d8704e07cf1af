"""``afprobe patch``: activation, subspace and attribution patching between free and paid twins -> JSON + CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from afprobe.cli._steer import PlotsOpt, ProbesOpt, save_png


@app.command("patch")
def patch(
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/patching.")],
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
    """Patch free <-> paid activations per layer x position and around the cue; subspace and attribution."""
    from afprobe.experiments import PatchRunConfig, plot_patching_heatmap, run_patching

    cfg = build_config(
        PatchRunConfig,
        config,
        set_,
        model=model,
        requests=requests,
        limit=limit,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    result = run_patching(cfg, out, probes=probes, overwrite=overwrite, progress=not quiet)
    if plots:
        defined = result["normalization"] == "defined"
        for direction in ("denoise", "noise"):
            if direction in result:
                m = result[direction]["normalized" if defined else "raw"]
                fig = plot_patching_heatmap(
                    m,
                    result["layers"],
                    result["positions"],
                    normalized=defined,
                    title=f"{direction} (0 = paid run, 1 = free run)",
                )
                save_png(fig, out / f"patching_{direction}.png")
    typer.echo(f"wrote {out / 'patching.json'}")
    typer.echo(result["note"])
