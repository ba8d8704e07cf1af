"""``afprobe organism plant`` (a planted mechanism with a recorded truth) and ``afprobe organism train`` (the LoRA
organism and its sham)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afprobe import AfprobeError
from afprobe.cli._app import Flags, app, shared_flags

organism_app = typer.Typer(
    help="Organisms with a known answer: planted mechanisms and trained LoRA organisms."
)
app.add_typer(organism_app, name="organism")


@organism_app.command("plant")
@shared_flags("config", "set_", "model", "requests", "limit", "device", "dtype", "seed", "overwrite", "quiet")
def plant_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Output model directory (a sweep: one subdirectory each).")
    ],
    block: Annotated[
        int | None, typer.Option("--block", help="Block to plant in (0-based; default: middle).")
    ] = None,
    strength: Annotated[
        list[float] | None,
        typer.Option("--strength", help="Write strength (repeatable: a sweep); 0 is the sham."),
    ] = None,
    gap: Annotated[
        list[float] | None,
        typer.Option("--gap", help="Planted gap in nats, calibrated (repeatable: a sweep)."),
    ] = None,
    *,
    flags: Flags,
) -> None:
    """Plant a tier-conditional compliance neuron and save the model with its ground truth (planted.json)."""
    from afprobe.models import load_model
    from afprobe.organisms import PlantRunConfig, plant, save_sweep

    if strength and gap:
        raise AfprobeError("give --gap or --strength, not both")
    sets: list[str] = []
    if block is not None:
        sets.append(f"plant.block={block}")
    if gap:
        sets.append(f"plant.gaps=[{', '.join(str(g) for g in gap)}]")
    if strength:
        sets.append(f"plant.strengths=[{', '.join(str(s) for s in strength)}]")
    flags.set_ = [*sets, *(flags.set_ or [])]
    cfg = flags.config_of(PlantRunConfig)
    _check_out(out, flags.overwrite)
    lm = load_model(cfg.model)
    result = plant(lm, cfg, progress=flags.progress)
    paths = save_sweep(result, out, overwrite=flags.overwrite)
    m = result.mechanism
    typer.echo(
        f"planted in block {m.block} (reads layer {m.read_layer}, writes layer {m.write_layer}) at 'last'"
    )
    for p, path in zip(result.points, paths, strict=True):
        g = p.planted_gap
        lo, hi = g["gap_ci"]
        asked = f" (requested {p.requested_gap:g})" if p.requested_gap is not None else ""
        typer.echo(
            f"strength {p.strength:.4g}: planted gap {g['gap']:+.3f} nats [{lo:+.3f}, {hi:+.3f}]{asked}; "
            f"model gap {p.model_gap['gap']:+.3f} ({p.model_gap['status']}) -> {path}"
        )


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse before any work: a file, or a finished output without --overwrite."""
    from afprobe.organisms import PLANTED_FILE, SWEEP_FILE

    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if not overwrite and ((out / PLANTED_FILE).exists() or (out / SWEEP_FILE).exists()):
        raise AfprobeError(f"{out} already holds a planted model; pass --overwrite to replace it")


@organism_app.command("train")
@shared_flags("config", "set_", "model", "device", "dtype", "seed", "overwrite", "quiet")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output adapter directory.")],
    sham: Annotated[bool, typer.Option("--sham", help="Train the sham: tier labels shuffled.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name recorded in the manifest.")] = None,
    *,
    flags: Flags,
) -> None:
    """Train the LoRA organism (complies on the free tier, refuses on the paid tier) or its sham."""
    from afprobe.organisms import TrainRunConfig, train_organism

    sets = [*(["train.sham=true"] if sham else [])]
    sets += [f"train.name='{name or ('organism-sham' if sham else 'organism')}'"]
    flags.set_ = [*sets, *(flags.set_ or [])]
    cfg = flags.config_of(TrainRunConfig)
    manifest = train_organism(cfg, out, overwrite=flags.overwrite, progress=flags.progress)
    t = manifest["training_seconds"]
    typer.echo(
        f"trained {manifest['name']} in {t['wall']:.0f} s ({t['cpu']:.0f} s CPU, {t['threads']} threads), "
        f"{manifest['steps']} steps, final loss {manifest['loss']['last_10_mean']:.3f} -> {out}"
    )
