"""``afprobe probe``: an activation file -> probe accuracy by layer and position, controls, directions, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe._io import check_writable
from afprobe._lock import output_lock
from afprobe.cli._app import Flags, app, shared_flags
from afprobe.probes import ProbeRunConfig, ProbeRunner, read_probe_results


@app.command("probe")
@shared_flags("config", "set_", "device", "seed", "overwrite", "quiet")
def probe(
    activations: Annotated[Path, typer.Argument(help="Activation file written by `afprobe cache`.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/probes.")],
    flags: Flags,
) -> None:
    """Fit probes at every layer and named position with request-grouped folds, controls and generalization."""
    cfg = flags.config_of(ProbeRunConfig, keys={"device": "probes.device"})
    check_writable(out)  # before any fitting: the results are written at the end
    with output_lock(
        out
    ):  # a second `afprobe probe` into the same directory is refused now, not after fitting
        path = ProbeRunner(cfg, overwrite=flags.overwrite, progress=flags.progress).run(
            out, activations=activations
        )
    best = read_probe_results(path)["best"]
    if best is not None and not flags.quiet:
        typer.echo(
            f"best after the cue: layer {best['layer']} {best['position']} ({best['probe']}): "
            f"AUROC {best['auroc']:.3f}, accuracy {best['accuracy']:.3f}, selectivity {best['selectivity']:.3f}"
        )
    typer.echo(f"wrote {path}")
