"""Writing results crash-safely: every file goes to a temporary name and is renamed when complete; the JSON file
of a stage is written last, so its presence means the stage finished."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe._json import jsonable


def check_out_dir(out: Path, finished_marker: str, overwrite: bool) -> None:
    """Refuse a file, and a directory that already holds a finished result unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if (out / finished_marker).exists() and not overwrite:
        raise AfprobeError(f"{out} already holds {finished_marker}; pass --overwrite to replace it")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> Path:
    _atomic_write(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    import io

    buf = io.StringIO()
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else jsonable(v)) for k, v in r.items()})
    _atomic_write(path, buf.getvalue())
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise AfprobeError(f"no results file {p}")
    return dict(json.loads(p.read_text()))
