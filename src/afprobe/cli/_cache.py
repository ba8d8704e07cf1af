"""``afprobe cache``: residual stream at named positions -> one HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe.activations import CacheRunConfig, CacheRunner
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


@app.command("cache")
def cache(
    out: Annotated[Path, typer.Option("--out", help="Output HDF5 file, e.g. runs/x/activations.h5.")],
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
) -> None:
    """Cache the residual stream (embedding output and every block, or cache.layers) at the named positions."""
    cfg = build_config(
        CacheRunConfig,
        config,
        set_,
        model=model,
        requests=requests,
        limit=limit,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    path = CacheRunner(cfg, out, overwrite=overwrite, progress=not quiet).run()
    typer.echo(f"wrote {path}")
