"""The command line: ``main(argv)`` parses, loads the config and calls the same public functions as Python users.

Bad input (an :class:`afprobe.AfprobeError`) prints one line and exits with code 2.
"""

from __future__ import annotations

import sys

import typer

from afprobe import AfprobeError
from afprobe.cli import _cache, _models, _organism, _patch, _probe, _report, _run, _steer, _validate  # noqa: F401  (registers commands)
from afprobe.cli._app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (0 ok, 2 bad input)."""
    try:
        app(args=argv, prog_name="afprobe", standalone_mode=False)
    except AfprobeError as e:
        print(f"afprobe: error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        return 130
    except typer.TyperException as e:  # usage errors (missing option, bad value): click's message, exit 2
        e.show()  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
