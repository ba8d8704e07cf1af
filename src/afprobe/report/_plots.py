"""Plots of the causal experiments: functions of the result dicts that return a Figure (saving is the caller's).

They read what the runners write (``steering.json``, ``patching.json``, ``compliance.json``), so a report can
redraw them from disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from afprobe.report._verdict import control_name


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def plot_dose_response(steering: Mapping[str, Any], layers: Sequence[int] | None = None) -> Figure:
    """Logit metric (log p(accept) − log p(reject)) against alpha per tier, one panel per layer, with the band of
    matched-norm random directions (mean ± sd) and the unsteered free and paid levels."""
    grid = steering["grid"]
    all_layers = sorted({r["layer"] for r in grid})
    show = [layer for layer in (layers or all_layers) if layer in all_layers]
    ncol = min(3, max(1, len(show)))
    nrow = -(-max(1, len(show)) // ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.2 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    natural = steering.get("natural_gap") or {}
    colors = {"paid": "tab:blue", "free": "tab:red"}
    for ax, layer in zip(axes, show, strict=False):
        rows = sorted((r for r in grid if r["layer"] == layer), key=lambda r: r["alpha"])
        a = np.array([r["alpha"] for r in rows])
        for tier in ("paid", "free"):
            clean = natural.get(tier)
            xs, ys = a, np.array([r[f"{tier}_mean"] for r in rows])
            if clean is not None and 0 not in a:
                order = np.argsort(np.append(a, 0.0))
                xs, ys = np.append(a, 0.0)[order], np.append(ys, clean)[order]
            ax.plot(xs, ys, "o-", color=colors[tier], label=f"{tier} + probe direction")
            with_rand = [r for r in rows if len(r.get(f"random_{tier}_mean") or []) > 0]
            if with_rand:  # the random band is measured at the headline alphas only
                rand = [np.asarray(r[f"random_{tier}_mean"], dtype=float) for r in with_rand]
                ax.errorbar(
                    [r["alpha"] for r in with_rand],
                    [x.mean() for x in rand],
                    yerr=[x.std(ddof=1) if len(x) > 1 else 0.0 for x in rand],
                    fmt="s",
                    mfc="none",
                    color=colors[tier],
                    capsize=3,
                    label=f"{tier} + random (mean ± sd)",
                )
            if clean is not None:
                ax.axhline(clean, color=colors[tier], ls=":", lw=1)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("alpha (1 = the free − paid separation)")
        ax.set_ylabel("log p(accept) − log p(reject)")
    for ax in axes[len(show) :]:
        ax.set_visible(False)
    if show:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Steering dose-response (edits from {steering.get('edit_start', '')})")
    return fig


def plot_patching_heatmap(
    matrix: Sequence[Sequence[float | None]],
    layers: Sequence[int],
    sites: Sequence[str],
    *,
    title: str = "Activation patching (0 = paid run, 1 = free run)",
    normalized: bool = True,
) -> Figure:
    """Layer × position heatmap of (normalized) patching effects; undefined cells are left blank."""
    m = np.array([[_nan(v) for v in row] for row in matrix], dtype=float)
    fig = Figure(figsize=(1.2 + 0.9 * len(sites), 1.2 + 0.22 * len(layers)), layout="constrained")
    ax = fig.subplots()
    finite = m[np.isfinite(m)]
    lim = (
        max(1.0, float(np.abs(finite).max()))
        if normalized and finite.size
        else (float(np.abs(finite).max()) if finite.size else 1.0)
    )
    im = ax.imshow(
        m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", interpolation="nearest"
    )
    ax.set_xticks(range(len(sites)), labels=list(sites), rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), labels=[str(x) for x in layers])
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="normalized effect" if normalized else "Δ metric (nats)")
    return fig


def patching_heatmaps(patching: Mapping[str, Any]) -> dict[str, Figure]:
    """One layer × position heatmap per patching direction (``denoise``, ``noise``) in ``patching.json``:
    normalized when the gap allows it, else raw shifts in nats."""
    defined = patching["normalization"] == "defined"
    return {
        direction: plot_patching_heatmap(
            patching[direction]["normalized" if defined else "raw"],
            patching["layers"],
            patching.get("sites") or patching["positions"],
            normalized=defined,
            title=f"{direction} (0 = paid run, 1 = free run)"
            if defined
            else f"{direction} (raw shift, nats)",
        )
        for direction in ("denoise", "noise")
        if direction in patching
    }


def plot_compliance_gap(
    compliance: Mapping[str, Any], *, metric: str = "logit", by: str = "system_prompt"
) -> Figure:
    """Free − paid gap with its CI over requests: overall and per system prompt (or cue format)."""
    block = compliance.get(metric)
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    if not block:
        ax.text(0.5, 0.5, f"no {metric} compliance measured", ha="center", va="center")
        return fig
    groups = [("all", block), *sorted((block.get(f"by_{by}") or {}).items())]
    names = [g for g, _ in groups]
    gaps = np.array([_nan(s["gap"]) for _, s in groups])
    lo = np.array([_nan(s["gap_ci"][0]) for _, s in groups])
    hi = np.array([_nan(s["gap_ci"][1]) for _, s in groups])
    err = np.vstack([np.nan_to_num(gaps - lo), np.nan_to_num(hi - gaps)])
    control = control_name(compliance.get("logit"))
    colors = ["0.4" if n == "all" else ("tab:gray" if n == control else "tab:purple") for n in names]
    ax.bar(range(len(names)), np.nan_to_num(gaps), yerr=err, color=colors, capsize=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), labels=names, rotation=20, ha="right")
    unit = "nats" if metric == "logit" else "compliance rate"
    ax.set_ylabel(f"free − paid ({unit})")
    ax.set_title(
        f"Compliance gap ({metric} metric) by {by.replace('_', ' ')}; '{control}' is the control", fontsize=9
    )
    return fig
