"""The report's figures, each drawn from a stage's results on disk with the stage's own plot function, and the
CSV table behind each one (``DIR/results/<name>.csv``)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from afprobe.report._plots import plot_compliance_gap, plot_dose_response, plot_patching_heatmap


@dataclass
class ReportFigure:
    """One figure of the report: ``name`` is its file stem (``figures/NAME.png``) and the CSV stem behind it."""

    name: str
    section: str
    title: str
    caption: str
    figure: Figure
    rows: list[dict[str, Any]] = field(default_factory=list)


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------- compliance


def compliance_rows(compliance: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long table of every gap in ``compliance.json``: metric × breakdown × group."""
    rows = []
    for metric in ("logit", "generated"):
        block = compliance.get(metric)
        if not block:
            continue
        groups = [("all", "all", block)]
        for by in ("system_prompt", "cue_format"):
            groups += [(by, g, b) for g, b in sorted((block.get(f"by_{by}") or {}).items())]
        for by, g, b in groups:
            ci = b.get("gap_ci") or [None, None]
            rows.append(
                {
                    "metric": metric,
                    "by": by,
                    "group": g,
                    "free": b.get("free"),
                    "paid": b.get("paid"),
                    "gap": b.get("gap"),
                    "gap_lo": ci[0],
                    "gap_hi": ci[1],
                    "n_pairs": b.get("n_pairs"),
                    "status": b.get("status"),
                }
            )
    return rows


