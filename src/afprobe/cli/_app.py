"""The typer app, the shared flags every command takes, and turning them into a validated config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from afprobe.config import load_config

app = typer.Typer(
    name="afprobe",
    help="Probe, steer and patch the 'this conversation is used for training' representation of chat models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set cache.batch_size=8 (repeatable)."),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Alias, hub id, local directory or .gguf file.")
]
RequestsOpt = Annotated[
    str | None,
    typer.Option("--requests", help="builtin[:harmful|:benign], advbench, harmbench, or a CSV/TXT/JSONL."),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use the first N requests.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="auto, float32, float16 or bfloat16 (model weights).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a finished output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]

T = TypeVar("T", bound=BaseModel)


def shared_overrides(
    *,
    model: str | None = None,
    requests: str | None = None,
    limit: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    seed: int | None = None,
) -> list[str]:
    """The shared flags as ``--set`` items (applied after the config file and before explicit ``--set``)."""
    pairs: dict[str, Any] = {
        "model.name": model,
        "scenario.requests": requests,
        "scenario.limit": limit,
        "model.device": device,
        "model.dtype": dtype,
        "seed": seed,
    }
    return [f"{k}={_quote(v)}" for k, v in pairs.items() if v is not None]


def build_config(cls: type[T], config: Path | None, sets: list[str] | None, **flags: Any) -> T:
    return load_config(cls, config, [*shared_overrides(**flags), *(sets or [])])


def _quote(v: Any) -> str:
    # keep strings such as "yes", "1e3" or "null" strings after YAML parsing of --set values
    return f"'{v}'" if isinstance(v, str) else str(v)
