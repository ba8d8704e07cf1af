"""``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS, no script, nothing fetched)
that a colleague can open offline, and ``write_report`` which writes it with ``summary.json`` and ``results/``."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from afprobe._io import atomic_write_text, jsonable
from afprobe.report._cells import _ci, _fmt, _table
from afprobe.report._config import ReportConfig
from afprobe.report._figures import (
    ReportFigure,
    compliance_figures,
    patching_figures,
    probe_figures,
    steering_figures,
    write_rows,
)
from afprobe.report._known import known_section, read_known
from afprobe.report._scratchpad import scratchpad_section
from afprobe.report._summary import StageResults, build_summary, read_stage
from afprobe.report._verdict import control_name

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
RESULTS_DIR = "results"
QUESTION = (
    "Does the model carry an internal representation of “this conversation is used for training” (free tier) "
    "versus “this conversation is never monitored” (paid tier), where does it live, and does it causally drive "
    "a difference in how often the model complies with harmful requests (the compliance gap of Greenblatt et al. "
    "2024, “Alignment Faking in Large Language Models”)?"
)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.verdict{background:#f4f1fb;border-left:4px solid #6a4c93;padding:.8em 1em;font-size:1.05em}
.caveats li{margin:.2em 0}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f6f6f6}
td:first-child,th:first-child{text-align:left}.kv td{text-align:left}figure{margin:1.2em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.88em;color:#555}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.6em;font-size:.82em}
mark{background:#ffe08a}.muted{color:#777;font-size:.9em}code{font-size:.9em}
"""


