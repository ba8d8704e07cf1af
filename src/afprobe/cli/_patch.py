"""``afprobe patch``: activation, subspace and attribution patching between free and paid twins -> JSON + CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.cli._app import Flags, app, shared_flags
from afprobe.cli._steer import CAUSAL_FLAGS, PlotsOpt, ProbesOpt
from afprobe.experiments import PATCHING_FILE, PatchingRunner, PatchRunConfig
from afprobe.report import patching_heatmaps


@app.command("patch")
@shared_flags(*CAUSAL_FLAGS)
def patch(
    out: Annotated[Path, typer.Option("--out", help="Output directory, e.g. runs/x/patching.")],
    flags: Flags,
    probes: ProbesOpt = None,
    plots: PlotsOpt = True,
) -> None:
    """Patch free <-> paid activations per layer x position and around the cue; subspace and attribution."""
    cfg = flags.config_of(PatchRunConfig)
    result = PatchingRunner(cfg, overwrite=flags.overwrite, progress=flags.progress).run(out, probes=probes)
    if plots:
        for name, fig in patching_heatmaps(result).items():
            fig.savefig(out / f"patching_{name}.png", dpi=120)
    typer.echo(f"wrote {out / PATCHING_FILE}")
    for line in ((result.get("directions") or {}).get("note"), result["note"]):
        if line:
            typer.echo(line)
