"""Rewriting an activation file in the by-layer layout (see :mod:`afprobe.activations._store`), for files cached
before it: the same datasets, attributes and numbers, with ``resid`` chunked one (layer, position) per chunk.

The copy streams blocks of prompts (sequential reads in the old layout, one contiguous write per (layer, position)
in the new), writes ``OUT.partial`` and renames it only when complete, so an interrupted rewrite leaves the input
untouched and no finished-looking output.
"""

from __future__ import annotations

import os
from pathlib import Path

from afprobe._errors import AfprobeError
from afprobe._progress import progress_bar
from afprobe.activations._reader import ActivationReader
from afprobe.activations._store import create_resid, open_for_append, partial_path

BLOCK_BYTES = 1 << 28  # prompts copied per step: about 256 MiB of resid


def relayout(
    src: str | Path, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True
) -> Path:
    """Write ``src`` in the by-layer layout to ``out`` (default: replace ``src`` once the copy is complete).
    Returns the path written; a file already in that layout is left as it is (and returned) when ``out`` is
    ``src``."""
    src = Path(src)
    dst = Path(out) if out is not None else src
    in_place = dst.resolve() == src.resolve()
    if not in_place and dst.exists() and not overwrite:
        raise AfprobeError(f"{dst} already exists; pass --overwrite to replace it")
    with ActivationReader(src) as reader:
        if in_place and reader.layout == "by_layer":
            return dst
        tmp = partial_path(dst) if not in_place else dst.with_name(dst.name + ".relayout.partial")
        tmp.unlink(missing_ok=True)
        try:
            _copy(reader, tmp, progress)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dst)
    return dst


def _copy(reader: ActivationReader, tmp: Path, progress: bool) -> None:
    source = reader.f
    resid = reader.resid
    n, n_layers, n_pos, d = resid.shape
    with open_for_append(tmp, "w") as f:
        for name, obj in source.items():
            if name != "resid":
                source.copy(obj, f, name=name)
        for key, value in source.attrs.items():
            f.attrs[key] = value
        out = create_resid(f, n, n_layers, n_pos, d, resid.dtype)
        for key, value in resid.attrs.items():
            out.attrs[key] = value
        rows = max(1, BLOCK_BYTES // max(1, n_layers * n_pos * d * resid.dtype.itemsize))
        with progress_bar(progress, "relayout ") as bar:
            task = bar.add_task(reader.path.name, total=n)
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                out[start:stop] = resid[start:stop]
                bar.advance(task, stop - start)
        f.flush()