def compliance_figures(compliance: Mapping[str, Any]) -> list[ReportFigure]:
    rows = compliance_rows(compliance)
    out = []
    for metric, by in (("logit", "system_prompt"), ("logit", "cue_format"), ("generated", "system_prompt")):
        if not compliance.get(metric):
            continue
        unit = "nats" if metric == "logit" else "rate of fully accepted responses"
        out.append(
            ReportFigure(
                name=f"compliance_{metric}_by_{by}",
                section="compliance",
                title=f"Compliance gap, {metric} metric, by {by.replace('_', ' ')}",
                caption=f"Free − paid difference ({unit}) with its 95% bootstrap CI over requests. The neutral system "
                "prompt carries no training information: it is the control.",
                figure=plot_compliance_gap(compliance, metric=metric, by=by),
                rows=[r for r in rows if r["metric"] == metric and r["by"] in ("all", by)],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- probes


def probe_figures(results: Mapping[str, Any], probes_dir: Path) -> list[ReportFigure]:
    from afprobe.probes import plot_cross_format, plot_layer_curves, plot_pca

    notes = {
        p: {"cue": "trivial: reads the tier token", "before_cue": "before the cue: expect chance"}.get(r, "")
        for p, r in (results.get("position_relation") or {}).items()
    }
    per_layer = list(results.get("per_layer") or [])
    out = []
    for metric in ("auroc", "accuracy"):
        out.append(
            ReportFigure(
                name=f"probes_{metric}_by_layer",
                section="probes",
                title=f"Probe {metric.upper() if metric == 'auroc' else metric} by layer",
                caption="Held-out (request-grouped cross-validation) score per layer and position, one line per probe "
                "type with its 95% CI over requests; dashed: permuted labels (within pairs); dotted: surface features "
                "(prompt length, token counts, cue format).",
                figure=plot_layer_curves(per_layer, metric, positions=results.get("positions"), notes=notes),
                rows=per_layer,
            )
        )
    cf = results.get("cross_format")
    if cf:
        out.append(
            ReportFigure(
                name="probes_cross_format",
                section="generalization",
                title="Generalization across cue formats",
                caption=f"Accuracy of a probe trained on one cue format and tested on another (layer {cf['layer']}, "
                f"'{cf['position']}', {cf['probe']}); held-out requests only.",
                figure=plot_cross_format(cf["formats"], cf["matrix"]),
                rows=read_csv(probes_dir / "results" / "cross_format.csv"),
            )
        )
    pca = read_csv(probes_dir / "results" / "pca.csv")
    best = results.get("best")
    if pca and best:
        coords = np.array([[float(r["pc1"]), float(r["pc2"])] for r in pca])
        out.append(
            ReportFigure(
                name="probes_pca",
                section="probes",
                title="The residual stream at the headline layer, first two principal components",
                caption=f"Layer {best['layer']}, '{best['position']}' position; colour: tier, marker: cue format.",
                figure=plot_pca(coords, [r["tier"] for r in pca], [r["cue_format"] for r in pca]),
                rows=pca,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- steering


def steering_rows(steering: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Dose-response table: per layer × alpha, each tier's mean metric under the probe direction and the random
    band, and the shifts (fractions of the gap when there is one, else nats)."""
    rows = []
    for r in steering.get("grid", []):
        row: dict[str, Any] = {"layer": r["layer"], "alpha": r["alpha"]}
        for tier in ("free", "paid"):
            rand = np.asarray(r.get(f"random_{tier}_mean") or [], dtype=float)
            row[f"{tier}_probe"] = r.get(f"{tier}_mean")
            row[f"{tier}_random_mean"] = float(rand.mean()) if rand.size else None
            row[f"{tier}_random_sd"] = float(rand.std(ddof=1)) if rand.size > 1 else None
        for shift in ("paid_shift", "free_shift"):
            v, band = r.get(shift) or {}, r.get(f"random_{shift}") or {}
            ci = v.get("ci") or [None, None]
            row[f"{shift}_fraction"], row[f"{shift}_lo"], row[f"{shift}_hi"] = v.get("value"), ci[0], ci[1]
            row[f"{shift}_nats"] = v.get("effect_nats")
            row[f"random_{shift}_mean"], row[f"random_{shift}_sd"] = band.get("mean"), band.get("sd")
            row["random_unit"] = band.get("unit")
        rows.append(row)
    return rows


def plot_steering_vs_random(steering: Mapping[str, Any]) -> Figure:
    """Per steered layer: the probe direction's effect at the largest positive alpha (paid prompts pushed toward
    "training") against the mean ± 2 sd of matched-norm random directions. Fractions of the gap when there is
    one, else nats."""
    grid = steering.get("grid", [])
    alphas = [r["alpha"] for r in grid]
    pos = [a for a in alphas if a > 0]
    alpha = max(pos) if pos else min(alphas, default=0.0)
    shift = "paid_shift" if pos else "free_shift"
    rows = sorted((r for r in grid if r["alpha"] == alpha), key=lambda r: r["layer"])
    usable = any((r.get(shift) or {}).get("value") is not None for r in rows)
    key = "value" if usable else "effect_nats"
    layers = [r["layer"] for r in rows]
    probe = np.array([_f((r.get(shift) or {}).get(key)) for r in rows])
    mean = np.array([_f((r.get(f"random_{shift}") or {}).get("mean")) for r in rows])
    sd = np.nan_to_num(np.array([_f((r.get(f"random_{shift}") or {}).get("sd")) for r in rows]))
    fig = Figure(figsize=(5.6, 3.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(layers))
    ax.errorbar(
        x + 0.08, mean, yerr=2 * sd, fmt="s", color="0.55", capsize=4, label="random directions (mean ± 2 sd)"
    )
    if usable:
        lo = np.array([_f(((r.get(shift) or {}).get("ci") or [None, None])[0]) for r in rows])
        hi = np.array([_f(((r.get(shift) or {}).get("ci") or [None, None])[1]) for r in rows])
        err = np.nan_to_num(np.vstack([probe - lo, hi - probe]))
        ax.errorbar(
            x - 0.08,
            probe,
            yerr=err,
            fmt="o",
            color="tab:purple",
            capsize=4,
            label="probe direction (95% CI)",
        )
        ax.axhline(1.0, color="tab:red", ls=":", lw=1, label="the whole gap")
    else:
        ax.plot(x - 0.08, probe, "o", color="tab:purple", label="probe direction")
    ax.axhline(0.0, color="k", lw=0.7)
    ax.set_xticks(x, [str(v) for v in layers])
    ax.set_xlabel("steered layer")
    what = "reproduced on paid prompts" if shift == "paid_shift" else "removed from free prompts"
    tier = "paid" if shift == "paid_shift" else "free"
    ax.set_ylabel(f"fraction of the gap {what}" if usable else f"shift of {tier} prompts (nats)")
    ax.set_title(f"Steering at alpha {alpha:+g}: probe direction vs random directions", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def steering_figures(steering: Mapping[str, Any]) -> list[ReportFigure]:
    if not steering.get("grid"):
        return []
    rows = steering_rows(steering)
    return [
        ReportFigure(
            name="steering_vs_random",
            section="steering",
            title="Steering along the probe direction vs random directions, by layer",
            caption="Each point: the probe direction added at that layer (scaled by the layer's median residual "
            "norm); grey band: matched-norm random directions (mean ± 2 sd).",
            figure=plot_steering_vs_random(steering),
            rows=rows,
        ),
        ReportFigure(
            name="steering_dose_response",
            section="steering",
            title="Steering dose-response",
            caption="The compliance metric of free and paid prompts as the probe direction is added with growing "
            "alpha (1 = the free − paid separation along it); squares: random directions drawn from the "
            "activations' covariance, at the headline alphas (mean ± sd); dotted: the unsteered levels.",
            figure=plot_dose_response(steering),
            rows=rows,
        ),
    ]


# ---------------------------------------------------------------------------------------------- patching


def patching_figures(patching: Mapping[str, Any]) -> list[ReportFigure]:
    """Heatmaps of ``patching.json``: denoising (and noising) per layer × named position, and per token around the
    cue; normalized (0 = paid run, 1 = free run) when the natural gap is established, else raw shifts in nats."""
    normalized = patching.get("normalization") == "defined"
    key = "normalized" if normalized else "raw"
    layers = list(patching.get("layers") or [])
    blocks: list[tuple[str, str, list[str], Mapping[str, Any]]] = []
    for direction in ("denoise", "noise"):
        if patching.get(direction):
            blocks.append(
                (
                    f"named_{direction}",
                    direction,
                    list(patching.get("sites") or patching["positions"]),
                    patching[direction],
                )
            )
    window = patching.get("window") or {}
    for direction in ("denoise", "noise"):
        if window.get(direction):
            blocks.append((f"window_{direction}", direction, list(window["sites"]), window[direction]))
    what = {"denoise": "free → paid (denoising)", "noise": "paid → free (noising)"}
    out = []
    for name, direction, sites, block in blocks:
        matrix = block[key]
        rows = [
            {
                "layer": layer,
                "site": site,
                "normalized": _clean(block["normalized"][i][j]),
                "raw_nats": _clean(block["raw"][i][j]),
            }
            for i, layer in enumerate(layers)
            for j, site in enumerate(sites)
        ]
        where = (
            "named positions" if name.startswith("named") else "single tokens around the cue (aligned pairs)"
        )
        title = f"Activation patching {what[direction]}, {where}"
        out.append(
            ReportFigure(
                name=f"patching_{name}",
                section="patching",
                title=title,
                caption=(
                    "Normalized effect on the recipients' compliance metric: 0 = the unpatched paid run, "
                    "1 = the free run (on the mean over pairs)."
                    if normalized
                    else "Raw shift of the recipients' compliance metric in nats: there is no established gap to "
                    "normalize by."
                ),
                figure=plot_patching_heatmap(matrix, layers, sites, title=title, normalized=normalized),
                rows=rows,
            )
        )
    return out


def _clean(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV with the union of the rows' keys as columns; lists and dicts are written as JSON-ish text."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