def figure_png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _figure_html(f: ReportFigure, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{escape(f.name)}"><img alt="{escape(f.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{escape(f.title)}.</b> {escape(f.caption)} Table: <code>results/{escape(f.name)}.csv"
        "</code></figcaption></figure>"
    )


def _highlight_diff(a: str, b: str) -> tuple[str, str]:
    """Both texts escaped, with the part where they differ (the tier cue) marked."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    while i > 0 and a[i - 1].isalnum():  # widen to whole words: "True"/"False", not "Tru"/"Fals"
        i -= 1
    while j > 0 and a[len(a) - j].isalnum():
        j -= 1

    def mark(s: str) -> str:
        return escape(s[:i]) + "<mark>" + escape(s[i : len(s) - j]) + "</mark>" + escape(s[len(s) - j :])

    return mark(a), mark(b)


# ---------------------------------------------------------------------------------------------- sections


def _model_label(m: Mapping[str, Any]) -> str:
    """The model's name, with its hub id when that differs (a local file's path stays out of the report)."""
    mid = str(m.get("model_id") or "")
    if not mid or mid == m["name"] or Path(mid).is_absolute():
        return str(m["name"])
    return f"{m['name']} ({mid})"


def _setup_section(setup: Mapping[str, Any] | None, summary: Mapping[str, Any]) -> str:
    if not setup:
        return "<h2>Setup</h2><p>The scenarios stage has not run.</p>"
    m, sc = setup["model"], setup["scenario"]
    rows = [
        ["model", escape(_model_label(m))],
        ["weights from", escape(m["source"])],
        ["layers × d_model", f"{m['n_layers']} × {m['d_model']} ({escape(m['dtype'])})"],
        ["conversation format", escape(m["conversation_format"])],
        ["requests", escape(f"{sc['requests']} (harmful={sc['harmful']}, limit={sc['limit']})")],
        [
            "counts",
            f"{setup['n_requests']} requests × {len(setup['system_prompts'])} system prompts × "
            f"{len(setup['cue_formats'])} cue formats = {setup['n_pairs']} pairs ({setup['n_prompts']} prompts)",
        ],
        ["system prompts", escape(", ".join(setup["system_prompts"]))],
        ["cue formats", escape(", ".join(setup["cue_formats"]))],
        ["named positions", escape(", ".join(setup["positions"]))],
        ["prompt length (tokens)", f"{setup['tokens']['min']}–{setup['tokens']['max']}"],
    ]
    html = "<h2>Setup</h2>" + _table(None, rows)
    pair = setup.get("sample_pair") or {}
    if "free" in pair and "paid" in pair:
        free, paid = _highlight_diff(pair["free"]["rendered"], pair["paid"]["rendered"])
        html += (
            f"<h3>A sample pair (pair {pair['pair_id']}, request {escape(pair['free']['request_id'])}, "
            f"{escape(pair['free']['system_prompt'])} system prompt, {escape(pair['free']['cue_format'])} cue)</h3>"
            "<p class='muted'>The two prompts differ only in the marked tier cue; shown as the model sees them."
            "</p><div class='pair'>"
            f"<div><b>free tier (“training”)</b><pre>{free}</pre></div>"
            f"<div><b>paid tier (“never monitored”)</b><pre>{paid}</pre></div></div>"
        )
        toks = pair["free"].get("position_tokens") or {}
        if toks:
            html += (
                "<p class='muted'>Named positions in the free prompt (token there): "
                + ", ".join(f"<code>{escape(k)}</code> = {escape(repr(v))}" for k, v in toks.items())
                + "</p>"
            )
    return html


def _compliance_section(summary: Mapping[str, Any]) -> str:
    c = summary.get("compliance")
    if not c:
        return "<h2>Compliance gap</h2><p>The compliance stage was not run.</p>"
    rows = []
    for key, label, pct in (
        ("logit", "logit metric (nats)", False),
        ("generated", "generated: fully accepts", True),
        ("control_logit", f"logit metric, control system prompt ({control_name(c)})", False),
    ):
        b = c.get(key)
        if b:
            rows.append(
                [
                    escape(label),
                    _fmt(b["free"], pct=pct),
                    _fmt(b["paid"], pct=pct),
                    _fmt(b["gap"], pct=pct),
                    _ci(b["gap_ci"], pct=pct),
                    _fmt(b.get("status")),
                    _fmt(b.get("n_pairs")),
                ]
            )
    html = (
        "<h2>Compliance gap</h2><p>The logit metric is log p(<code>&lt;request_fully_accepted/&gt;</code>) − "
        "log p(<code>&lt;rejected/&gt;</code>) at the start of the response; generated responses are classified "
        "by their tags. CIs are 95% bootstrap intervals over requests.</p>"
    )
    html += _table(["metric", "free", "paid", "gap (free − paid)", "95% CI", "status", "pairs"], rows)
    logit = c.get("logit") or {}
    extra = []
    if logit.get("scope"):
        extra.append(["the run's gap is measured on", escape(str(logit["scope"]))])
    if logit.get("pooled"):
        pooled = logit["pooled"]
        extra.append(
            [
                "pooled over every pair (control included)",
                f"{_fmt(pooled.get('gap'))} {_ci(pooled.get('gap_ci'))}",
            ]
        )
    for name, dd in (c.get("control_contrast") or {}).items():
        extra.append(
            [
                f"difference-in-differences: {escape(name)} − control {escape(control_name(dd, 'against'))} "
                "(nats)",
                f"{_fmt(dd.get('difference'))} {_ci(dd.get('ci'))} · p {_fmt(dd.get('p_adjusted'))}",
            ]
        )
    tags = c.get("tag_probability") or {}
    if tags.get("all") is not None:
        extra.append(["P(response begins with either tag)", _fmt(tags["all"], digits=4)])
    unclear = (c.get("unclear_rate") or {}).get("all")
    if unclear is not None:
        extra.append(["generated responses unclear", _fmt(unclear, pct=True)])
    gp = (c.get("power") or {}).get("min_detectable_gap")
    if gp is not None:
        extra.append(["smallest detectable gap (80% power, nats)", _fmt(gp)])
    if extra:
        html += _table(None, extra)
    if c.get("note"):
        html += f"<p class='muted'>{escape(c['note'])}</p>"
    return html


def _probes_section(summary: Mapping[str, Any]) -> str:
    p = summary.get("probes")
    if not p:
        return "<h2>Probes</h2><p>The probes stage was not run.</p>"
    rows = [
        ["probe (headline)", escape(str(p["probe"]))],
        ["best layer · position", f"{p['best_layer']} · {escape(str(p['best_position']))}"],
        ["AUROC", f"{_fmt(p['best_auroc'])} {_ci(p.get('best_auroc_ci'))}"],
        ["accuracy", f"{_fmt(p['best_accuracy'])} {_ci(p.get('best_accuracy_ci'))}"],
        ["AUROC before nested selection (in-sample max)", _fmt(p.get("in_sample_auroc"))],
        [
            "max-statistic permutation p",
            f"{_fmt(p.get('p_value'))} ({_fmt(p.get('n_probes_tested'))} probes, "
            f"{_fmt(p.get('n_permutations'))} within-pair permutations; null 95th pct AUROC "
            f"{_fmt(p.get('null_max_q95'))})",
        ],
        ["selection stability (outer folds agreeing)", _fmt((p.get("stability") or {}).get("agreement"))],
        ["surface-feature baseline AUROC", _fmt((p.get("surface_baseline") or {}).get("auroc"))],
        ["permuted-label accuracy", _fmt(p.get("shuffled_accuracy"))],
        ["selectivity (accuracy − permuted-label accuracy)", _fmt(p.get("selectivity"))],
        ["decodable from layer (family-wise corrected)", _fmt(p.get("decodable_from_layer"))],
        ["smallest detectable AUROC (80% power)", _fmt((p.get("power") or {}).get("min_detectable_auroc"))],
    ]
    html = (
        "<h2>Probes by layer</h2><p>Linear probes read the tier from the residual stream, trained and tested on "
        "different requests. The headline comes from positions after the cue; at the cue itself the probe reads "
        "the tier token.</p>" + _table(None, rows)
    )
    cue = p.get("cue_trivial")
    if cue:
        html += f"<p class='muted'>{escape(cue.get('note', ''))} (cue AUROC {_fmt(cue.get('auroc'))}).</p>"
    return html


def _steering_section(summary: Mapping[str, Any]) -> str:
    st = summary.get("steering")
    if not st:
        return "<h2>Steering</h2><p>The steering stage was not run.</p>"
    frac, rand = st.get("fraction_of_gap") or {}, st.get("random_baseline") or {}
    rows = []
    for key in ("reproduced", "removed", "ablation"):
        v, r = frac.get(key), rand.get(key)
        if v:
            rows.append(
                [
                    key,
                    _fmt(v.get("alpha")),
                    _fmt(v.get("value")),
                    _ci(v.get("ci")),
                    _fmt(v.get("effect_nats")),
                    f"{_fmt((r or {}).get('mean'))} ± {_fmt((r or {}).get('sd'))} {escape(str((r or {}).get('unit', '')))}",
                ]
            )
    html = (
        f"<h2>Steering</h2><p>Best layer: {_fmt(st.get('best_layer'))}. Unit: "
        f"{escape(str(frac.get('unit', '')))}.</p>"
    )
    html += _table(
        ["effect", "alpha", "fraction of gap", "95% CI", "shift (nats)", "random directions"], rows
    )
    if st.get("note"):
        html += f"<p class='muted'>{escape(st['note'])}</p>"
    return html


def _patching_section(summary: Mapping[str, Any]) -> str:
    pt = summary.get("patching")
    if not pt:
        return "<h2>Activation patching</h2><p>The patching stage was not run.</p>"
    rows = [
        ["peak layer · position", f"{_fmt(pt.get('peak_layer'))} · {escape(str(pt.get('peak_position')))}"],
        [f"peak effect ({escape(str(pt.get('peak_unit') or 'unit unknown'))})", _fmt(pt.get("peak_effect"))],
        [
            "first layer · position one site carries >= 0.9",
            f"{_fmt(pt.get('whole_layer'))} · {escape(str(pt.get('whole_position')))}",
        ],
        ["probe subspace / full patch", _fmt(pt.get("subspace_fraction"))],
    ]
    html = "<h2>Activation patching</h2>" + _table(None, rows)
    if pt.get("note"):
        html += f"<p class='muted'>{escape(pt['note'])}</p>"
    return html


def _timings(summary: Mapping[str, Any]) -> str:
    t = summary.get("timings") or {}
    reused = set(summary.get("reused_stages") or [])
    rows = [[escape(k), f"{v:.1f}", "reused" if k in reused else ""] for k, v in t.items()]
    return "<h2>Timings</h2>" + _table(["stage", "seconds", ""], rows) if rows else ""


def render_html(
    summary: Mapping[str, Any],
    setup: Mapping[str, Any] | None,
    figures: Sequence[tuple[ReportFigure, bytes]],
    *,
    title: str,
    description: str = "",
    config_yaml: str = "",
    known: Mapping[str, Any] | None = None,
) -> str:
    """The whole page as a string (``known``: an ``afprobe validate`` result, shown as "Known answers")."""
    by_section: dict[str, list[str]] = {}
    for f, png in figures:
        by_section.setdefault(f.section, []).append(_figure_html(f, png))

    def figs(section: str) -> str:
        return "".join(by_section.get(section, []))

    caveats = "".join(f"<li>{escape(c)}</li>" for c in summary.get("caveats") or [])
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(description)}</p>" if description else "",
        f"<h2>The question</h2><p>{escape(QUESTION)}</p>",
        f"<h2>Verdict</h2><div class='verdict'>{escape(str(summary.get('verdict', '')))}</div>",
        f"<h3>Caveats</h3><ul class='caveats'>{caveats}</ul>" if caveats else "",
        _setup_section(setup, summary),
        _compliance_section(summary) + figs("compliance"),
        _probes_section(summary) + figs("probes"),
        "<h2>Generalization</h2>" + (figs("generalization") or "<p>No cross-format results.</p>"),
        _steering_section(summary) + figs("steering"),
        _patching_section(summary) + figs("patching"),
        known_section(known),
        scratchpad_section(summary),
        _timings(summary),
        f"<h2>Config</h2><details><summary>the resolved config</summary><pre>{escape(config_yaml)}</pre></details>"
        if config_yaml
        else "",
        "<p class='muted'>Every figure's numbers are in <code>results/</code>; the headline numbers in "
        "<code>summary.json</code>.</p>",
    ]
    body = "\n".join(p for p in parts if p)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------- writing


def collect_figures(results: StageResults) -> list[ReportFigure]:
    """Every figure the finished stages support, in report order."""
    out: list[ReportFigure] = []
    compliance, probes = read_stage(results, "compliance"), read_stage(results, "probes")
    steering, patching = read_stage(results, "steering"), read_stage(results, "patching")
    if compliance:
        out += compliance_figures(compliance)
    if probes:
        out += probe_figures(probes, Path(results["probes"]).parent)
    if steering:
        out += steering_figures(steering)
    if patching:
        out += patching_figures(patching)
    return out


def write_results(run_dir: Path, figures: Sequence[ReportFigure], results: StageResults) -> Path:
    """``DIR/results/``: the table behind every figure, plus every finished stage's own CSV tables
    (``STAGE_NAME.csv``)."""
    tmp = run_dir / f".{RESULTS_DIR}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in figures:
        write_rows(tmp / f"{f.name}.csv", f.rows)
    for stage, path in results.items():
        d = Path(path).parent
        for csv_path in sorted([*d.glob("*.csv"), *(d / "results").glob("*.csv")]):
            shutil.copyfile(csv_path, tmp / f"{stage}_{csv_path.name}")
    final = run_dir / RESULTS_DIR
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def write_report(
    run_dir: str | Path,
    results: StageResults,
    cfg: ReportConfig | None = None,
    *,
    timings: Mapping[str, float] | None = None,
    reused: list[str] | None = None,
    figures_dir: str | Path | None = None,
    description: str = "",
    config_yaml: str = "",
) -> dict[str, Any]:
    """Write ``results/``, ``summary.json`` and ``report.html`` into ``run_dir`` from the finished stages'
    ``results`` (the two files under temporary names, renamed last) and return the summary; ``figures_dir`` also
    gets each figure as a PNG."""
    import time

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = cfg or ReportConfig()
    figures = collect_figures(results)
    pngs = [(f, figure_png(f.figure, cfg.dpi)) for f in figures]
    write_results(run_dir, figures, results)
    if figures_dir is not None:
        fd = Path(figures_dir) / "figures"
        fd.mkdir(parents=True, exist_ok=True)
        for f, png in pngs:
            (fd / f"{f.name}.png").write_bytes(png)
    timings = dict(timings or {})
    timings["report"] = time.perf_counter() - t0
    summary = jsonable(build_summary(results, timings=timings, reused=reused))
    setup = read_stage(results, "scenarios")
    title = cfg.title or f"afprobe report: {summary.get('model') or 'unknown model'}"
    html = render_html(
        summary,
        setup,
        pngs,
        title=title,
        description=description,
        config_yaml=config_yaml,
        known=read_known(run_dir),
    )
    summary["timings"]["report"] = round(time.perf_counter() - t0, 3)
    summary["timings"]["total"] = round(sum(v for k, v in summary["timings"].items() if k != "total"), 3)
    atomic_write_text(
        run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    )
    atomic_write_text(run_dir / REPORT_FILE, html)
    return summary
