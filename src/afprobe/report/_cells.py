"""Table cells of the report page: numbers, percentages and CIs formatted (and escaped) one way."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any


def _fmt(x: Any, digits: int = 3, pct: bool = False) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool | str):
        return escape(str(x))
    if isinstance(x, int):
        return str(x)
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def _ci(ci: Sequence[Any] | None, pct: bool = False) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{_fmt(ci[0], pct=pct)}, {_fmt(ci[1], pct=pct)}]"


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells; without ``header``, a two-column key/value table."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if header is None:
        return f"<table class='kv'>{body}</table>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{body}</table>"
