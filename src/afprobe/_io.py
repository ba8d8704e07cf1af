"""Every file afprobe writes goes through here: strict JSON, one CSV convention, atomic renames, staged directories.

- :func:`atomic_write_text` / :func:`atomic_write_bytes`: a temporary file in the same directory, renamed over the
  target when complete, so a reader never sees half a file.
- :func:`write_json`: strict JSON (numpy and torch values become Python ones, NaN and infinities ``null``).
- :func:`write_csv`: one row per record, the union of the records' keys as columns (first-seen order); a
  two-element ``*_ci`` value becomes ``*_lo`` and ``*_hi`` columns, ``None`` an empty cell, other lists JSON text.
- :func:`staged_dir`: build a whole output directory under a hidden name and rename it into place at the end.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afprobe._errors import AfprobeError
from afprobe._lock import output_lock


def jsonable(x: Any) -> Any:
    """``x`` with numpy and torch values turned into Python ones, NaN and infinities into ``None``, paths into
    strings."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a file system gone read-only: one line naming the file
        Path(tmp).unlink(missing_ok=True)
        raise AfprobeError(f"cannot write {path}: {write_error(e)}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_error(e: BaseException) -> str:
    """Why a write failed, in a few words (HDF5 hides errno inside its message), with what to do about a full
    disk."""
    text = str(e)
    m = re.search(r"error message = '([^']+)'", text)
    reason = (
        m.group(1) if m else getattr(e, "strerror", None) or (text.strip().splitlines()[0] if text else "")
    )
    code = getattr(e, "errno", None)
    if code is None and (m := re.search(r"errno = (\d+)", text)):
        code = int(m.group(1))
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space and re-run: it resumes)"
    return reason or type(e).__name__


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse before writing when the file system of ``path`` has less than ``needed`` bytes free."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise AfprobeError(
            f"not enough space for {what} {path}: it needs about {_size(needed)} more, {folder} has "
            f"{_size(free)} free (free some space and re-run: it resumes)"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(data: Any) -> str:
    return json.dumps(jsonable(data), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json_text(data))


def read_json(path: str | Path, what: str = "results file") -> dict[str, Any]:
    """A JSON object from ``path``; a missing or unreadable file is one :class:`AfprobeError` line."""
    p = Path(path)
    if not p.is_file():
        raise AfprobeError(f"no {what} {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AfprobeError(f"{what} {p} is not readable JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise AfprobeError(f"{what} {p} does not hold a JSON object")
    return data


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The CSV text of ``rows`` (the module docstring gives the convention)."""
    flat = [_flatten(r) for r in rows]
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in flat:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    return atomic_write_text(path, csv_text(rows, columns))


def _flatten(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        if k.endswith("_ci") and isinstance(v, list | tuple) and len(v) == 2:
            out[f"{k[:-3]}_lo"], out[f"{k[:-3]}_hi"] = v
        else:
            out[k] = v
    return out


def _cell(v: Any) -> Any:
    v = jsonable(v)
    if v is None:
        return ""
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


def check_writable(path: str | Path) -> None:
    """Refuse an output path that cannot be written before any work: one of its parents is a file, or the
    nearest existing directory is on a read-only file system or not writable by this user."""
    path = Path(path)
    if path.is_dir():
        nearest = path
    else:
        nearest = path.parent
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent
    if nearest.exists() and not nearest.is_dir():
        raise AfprobeError(f"cannot write {path}: {nearest} is a file, not a directory")
    if not os.access(nearest, os.W_OK | os.X_OK):
        reason = "permission denied"
        try:
            if os.statvfs(nearest).f_flag & os.ST_RDONLY:
                reason = "read-only file system"
        except (OSError, AttributeError):
            pass
        raise AfprobeError(f"cannot write {path}: {nearest} is not writable ({reason})")


def check_out_dir(out: Path, finished_marker: str, overwrite: bool) -> None:
    """Refuse a file, an output that cannot be written, and a directory that already holds a finished result (its
    ``finished_marker`` file, written last) unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    check_writable(out)
    if (out / finished_marker).exists() and not overwrite:
        raise AfprobeError(f"{out} already holds {finished_marker}; pass --overwrite to replace it")


def remove(p: Path) -> None:
    """Remove a file, a link or a directory tree (nothing if absent)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove what writes killed mid-way left in ``folder`` (not below it): the temporary files of
    :func:`atomic_write_bytes` and the staging directories of :func:`staged_dir`. Call it only while holding
    ``folder``'s lock (no other writer is using them)."""
    gone = []
    if Path(folder).is_dir():
        for p in Path(folder).iterdir():
            if p.name.startswith(".") and (
                p.name.endswith(".partial") or ".partial-" in p.name or ".old-" in p.name
            ):
                remove(p)
                gone.append(p)
    return gone


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``out``; on success it replaces ``out`` (whose old content is
    removed only after the new one is in place), on any error it is removed and ``out`` is left as it was.
    Holds ``out``'s lock meanwhile: a second writer of the same directory is refused."""
    out = Path(out)
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        yield from _staged(out)


def _staged(out: Path) -> Iterator[Path]:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise AfprobeError(f"cannot write {out}: {write_error(e)}") from e
    try:
        yield tmp
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
    except OSError as e:  # a write inside the block (a plot, a table) or the renames hit a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise AfprobeError(f"cannot write {out}: {write_error(e)}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
