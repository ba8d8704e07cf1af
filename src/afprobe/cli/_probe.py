"""``afprobe probe``: an activation file -> probe accuracy by layer and position, controls, directions, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.cli._app import ConfigOpt, DeviceOpt, OverwriteOpt, QuietOpt, SeedOpt, SetOpt, app, build_config
from afprobe.probes import ProbeConfig, ProbeRunner, read_probe_results


@app.command("probe")
def probe(
    activations: Annotated[Path, typer.Argument(help="Activation file written by `afprobe cache`.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/probes.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit probes at every layer and named position with request-grouped folds, controls and generalization."""
    sets = [*([f"device='{device}'"] if device else []), *(set_ or [])]
    cfg = build_config(ProbeConfig, config, sets, seed=seed)
    path = ProbeRunner(cfg, overwrite=overwrite, progress=not quiet).run(activations, out)
    best = read_probe_results(path)["best"]
    if best is not None and not quiet:
        typer.echo(
            f"best after the cue: layer {best['layer']} {best['position']} ({best['probe']}): "
            f"AUROC {best['auroc']:.3f}, accuracy {best['accuracy']:.3f}, selectivity {best['selectivity']:.3f}"
        )
    typer.echo(f"wrote {path}")
