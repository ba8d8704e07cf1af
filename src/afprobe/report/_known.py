"""The "known answers" section: what ``afprobe validate`` recovered on a planted mechanism versus what was
planted (``validation.json``), as a markdown table (for the README and ``validation.md``) and as HTML (for a run's
report, when the run directory holds a validation result)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

KNOWN_FILE = "validation.json"


def _v(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:+.3f}" if abs(x) < 100 else f"{x:.4g}"
    if isinstance(x, list | tuple) and len(x) == 2 and all(isinstance(v, int | float) for v in x):
        return f"[{x[0]:+.3f}, {x[1]:+.3f}]"
    return str(x)


def _pass(x: Any) -> str:
    return "n/a" if x is None else ("PASS" if x else "FAIL")


def known_rows(v: Mapping[str, Any]) -> list[list[str]]:
    """One row per target: target, planted, recovered, criterion, unit, pass/fail."""
    return [
        [t["target"], _v(t["planted"]), _v(t["recovered"]), t["criterion"], t["unit"], _pass(t["pass"])]
        for t in v.get("targets", [])
    ]


def power_rows(v: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            _v(r["requested_gap"]),
            _v(r["planted_gap"]),
            _v(r["measured_gap"]),
            _v(r["measured_ci"]),
            str(r["status"]),
            _v(r["detected"]),
        ]
        for r in v.get("power_curve", [])
    ]


TARGET_HEADER = ["target", "planted", "recovered", "criterion", "unit", "result"]
POWER_HEADER = ["requested gap", "planted gap", "measured gap", "95% CI", "status", "detected"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _planted_line(v: Mapping[str, Any]) -> str:
    p = v.get("planted") or {}
    model = (v.get("model") or {}).get("name", "?")
    return (
        f"Planted in {model}: one MLP neuron in block {p.get('block')} (reads layer {p.get('read_layer')}, writes "
        f"layer {p.get('write_layer')}) at {', '.join(p.get('positions') or [])}, planted gap "
        f"{_v(p.get('gap'))} nats {_v(p.get('gap_ci'))}."
    )


def _power_line(v: Mapping[str, Any]) -> str:
    s = v.get("smallest_detected_gap")
    curve = v.get("power_curve") or []
    n = next((r["n_pairs"] for r in curve), None)
    base = next((r for r in curve if r["requested_gap"] == 0), None)
    floor = next((r.get("min_gap") for r in curve if r.get("min_gap") is not None), None)
    context = ""
    if base is not None and base.get("detected"):
        context = " The unplanted model is already called a gap at these sizes: the curve measures no power."
    elif base is not None and base.get("measured_gap") is not None and floor is not None:
        # the verdict sees the base model's own gap plus the planted one: say how close the base already is
        context = (
            f" The unplanted model measures {base['measured_gap']:+.3f} nats here, {floor - base['measured_gap']:.3f} "
            f"below min_gap ({floor:.3f}): a planted gap is called once the two together reach min_gap, so on a "
            "model without a gap of its own the smallest detected gap is about min_gap."
        )
    if s is None:
        return f"No planted gap of the sweep was detected at the default run's sizes ({n} pairs).{context}"
    return (
        f"Smallest planted gap detected at the default run's sizes ({n} pairs, logit metric): {s:.3f} nats."
        + context
    )


def known_markdown(v: Mapping[str, Any]) -> str:
    """``validation.md``: the recovered-versus-planted table, then the power curve."""
    verdict = "all targets pass" if v.get("all_pass") else "some targets FAIL"
    return (
        "\n\n".join(
            [
                "### Recovered versus planted",
                _planted_line(v) + f" Result: {verdict}.",
                _md_table(TARGET_HEADER, known_rows(v)),
                "### Power curve (planted strength sweep, default run sizes)",
                _md_table(POWER_HEADER, power_rows(v)),
                _power_line(v),
            ]
        )
        + "\n"
    )


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def read_known(run_dir: str | Path) -> dict[str, Any] | None:
    """``validation.json`` in ``run_dir`` or ``run_dir/validation/``, if there is one."""
    for path in (Path(run_dir) / KNOWN_FILE, Path(run_dir) / "validation" / KNOWN_FILE):
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    return None


def known_section(v: Mapping[str, Any] | None) -> str:
    """The report's "Known answers" section (empty without a validation result)."""
    if not v:
        return ""
    return (
        "<h2>Known answers</h2><p>"
        + escape(_planted_line(v))
        + " Does afprobe recover it? (<code>afprobe validate</code>)</p>"
        + _html_table(TARGET_HEADER, known_rows(v))
        + "<h3>Power curve</h3>"
        + _html_table(POWER_HEADER, power_rows(v))
        + f"<p>{escape(_power_line(v))}</p>"
    )
