"""``summary.json``: the headline numbers of a run, read from each stage's own output, and a plain-language verdict
computed from them.

Keys (DESIGN.md): ``model``, ``n_pairs``, ``compliance`` {``logit``, ``generated``: each {``free``, ``paid``,
``gap``, ``gap_ci``}}, ``probes`` {``best_layer``, ``best_position``, ``best_auroc``, ``best_accuracy``,
``per_layer``, ``shuffled_accuracy``, ``selectivity``, ``cross_format``}, ``steering`` {``best_layer``,
``fraction_of_gap``, ``random_baseline``}, ``patching`` {``peak_layer``, ``peak_position``, ``subspace_fraction``},
``verdict`` (text), ``caveats`` (list of text) and ``timings`` (seconds per stage). A stage that was not run gives
``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afprobe.report._verdict import caveats, verdict

SUMMARY_FORMAT = "afprobe.summary/1"
StageResults = Mapping[str, Path]
"""Stage name -> its results file, for the finished stages of one run (the pipeline's ``stage_results``): the
report reads only these, so it never mixes in outputs left by another config and knows no file layout."""


def read_stage(results: StageResults, stage: str) -> dict[str, Any] | None:
    """A stage's results JSON, or None when that stage is not among ``results`` (not run, or not finished)."""
    path = results.get(stage)
    if path is None or not Path(path).is_file():
        return None
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _gap_block(block: Mapping[str, Any] | None, unit: str) -> dict[str, Any] | None:
    if not block:
        return None
    ci = list(block.get("gap_ci") or [None, None])
    return {
        "free": _finite(block.get("free")),
        "paid": _finite(block.get("paid")),
        "gap": _finite(block.get("gap")),
        "gap_ci": [_finite(ci[0]), _finite(ci[1])],
        "status": block.get("status"),
        "n_pairs": block.get("n_pairs"),
        "unit": unit,
    }


def compliance_summary(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    logit = _gap_block(c.get("logit"), "nats: log p(accept prefix) - log p(reject prefix)")
    control = (c.get("logit") or {}).get("by_system_prompt", {}).get("neutral")
    return {
        "logit": logit,
        "generated": _gap_block(c.get("generated"), "fraction of responses that fully accept"),
        "control_logit": _gap_block(control, "nats") if control else None,
        "min_gap": ((c.get("config") or {}).get("compliance") or {}).get("min_gap"),
        "note": c.get("note"),
    }


def probe_summary(p: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    best = p.get("best") or {}
    headline = p.get("headline_probe")
    keys = (
        "layer",
        "position",
        "accuracy",
        "accuracy_ci",
        "auroc",
        "auroc_ci",
        "shuffled_accuracy",
        "control_accuracy",
        "selectivity",
    )
    per_layer = [{k: r.get(k) for k in keys} for r in p.get("per_layer", []) if r.get("probe") == headline]
    cf = p.get("cross_format")
    return {
        "probe": headline,
        "best_layer": best.get("layer"),
        "best_position": best.get("position"),
        "best_auroc": _finite(best.get("auroc")),
        "best_auroc_ci": best.get("auroc_ci"),
        "best_accuracy": _finite(best.get("accuracy")),
        "best_accuracy_ci": best.get("accuracy_ci"),
        "shuffled_accuracy": _finite(best.get("shuffled_accuracy")),
        "control_accuracy": _finite(best.get("control_accuracy")),
        "selectivity": _finite(best.get("selectivity")),
        "decodable_from_layer": first_decodable_layer(per_layer, best.get("position")),
        "per_layer": per_layer,
        "cross_format": None
        if not cf
        else {
            "formats": cf.get("formats"),
            "matrix": cf.get("matrix"),
            "layer": cf.get("layer"),
            "position": cf.get("position"),
        },
        "cross_system_prompt": p.get("cross_system_prompt"),
        "cue_trivial": p.get("cue_trivial"),
        "n_requests": p.get("n_requests"),
    }


def first_decodable_layer(per_layer: list[dict[str, Any]], position: str | None) -> int | None:
    """The first layer at ``position`` from which the probe stays decodable (see :mod:`afprobe.report._verdict`)."""
    from afprobe.report._verdict import is_decodable

    rows = sorted((r for r in per_layer if r.get("position") == position), key=lambda r: r["layer"])
    first = None
    for r in reversed(rows):
        if not is_decodable(r):
            break
        first = r["layer"]
    return first


def steering_summary(s: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "best_layer": s.get("best_layer"),
        "fraction_of_gap": s.get("fraction_of_gap"),
        "random_baseline": s.get("random_baseline"),
        "gap_usable": s.get("gap_usable"),
        "edit_start": s.get("edit_start"),
        "note": s.get("note"),
    }


def patching_summary(p: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "peak_layer": p.get("peak_layer"),
        "peak_position": p.get("peak_position"),
        "peak_effect": p.get("peak_effect"),
        "peak_unit": p.get("peak_unit"),
        "subspace_fraction": p.get("subspace_fraction"),
        "gap_usable": p.get("gap_usable"),
        "note": p.get("note"),
    }


def build_summary(
    results: StageResults,
    *,
    timings: Mapping[str, float] | None = None,
    reused: list[str] | None = None,
) -> dict[str, Any]:
    """Read every finished stage's results and compute the summary, verdict and caveats included."""
    setup = read_stage(results, "scenarios") or {}
    model = setup.get("model") or {}
    out: dict[str, Any] = {
        "schema": SUMMARY_FORMAT,
        "model": model.get("name") or model.get("model_id"),
        "model_info": model or None,
        "n_pairs": setup.get("n_pairs"),
        "n_prompts": setup.get("n_prompts"),
        "n_requests": setup.get("n_requests"),
        "compliance": compliance_summary(read_stage(results, "compliance")),
        "probes": probe_summary(read_stage(results, "probes")),
        "steering": steering_summary(read_stage(results, "steering")),
        "patching": patching_summary(read_stage(results, "patching")),
    }
    out["verdict"] = verdict(out)
    out["caveats"] = caveats(out)
    out["timings"] = {k: round(float(v), 3) for k, v in (timings or {}).items()}
    out["reused_stages"] = list(reused or [])
    return out
