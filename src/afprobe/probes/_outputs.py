"""Writing ``afprobe probe``'s output directory crash-safely: everything goes into a hidden staging directory
next to ``DIR``, renamed to ``DIR`` only once complete, so a ``DIR`` that exists is always finished."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe._io import read_json, staged_dir

RESULTS_FILE = "probe_results.json"


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, a finished result (unless ``overwrite``) and any other non-empty directory (always)."""
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory for the probe results")
    if out.is_dir() and any(out.iterdir()):
        if not (out / RESULTS_FILE).is_file():
            raise AfprobeError(f"{out} exists and holds other files; give a new or empty directory")
        if not overwrite:
            raise AfprobeError(
                f"{out} already holds finished probe results; pass --overwrite to replace them"
            )


@contextmanager
def staged_output_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``out``, on any error it is removed."""
    check_output_dir(out, overwrite)
    with staged_dir(out) as tmp:
        yield tmp
        check_output_dir(out, overwrite)  # something may have appeared meanwhile


def read_probe_results(out_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/probe_results.json`` (written last, so its presence means ``DIR`` is finished)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise AfprobeError(
            f"no finished probe results in {out_dir} (expected {RESULTS_FILE} from `afprobe probe`)"
        )
    return read_json(path, "probe results")
