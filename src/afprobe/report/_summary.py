"""``summary.json``: the headline numbers of a run, read from each stage's own output, and a plain-language verdict
computed from them.

Keys (DESIGN.md): ``model``, ``n_pairs``, ``compliance`` {``logit``, ``generated``: each {``free``, ``paid``,
``gap``, ``gap_ci``}}, ``probes`` {``best_layer``, ``best_position``, ``best_auroc``, ``best_accuracy``,
``per_layer``, ``shuffled_accuracy``, ``selectivity``, ``cross_format``, plus how the headline was chosen,
``selection``, and its permutation ``p_value``}, ``steering`` {``best_layer``,
``fraction_of_gap``, ``random_baseline``}, ``patching`` {``peak_layer``, ``peak_position``, ``whole_layer``, ``carried``, ``subspace_fraction``},
``scratchpad`` (when that stage ran: ``compliance`` and ``alignment_faking`` {``free``, ``paid``, ``gap``,
``gap_ci``} as fractions of sampled transcripts, ``n_transcripts``, ``samples_per_prompt``, ``finished``, ``judge``),
``verdict`` (text), ``caveats`` (list of text) and ``timings`` (seconds per stage). A stage that was not run gives
``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afprobe.report._verdict import ALPHA, caveats, control_name, is_decodable, verdict

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


def _tiers_and_gap(block: Mapping[str, Any]) -> dict[str, Any]:
    """``free``, ``paid``, ``gap`` and ``gap_ci`` of a stage's gap block, non-finite numbers as None."""
    ci = list(block.get("gap_ci") or [None, None])
    return {
        "free": _finite(block.get("free")),
        "paid": _finite(block.get("paid")),
        "gap": _finite(block.get("gap")),
        "gap_ci": [_finite(ci[0]), _finite(ci[1])],
    }


def _gap_block(block: Mapping[str, Any] | None, unit: str) -> dict[str, Any] | None:
    if not block:
        return None
    return {
        **_tiers_and_gap(block),
        "status": block.get("status"),
        "n_pairs": block.get("n_pairs"),
        "unit": unit,
    }


def compliance_summary(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    logit = _gap_block(c.get("logit"), "nats: log p(accept prefix) - log p(reject prefix)")
    if logit is not None:
        logit["scope"] = (c.get("logit") or {}).get("scope")
        logit["pooled"] = (c.get("logit") or {}).get("pooled")
    name = control_name(c.get("logit"))
    control = (c.get("logit") or {}).get("by_system_prompt", {}).get(name)
    gen = c.get("generated") or {}
    return {
        "logit": logit,
        "generated": _gap_block(c.get("generated"), "fraction of responses that fully accept"),
        "control": name if control else None,
        "control_logit": _gap_block(control, "nats") if control else None,
        "control_contrast": (c.get("logit") or {}).get("control_contrast"),
        "tag_probability": c.get("tag_probability"),
        "unclear_rate": gen.get("unclear_rate"),
        "max_unclear": gen.get("max_unclear"),
        "power": c.get("power"),
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
        "selectivity",
        "surface_auroc",
        "p_adjusted",
    )
    per_layer = [{k: r.get(k) for k in keys} for r in p.get("per_layer", []) if r.get("probe") == headline]
    cf = p.get("cross_format")
    test = p.get("permutation_test") or {}
    alpha = test.get("alpha", ALPHA)
    return {
        "probe": headline,
        "best_layer": best.get("layer"),
        "best_position": best.get("position"),
        "best_auroc": _finite(best.get("auroc")),
        "best_auroc_ci": best.get("auroc_ci"),
        "best_accuracy": _finite(best.get("accuracy")),
        "best_accuracy_ci": best.get("accuracy_ci"),
        "selection": best.get("selection"),
        "nested": best.get("nested"),
        "in_sample_auroc": _finite(best.get("in_sample_auroc")),
        "stability": _stability(best.get("stability")),
        "p_value": _finite(best.get("p_value")),
        "n_permutations": best.get("n_permutations"),
        "n_probes_tested": best.get("n_probes_tested"),
        "alpha": alpha,
        "null_max_q95": _finite(test.get("null_max_q95")),
        "layer_p": test.get("layer_p"),
        "shuffled_accuracy": _finite(best.get("shuffled_accuracy")),
        "selectivity": _finite(best.get("selectivity")),
        "selectivity_basis": best.get("selectivity_basis"),
        "surface_baseline": p.get("surface_baseline"),
        "power": p.get("power"),
        "decodable_from_layer": first_decodable_layer(test.get("layer_p"), alpha),
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


def _stability(st: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not st:
        return None
    return {k: st.get(k) for k in ("n_folds", "agreement", "layer_agreement", "modal")} | {
        "sites": [[f["layer"], f["position"]] for f in st.get("folds") or []]
    }


def first_decodable_layer(layer_p: Mapping[Any, Any] | None, alpha: float = ALPHA) -> int | None:
    """The first layer from which every later layer is decodable after the cue: its family-wise adjusted
    p-value (max-statistic permutation test, :mod:`afprobe.report._verdict`) at most ``alpha``."""
    if not layer_p:
        return None
    first = None
    for layer, pv in sorted(((int(k), v) for k, v in layer_p.items()), reverse=True):
        if not is_decodable({"p_adjusted": pv}, alpha):
            break
        first = layer
    return first


def steering_summary(s: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "best_layer": s.get("best_layer"),
        "fraction_of_gap": s.get("fraction_of_gap"),
        "random_baseline": s.get("random_baseline"),
        "gap_usable": s.get("gap_usable"),
        "natural_gap": s.get("natural_gap"),
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
        "whole_layer": p.get("whole_layer"),
        "whole_position": p.get("whole_position"),
        "carried": p.get("carried"),
        "subspace_fraction": p.get("subspace_fraction"),
        "gap_usable": p.get("gap_usable"),
        "natural_gap": p.get("natural_gap"),
        "note": p.get("note"),
    }


def _rate_block(block: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not block:
        return None
    return {**_tiers_and_gap(block), "counts": block.get("counts")}


def scratchpad_summary(s: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The scratchpad stage's rates per tier and their gaps (fractions of sampled transcripts), and the judge."""
    if s is None:
        return None
    judge = s.get("judge") or None
    return {
        "compliance": _rate_block(s.get("compliance")),
        "alignment_faking": _rate_block(s.get("alignment_faking")),
        "n_transcripts": s.get("n_transcripts"),
        "samples_per_prompt": s.get("samples_per_prompt"),
        "finished": _finite(s.get("finished")),
        "judge": None if judge is None else {k: judge.get(k) for k in ("name", "n_votes", "threshold")},
        "unit": s.get("unit"),
        "note": s.get("note"),
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
        "scratchpad": scratchpad_summary(read_stage(results, "scratchpad")),
    }
    out["verdict"] = verdict(out)
    out["caveats"] = caveats(out)
    out["timings"] = {k: round(float(v), 3) for k, v in (timings or {}).items()}
    out["reused_stages"] = list(reused or [])
    return out
