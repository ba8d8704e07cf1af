"""``afprobe bench``: every benchmark in one run, one table of ratios (the same as ``python -m benchmarks``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from afprobe._errors import AfprobeError
from afprobe.cli._app import app


def _benchmarks_module():
    """``benchmarks/__main__.py`` of the source checkout this afprobe runs from (benchmarks are not installed)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise AfprobeError(
            "afprobe bench runs from a source checkout: benchmarks/ was not found next to src/"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.__main__")


@app.command("bench")
def bench(
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated areas: cache,probes,steering,patching,gpu.")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Timed rounds per method.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller settings where an area offers them.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for results-<device>.json and RESULTS.md.")
    ] = None,
) -> None:
    """Run the benchmarks side by side and write results-<device>.json and RESULTS.md."""
    mod = _benchmarks_module()
    areas = [a.strip() for a in only.split(",")] if only else None
    unknown = sorted(set(areas or []) - set(mod.AREAS))
    if unknown:
        raise AfprobeError(f"unknown benchmark area(s) {', '.join(unknown)} (known: {', '.join(mod.AREAS)})")
    if out is not None and out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    mod.run_all(areas, rounds, quick, out)
