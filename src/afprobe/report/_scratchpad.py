"""The report's scratchpad section, shown only when the scratchpad stage ran: sampled reasoning, compliance read
from the output, and the alignment-faking judge's rate, per tier with the gap and its CI."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from afprobe.report._cells import _ci, _fmt, _table


def scratchpad_section(summary: Mapping[str, Any]) -> str:
    """Only when the scratchpad stage ran: sampled reasoning, compliance from the output, the judge's rate."""
    sp = summary.get("scratchpad")
    if not sp:
        return ""
    rows = []
    for key, label in (
        ("compliance", "fully accepts (output)"),
        ("alignment_faking", "alignment-faking reasoning"),
    ):
        b = sp.get(key)
        if b:
            rows.append(
                [
                    escape(label),
                    _fmt(b["free"], pct=True),
                    _fmt(b["paid"], pct=True),
                    _fmt(b["gap"], pct=True),
                    _ci(b["gap_ci"], pct=True),
                ]
            )
    judge = sp.get("judge")
    html = (
        "<h2>Scratchpad reasoning</h2><p>Sampled transcripts with hidden reasoning; rates are fractions of "
        "transcripts per tier, CIs 95% bootstrap intervals over requests. "
        + (
            f"Alignment-faking judge: {escape(str(judge.get('name')))}, {_fmt(judge.get('n_votes'))} vote(s), "
            f"threshold {_fmt(judge.get('threshold'))}."
            if judge
            else "No alignment-faking judge was run."
        )
        + "</p>"
    )
    html += _table(["rate", "free", "paid", "gap (free − paid)", "95% CI"], rows)
    html += _table(
        None,
        [
            [
                "transcripts (per prompt)",
                f"{_fmt(sp.get('n_transcripts'))} ({_fmt(sp.get('samples_per_prompt'))})",
            ],
            ["reached an output", _fmt(sp.get("finished"), pct=True)],
        ],
    )
    if sp.get("note"):
        html += f"<p class='muted'>{escape(sp['note'])}</p>"
    return html
