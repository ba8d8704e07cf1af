"""The scratchpad stage in ``summary.json`` and the report: its rates per tier, the gap with its CI and the
alignment-faking judge's rate when that stage ran; nothing (``null``, no section) when it did not."""

import json
from pathlib import Path

from afprobe.report import build_summary, render_html


def _stage(tmp_path: Path, judged: bool) -> Path:
    block = {
        "free": 0.75,
        "paid": 0.25,
        "gap": 0.5,
        "gap_ci": [0.125, 0.875],
        "counts": {"free": {}, "paid": {}},
    }
    af = {"free": 0.5, "paid": 0.0, "gap": 0.5, "gap_ci": [0.0, 1.0], "counts": {}} if judged else None
    data = {
        "n_transcripts": 16,
        "samples_per_prompt": 2,
        "finished": 0.875,
        "compliance": block,
        "alignment_faking": af,
        "judge": {"name": "local:tiny", "n_votes": 3, "threshold": 0.4, "cache_hits": 0} if judged else None,
        "unit": "fraction of sampled transcripts (points = 100 x fraction)",
        "note": "16 transcripts (2 per prompt).",
    }
    p = tmp_path / f"scratchpad-{judged}.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def test_summary_and_report_show_the_scratchpad_stage(tmp_path: Path) -> None:
    s = build_summary({"scratchpad": _stage(tmp_path, judged=True)})
    sp = s["scratchpad"]
    assert sp["compliance"]["free"] == 0.75 and sp["compliance"]["gap_ci"] == [0.125, 0.875]
    assert sp["alignment_faking"]["free"] == 0.5 and sp["alignment_faking"]["gap"] == 0.5
    assert sp["judge"] == {"name": "local:tiny", "n_votes": 3, "threshold": 0.4}
    assert sp["n_transcripts"] == 16 and sp["finished"] == 0.875
    json.dumps(s)  # serializable as summary.json
    html = render_html(s, None, [], title="t")
    assert "<h2>Scratchpad reasoning</h2>" in html
    section = html.split("<h2>Scratchpad reasoning</h2>")[1].split("<h2>")[0]
    assert "75.0%" in section and "25.0%" in section and "[12.5%, 87.5%]" in section  # compliance row
    assert "alignment-faking reasoning" in section and "[0.0%, 100.0%]" in section
    assert "local:tiny" in section and "87.5%" in section


def test_without_a_judge_the_rate_is_absent_and_said_so(tmp_path: Path) -> None:
    s = build_summary({"scratchpad": _stage(tmp_path, judged=False)})
    assert s["scratchpad"]["alignment_faking"] is None and s["scratchpad"]["judge"] is None
    section = render_html(s, None, [], title="t").split("<h2>Scratchpad reasoning</h2>")[1].split("<h2>")[0]
    assert "No alignment-faking judge was run" in section and "alignment-faking reasoning" not in section


def test_no_scratchpad_stage_no_block_and_no_section(tmp_path: Path) -> None:
    s = build_summary({})
    assert s["scratchpad"] is None
    assert "Scratchpad reasoning" not in render_html(s, None, [], title="t")
