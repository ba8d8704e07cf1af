"""The command line's one error boundary: every problem with what the user gave becomes one line and exit code 2.

- :class:`afprobe.AfprobeError`: its message (the commands validate their inputs before any work).
- a usage error (a missing option, a value of the wrong kind, an unknown command): click's message on one line.
- an ``OSError`` that got through (a read-only or full disk, a file where a directory is expected, a permission):
  what the system said, naming the file.
- an error raised inside a library that parses a user's file (HDF5, GGUF, safetensors, YAML, JSON, CSV, zip):
  the library's first line, naming the library.

Anything else is a bug in afprobe: one line saying so, exit code 1. ``afprobe --debug`` (or ``AFPROBE_DEBUG=1``)
re-raises instead, for the traceback.
"""

from __future__ import annotations

import os
import re
from types import TracebackType

import typer

from afprobe._errors import AfprobeError
from afprobe._io import write_error

# the libraries whose errors mean "this file is not what it claims to be"
FILE_FORMAT_LIBRARIES = {
    "h5py": "HDF5",
    "gguf": "GGUF",
    "safetensors": "safetensors",
    "yaml": "YAML",
    "json": "JSON",
    "csv": "CSV",
    "zipfile": "zip",
}
BAD_INPUT = 2
BUG = 1


def debug_requested() -> bool:
    return os.environ.get("AFPROBE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def usage_message(e: typer.TyperException) -> str:
    """A click usage error (or any other click exception) as one line, with where to find help."""
    fmt = getattr(e, "format_message", None)
    msg = first_line(fmt() if callable(fmt) else e) or type(e).__name__
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        msg = f"{msg} (see `{ctx.command_path} --help`)"
    return msg


def os_error_message(e: BaseException) -> str:
    """What the system said, naming the file(s): ``PATH: Read-only file system`` (HDF5 puts both inside its
    message: ``... name = 'PATH', errno = 30, error message = 'Read-only file system' ...``)."""
    text = str(e)
    names = " -> ".join(str(n) for n in (getattr(e, "filename", None), getattr(e, "filename2", None)) if n)
    if not names and (m := re.search(r"\b(?:file)?name = '([^']+)'", text)):
        names = m.group(1)
    return f"{names}: {write_error(e)}" if names else write_error(e)


def library_of(tb: TracebackType | None) -> str | None:
    """The file-format library the innermost frame of ``tb`` belongs to, if any."""
    origin = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        top = module.split(".")[0]
        if top in FILE_FORMAT_LIBRARIES:
            origin = FILE_FORMAT_LIBRARIES[top]
        elif top == "afprobe":
            origin = None  # afprobe called on after the library returned: judge by where it failed last
        tb = tb.tb_next
    return origin


def describe(e: BaseException) -> tuple[str, int]:
    """The one line for ``e`` and the exit code (2 for bad input, 1 for a bug)."""
    if isinstance(e, AfprobeError):
        return first_line(e) or "bad input", BAD_INPUT
    if isinstance(e, typer.TyperException):
        return usage_message(e), int(getattr(e, "exit_code", BAD_INPUT) or BAD_INPUT)
    if isinstance(e, OSError):
        return os_error_message(e), BAD_INPUT
    library = library_of(e.__traceback__)
    if library is not None and "error message = '" in str(e):  # HDF5 could not read or write a file
        return os_error_message(e), BAD_INPUT
    if library is not None or isinstance(e, UnicodeDecodeError):
        what = library or "text"
        return f"{what} file error: {first_line(e) or type(e).__name__}", BAD_INPUT
    detail = first_line(e)
    return (
        f"internal error ({type(e).__name__}{': ' + detail if detail else ''}); this is a bug in afprobe: "
        "re-run with --debug (or AFPROBE_DEBUG=1) for the traceback and report it",
        BUG,
    )
