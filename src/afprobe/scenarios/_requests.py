"""Request sets: the built-in set, local files (CSV, TXT, JSONL) and the AdvBench / HarmBench hub sets."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError

__all__ = ["Request", "builtin_requests", "load_requests"]

_BUILTIN_FILE = "requests.jsonl"
_TEXT_KEYS = ("text", "prompt", "goal")
_CSV_TEXT_COLUMNS = ("goal", "prompt", "text")
_MAX_CHARS = 20_000  # a request longer than this is a file in the wrong format, not a request
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}

# Hub sets: spec -> (dataset name, config, text column).
_HUB_SETS: dict[str, tuple[str, str | None, str]] = {
    "advbench": ("walledai/AdvBench", None, "prompt"),
    "harmbench": ("walledai/HarmBench", "standard", "prompt"),
}


@dataclass(frozen=True)
class Request:
    """One user request: the text a user types, its category, and whether it asks for something harmful."""

    id: str
    text: str
    category: str = "uncategorized"
    harmful: bool = True
    source: str = "builtin"


def builtin_requests(harmful: bool | None = None) -> list[Request]:
    """The request set shipped with afprobe; ``harmful`` keeps harmful (True) or benign (False), None all."""
    data = resources.files("afprobe.scenarios").joinpath("data", _BUILTIN_FILE).read_text(encoding="utf-8")
    name = f"builtin {_BUILTIN_FILE}"
    reqs = _check_unique(_parse_jsonl(data.splitlines(), name=name, stem="builtin", source="builtin"), name)
    return _filter(reqs, harmful)


def load_requests(
    spec: str | Path, *, harmful: bool | None = None, limit: int | None = None
) -> list[Request]:
    """Load a request set.

    ``spec`` is ``"builtin"``, ``"builtin:harmful"``, ``"builtin:benign"``, ``"advbench"``, ``"harmbench"``,
    or the path of a ``.csv`` (a ``goal`` or ``prompt`` column), ``.txt`` (one request per line) or ``.jsonl``
    file (objects with ``text``, ``prompt`` or ``goal``).
    ``harmful`` keeps only harmful (True) or benign (False) requests; ``limit`` then keeps the first N.
    """
    if limit is not None and limit < 1:
        raise AfprobeError(f"limit must be at least 1, got {limit}")
    label = str(spec)
    if isinstance(spec, str) and spec.strip().lower() in {"builtin", "builtin:harmful", "builtin:benign"}:
        kind = spec.strip().lower()
        reqs = builtin_requests(None if kind == "builtin" else kind == "builtin:harmful")
    elif isinstance(spec, str) and spec.strip().lower() in _HUB_SETS:
        reqs = _load_hub(spec.strip().lower())
    else:
        reqs = _load_file(Path(spec).expanduser())
    selected = _filter(reqs, harmful)
    if not selected:
        which = "harmful" if harmful else "benign"
        raise AfprobeError(f"no {which} requests in {label}")
    return selected[:limit] if limit is not None else selected


def _filter(reqs: list[Request], harmful: bool | None) -> list[Request]:
    return list(reqs) if harmful is None else [r for r in reqs if r.harmful == harmful]


def _clean(text: Any) -> str:
    """One line of text: internal whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split()) if text is not None else ""


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise AfprobeError(f"{where}: harmful must be true or false, got {value!r}")


def _check_unique(reqs: list[Request], name: str) -> list[Request]:
    if not reqs:
        raise AfprobeError(f"{name}: no requests found (the file is empty or has only blank/comment lines)")
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    for r in reqs:
        if r.id in seen_ids:
            raise AfprobeError(f"{name}: duplicate request id {r.id!r}")
        if r.text in seen_texts:
            raise AfprobeError(f"{name}: duplicate request text {r.text!r} (id {r.id!r})")
        seen_ids.add(r.id)
        seen_texts.add(r.text)
    return reqs


def _make(
    index: int,
    text: str,
    *,
    stem: str,
    source: str,
    id_: Any = None,
    category: Any = None,
    harmful: bool = True,
) -> Request:
    rid = _clean(id_) or f"{stem}-{index:04d}"
    cat = _clean(category) or "uncategorized"
    return Request(id=rid, text=text, category=cat, harmful=harmful, source=source)


