"""``afprobe cache``: residual stream at named positions -> one HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.activations import CacheRunConfig, CacheRunner
from afprobe.cli._app import Flags, app, shared_flags


@app.command("cache")
@shared_flags("config", "set_", "model", "requests", "limit", "device", "dtype", "seed", "overwrite", "quiet")
def cache(
    out: Annotated[Path, typer.Option("--out", help="Output HDF5 file, e.g. runs/x/activations.h5.")],
    flags: Flags,
) -> None:
    """Cache the residual stream (embedding output and every block, or cache.layers) at the named positions."""
    cfg = flags.config_of(CacheRunConfig)
    path = CacheRunner(cfg, overwrite=flags.overwrite, progress=flags.progress).run(out)
    typer.echo(f"wrote {path}")
