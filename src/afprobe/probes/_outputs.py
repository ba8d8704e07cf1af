"""Writing ``afprobe probe``'s output directory crash-safely: everything goes into a hidden staging directory
next to ``DIR``, renamed to ``DIR`` only once complete, so a ``DIR`` that exists is always finished."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe._json import jsonable

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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        check_output_dir(out, overwrite)  # something may have appeared meanwhile
        old = None
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
            else:
                out.rmdir()
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows of flat records; list values (CIs) become ``name_lo`` / ``name_hi`` columns."""
    flat = [_flatten(r) for r in rows]
    cols = list(columns or (dict.fromkeys(k for r in flat for k in r) if flat else []))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow({k: "" if v is None else v for k, v in jsonable(r).items()})


def _flatten(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        if isinstance(v, (list, tuple)) and len(v) == 2 and k.endswith("_ci"):
            out[f"{k[:-3]}_lo"], out[f"{k[:-3]}_hi"] = v
        else:
            out[k] = v
    return out


def read_probe_results(out_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/probe_results.json`` (written last, so its presence means ``DIR`` is finished)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise AfprobeError(
            f"no finished probe results in {out_dir} (expected {RESULTS_FILE} from `afprobe probe`)"
        )
    return dict(json.loads(path.read_text()))
