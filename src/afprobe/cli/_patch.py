"""``afprobe patch``: activation, subspace and attribution patching between free and paid twins -> JSON + CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.cli._app import Flags, app, shared_flags
from afprobe.cli._steer import CAUSAL_FLAGS, PlotsOpt, ProbesOpt, run_causal
from afprobe.experiments import PatchingRunner, PatchRunConfig
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
    runner = PatchingRunner(
        flags.config_of(PatchRunConfig), overwrite=flags.overwrite, progress=flags.progress
    )
    figures = (lambda r: {f"patching_{k}": f for k, f in patching_heatmaps(r).items()}) if plots else None
    run_causal(runner, out, probes, figures)
