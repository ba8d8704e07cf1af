"""System prompts from files, and the provenance (source and sha256) of every system prompt a run uses.

An entry of ``scenario.system_prompts`` is one of:

- a registered name (``helpful_only``, ``neutral``, ``helpful_only_scratchpad`` ...);
- a path to a UTF-8 text file (any entry that names an existing file, contains a path separator or ends in
  ``.txt`` / ``.md``): its name in the outputs is the file's stem;
- ``NAME=PATH``: the file at ``PATH`` under the name ``NAME``.

A prompt from a file is used verbatim (``explains_cue`` off: a file written for the paper's setup explains its own
``<is_free_tier_user>`` tag). Its sha256 is that of the file's bytes, recorded with its path wherever the run's
provenance goes (activation file attrs, results JSON, ``scenario.json`` and ``summary.json``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe.scenarios._prompts import SYSTEM_PROMPTS, SystemPrompt

FILE_SUFFIXES = (".txt", ".md")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def looks_like_path(entry: str) -> bool:
    return "/" in entry or os.sep in entry or entry.endswith(FILE_SUFFIXES) or Path(entry).is_file()


def resolve_system_prompt(entry: str) -> SystemPrompt:
    """The system prompt an entry of ``scenario.system_prompts`` names (see the module docstring)."""
    name, sep, path = entry.partition("=")
    if sep:
        if not _NAME.match(name.strip()):
            raise AfprobeError(
                f"system prompt {entry!r}: NAME=PATH needs a plain name (letters, digits, _ . -)"
            )
        return _load_file(path.strip(), name.strip())
    if entry in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[entry]
    if looks_like_path(entry):
        return _load_file(entry, None)
    raise AfprobeError(
        f"unknown system prompt {entry!r} (known: {', '.join(SYSTEM_PROMPTS)}; or give a path to a text file, "
        "or NAME=PATH)"
    )


def _load_file(path: str, name: str | None) -> SystemPrompt:
    p = Path(path).expanduser()
    if not p.is_file():
        raise AfprobeError(f"system prompt file {path} does not exist")
    return _read(str(p.resolve()), p.stat().st_mtime_ns, name or p.stem)


@lru_cache(maxsize=64)
def _read(path: str, _mtime: int, name: str) -> SystemPrompt:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AfprobeError(f"system prompt file {path} is not UTF-8 text") from None
    text = text.removeprefix("\ufeff").strip()
    if not text:
        raise AfprobeError(f"system prompt file {path} is empty")
    if name in SYSTEM_PROMPTS:
        raise AfprobeError(
            f"system prompt file {path}: its name {name!r} is a built-in prompt's; name it with NAME=PATH"
        )
    return SystemPrompt(
        name=name,
        text=text,
        explains_cue=False,
        source=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def resolve_system_prompts(entries: Iterable[str]) -> list[SystemPrompt]:
    """Every entry resolved; two entries with the same name are refused."""
    out = [resolve_system_prompt(e) for e in entries]
    names = [sp.name for sp in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AfprobeError(f"scenario.system_prompts: two entries are named {', '.join(dup)}")
    return out


def system_prompt_provenance(prompts: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Name -> {``source`` ("builtin" or the file's path), ``sha256`` of the prompt as registered or of the file's
    bytes, ``rendered_sha256`` of the system message the model saw (with any cue explanation), ``chars``} for the
    system prompts of ``prompts`` (:class:`~afprobe.scenarios.Prompt` s)."""
    out: dict[str, dict[str, Any]] = {}
    for p in prompts:
        if p is None or p.system_prompt in out:
            continue
        sp = p.system_source
        out[p.system_prompt] = {
            "source": sp.source if sp is not None else "unknown",
            "sha256": sp.sha256 if sp is not None else None,
            "rendered_sha256": sha256_text(p.system_text),
            "chars": len(p.system_text),
        }
    return dict(sorted(out.items()))


def get_system_prompt(name: str) -> SystemPrompt:
    """A registered system prompt, or one from a file (``PATH`` or ``NAME=PATH``)."""
    return resolve_system_prompt(name)
