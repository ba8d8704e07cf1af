"""The typer app and the shared flags, declared once: a command lists the flags it takes in
``@shared_flags(...)`` and receives them as one :class:`Flags` value, which :meth:`Flags.config` turns into a
validated config (the config file, then the flags, then ``--set``)."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
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

T = TypeVar("T", bound=BaseModel)
DEBUG: set[str] = set()  # holds "on" while the command line asked for --debug (main() clears it)


@app.callback()
def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show the full traceback of an error (also AFPROBE_DEBUG=1), for bug reports."
        ),
    ] = False,
) -> None:
    """Probe, steer and patch the 'this conversation is used for training' representation of chat models."""
    if debug:
        DEBUG.add("on")


def quiet_libraries() -> None:
    """No third-party progress bars either (model loading, GGUF conversion) under ``--quiet``."""
    os.environ["TQDM_DISABLE"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


# name -> (annotation, default): every shared flag, with its help, in one place
SHARED: dict[str, tuple[Any, Any]] = {
    "config": (Annotated[Path | None, typer.Option("--config", help="YAML config file.")], None),
    "set_": (
        Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a config key: --set cache.batch_size=8 (repeatable)."),
        ],
        None,
    ),
    "model": (
        Annotated[str | None, typer.Option("--model", help="Alias, hub id, local directory or .gguf file.")],
        None,
    ),
    "requests": (
        Annotated[
            str | None,
            typer.Option(
                "--requests", help="builtin[:harmful|:benign], advbench, harmbench, or a CSV/TXT/JSONL."
            ),
        ],
        None,
    ),
    "limit": (Annotated[int | None, typer.Option("--limit", help="Use the first N requests.")], None),
    "device": (Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")], None),
    "dtype": (
        Annotated[
            str | None, typer.Option("--dtype", help="auto, float32, float16 or bfloat16 (model weights).")
        ],
        None,
    ),
    "seed": (Annotated[int | None, typer.Option("--seed", help="Random seed (reaches every stage).")], None),
    "overwrite": (Annotated[bool, typer.Option("--overwrite", help="Replace a finished output.")], False),
    "quiet": (Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")], False),
}
# where each shared flag lands in a config (the same dotted keys in every command's config)
FLAG_KEYS = {
    "model": "model.name",
    "requests": "scenario.requests",
    "limit": "scenario.limit",
    "device": "model.device",
    "dtype": "model.dtype",
    "seed": "seed",
}


@dataclass
class Flags:
    """The shared flags of one command line (those the command did not declare stay at their defaults)."""

    config: Path | None = None
    set_: list[str] | None = None
    model: str | None = None
    requests: str | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    overwrite: bool = False
    quiet: bool = False

    @property
    def progress(self) -> bool:
        return not self.quiet

    def overrides(self, keys: dict[str, str] | None = None) -> list[str]:
        """The flags as ``--set`` items (applied after the config file, before explicit ``--set``); ``keys``
        changes where a flag lands (``afprobe probe`` puts ``--device`` at ``probes.device``)."""
        where = {**FLAG_KEYS, **(keys or {})}
        pairs = {where[name]: getattr(self, name) for name in FLAG_KEYS}
        return [f"{k}={_quote(v)}" for k, v in pairs.items() if v is not None]

    def config_of(self, cls: type[T], keys: dict[str, str] | None = None) -> T:
        return load_config(cls, self.config, [*self.overrides(keys), *(self.set_ or [])])


def shared_flags(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared flags ``names``; it receives them as ``flags: Flags``."""
    unknown = set(names) - set(SHARED)
    if unknown:
        raise ValueError(f"unknown shared flags {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "flags"]
        extra = [
            inspect.Parameter(
                n, inspect.Parameter.KEYWORD_ONLY, default=SHARED[n][1], annotation=SHARED[n][0]
            )
            for n in names
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            flags = Flags(**{n: kwargs.pop(n) for n in names})
            if flags.quiet:
                quiet_libraries()
            return fn(flags=flags, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _quote(v: Any) -> str:
    # keep strings such as "yes", "1e3" or "null" strings after YAML parsing of --set values
    return f"'{v}'" if isinstance(v, str) else str(v)