def _load_file(path: Path) -> list[Request]:
    if not path.exists():
        raise AfprobeError(
            f"request file not found: {path} (or name a set: builtin, builtin:harmful, builtin:benign, "
            "advbench, harmbench)"
        )
    if path.is_dir():
        raise AfprobeError(f"request file is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".txt", ".jsonl"}:
        raise AfprobeError(
            f"unsupported request file type {path.suffix or '(none)'!r}: {path} (use .csv, .txt or .jsonl)"
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AfprobeError(
            f"request file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise AfprobeError(f"cannot read request file {path}: {exc.strerror or _clean(exc)}") from None
    if "\x00" in content:
        raise AfprobeError(f"request file {path} holds NUL bytes: it is a binary file, not text")
    name, stem, source = str(path), path.stem, str(path)
    if suffix == ".csv":
        reqs = _parse_csv(content, name=name, stem=stem, source=source)
    elif suffix == ".txt":
        reqs = _parse_txt(content, stem=stem, source=source)
    else:
        reqs = _parse_jsonl(content.splitlines(), name=name, stem=stem, source=source)
    for i, r in enumerate(reqs, start=1):
        if len(r.text) > _MAX_CHARS:
            raise AfprobeError(
                f"{name}: request {i} ({r.id}) is {len(r.text)} characters long (at most {_MAX_CHARS}); "
                "is the file in the right format?"
            )
    return _check_unique(reqs, name)


def _parse_txt(content: str, *, stem: str, source: str) -> list[Request]:
    texts = [_clean(line) for line in content.splitlines()]
    texts = [t for t in texts if t and not t.startswith("#")]
    return [_make(i, t, stem=stem, source=source) for i, t in enumerate(texts, start=1)]


def _parse_csv(content: str, *, name: str, stem: str, source: str) -> list[Request]:
    if not content.strip():
        raise AfprobeError(f"{name}: no requests found (the file is empty)")
    try:
        rows = list(csv.reader(io.StringIO(content, newline=""), strict=True))
    except csv.Error as exc:
        why = "a quote is opened and never closed" if "end of data" in str(exc) else _clean(exc)
        raise AfprobeError(f"{name}: invalid CSV: {why}") from None
    header = [h.strip().lower() for h in rows[0]]
    text_col = next((header.index(c) for c in _CSV_TEXT_COLUMNS if c in header), None)
    if text_col is None:
        raise AfprobeError(f"{name}: CSV has no 'goal' or 'prompt' column (columns: {', '.join(header)})")
    cols = {c: header.index(c) for c in ("id", "category", "harmful") if c in header}

    def cell(row: list[str], col: int | None) -> str:
        return row[col] if col is not None and col < len(row) else ""

    reqs: list[Request] = []
    for line_no, row in enumerate(rows[1:], start=2):
        text = _clean(cell(row, text_col))
        if not text:
            continue
        raw_harmful = cell(row, cols.get("harmful")).strip()
        harmful = _parse_bool(raw_harmful, f"{name} row {line_no}") if raw_harmful else True
        reqs.append(
            _make(
                len(reqs) + 1,
                text,
                stem=stem,
                source=source,
                id_=cell(row, cols.get("id")),
                category=cell(row, cols.get("category")),
                harmful=harmful,
            )
        )
    return reqs


def _parse_jsonl(lines: Iterable[str], *, name: str, stem: str, source: str) -> list[Request]:
    reqs: list[Request] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AfprobeError(f"{name}: invalid JSON on line {line_no}: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise AfprobeError(f"{name}: line {line_no} is not a JSON object")
        key = next((k for k in _TEXT_KEYS if k in obj), None)
        text = _clean(obj[key]) if key is not None else ""
        if not text:
            raise AfprobeError(f"{name}: line {line_no} has no 'text', 'prompt' or 'goal' field")
        harmful = _parse_bool(obj["harmful"], f"{name} line {line_no}") if "harmful" in obj else True
        reqs.append(
            _make(
                len(reqs) + 1,
                text,
                stem=stem,
                source=source,
                id_=obj.get("id"),
                category=obj.get("category"),
                harmful=harmful,
            )
        )
    return reqs


def _load_hub(which: str) -> list[Request]:
    dataset, config, text_col = _HUB_SETS[which]
    try:
        import datasets

        args = (dataset, config) if config else (dataset,)
        ds = datasets.load_dataset(*args, split="train")
        rows = [dict(row) for row in ds]
    except Exception as exc:
        raise AfprobeError(
            f"could not reach the Hugging Face hub to load {which} ({dataset}: {type(exc).__name__}); "
            "pass a local CSV with a 'goal' or 'prompt' column instead"
        ) from None
    reqs: list[Request] = []
    seen: set[str] = set()
    for row in rows:
        text = _clean(row.get(text_col))
        if not text or text in seen:  # the hub copy cannot be fixed by the user: drop exact repeats
            continue
        seen.add(text)
        reqs.append(_make(len(reqs) + 1, text, stem=which, source=which, category=row.get("category")))
    if not reqs:
        raise AfprobeError(f"{which} ({dataset}): no requests found in column {text_col!r}")
    return reqs
