"""The command line: ``main(argv)`` parses, loads the config and calls the same public functions as Python users.

Every problem with the input prints one line, ``afprobe: error: ...``, and exits with code 2 (see ``_boundary``);
``afprobe --debug`` or ``AFPROBE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from afprobe.activations import hdf5_writes_failed
from afprobe.cli import (  # noqa: F401  (registers commands)
    _cache,
    _models,
    _organism,
    _patch,
    _probe,
    _relayout,
    _report,
    _run,
    _steer,
    _validate,
)
from afprobe.cli._app import DEBUG, app
from afprobe.cli._boundary import debug_requested, describe

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (0 ok, 2 bad input, 1 a bug, 130 interrupted)."""
    code = _main(argv)
    if (
        argv is None and hdf5_writes_failed()
    ):  # the command itself (sys.argv): exit now, so that HDF5 does not
        sys.stdout.flush()  # try to flush (and crash on) the files whose writes failed as the interpreter ends
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    DEBUG.clear()
    try:
        app(args=argv, prog_name="afprobe", standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("afprobe: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if (DEBUG or debug_requested()) and not isinstance(e, typer.TyperException):
            raise
        message, code = describe(e)
        print(f"afprobe: error: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
