"""``afprobe relayout``: rewrite an activation file cached before the by-layer layout, for fast reads by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.activations import ActivationReader, relayout
from afprobe.cli._app import Flags, app, shared_flags


@app.command("relayout")
@shared_flags("overwrite", "quiet")
def relayout_command(
    activations: Annotated[Path, typer.Argument(help="An activation file (HDF5) written by afprobe cache.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (default: replace the input when done).")
    ] = None,
    *,
    flags: Flags,
) -> None:
    """Store resid one (layer, position) per chunk, so the probes read each as one sequential read. Same numbers,
    datasets and attributes; files cached by this version are already in that layout."""
    with ActivationReader(activations) as reader:
        before = reader.layout
    path = relayout(activations, out, overwrite=flags.overwrite, progress=flags.progress)
    if before == "by_layer" and path == activations:
        typer.echo(f"{path} is already in the by-layer layout")
    else:
        typer.echo(f"wrote {path} (by-layer layout; was {before})")
