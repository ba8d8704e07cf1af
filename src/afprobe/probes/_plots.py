"""Plots of probe results: functions of data that return a matplotlib ``Figure`` (saving is the caller's job)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

_PROBE_COLOURS = {"torch_logistic": "tab:blue", "logistic": "tab:purple", "mass_mean": "tab:orange"}
_MARKERS = "osD^vP*Xh<>"


def plot_layer_curves(
    rows: Sequence[Mapping[str, Any]],
    metric: str = "accuracy",
    *,
    positions: Sequence[str] | None = None,
    notes: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """``metric`` (``accuracy`` or ``auroc``) by layer, one panel per position, one line per probe type with its
    bootstrap CI band, its shuffled-label baseline dashed, and the surface-feature baseline (a probe on prompt
    length, token counts and cue format; rows' ``surface_<metric>``) dotted.

    ``rows`` are the ``per_layer`` records of ``probe_results.json``; ``notes`` adds a line under a panel's title
    (e.g. ``{"cue": "trivial: reads the tier token"}``).
    """
    positions = list(positions or dict.fromkeys(r["position"] for r in rows))
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    fig = Figure(figsize=(4.2 * len(positions), 3.6), layout="constrained")
    axes = fig.subplots(1, len(positions), sharey=True, squeeze=False)[0]
    for ax, pos in zip(axes, positions, strict=True):
        for probe in probes:
            sel = sorted(
                (r for r in rows if r["position"] == pos and r["probe"] == probe), key=lambda r: r["layer"]
            )
            if not sel:
                continue
            layers = [r["layer"] for r in sel]
            colour = _PROBE_COLOURS.get(probe)
            ax.plot(layers, [r[metric] for r in sel], color=colour, label=probe, lw=1.6)
            ci = np.array([r[f"{metric}_ci"] for r in sel], dtype=float)
            ax.fill_between(layers, ci[:, 0], ci[:, 1], color=colour, alpha=0.2, lw=0)
            ax.plot(
                layers,
                [r[f"shuffled_{metric}"] for r in sel],
                color=colour,
                ls="--",
                lw=0.9,
                label=f"{probe}: shuffled labels",
            )
        surface = [r.get(f"surface_{metric}") for r in rows if r["position"] == pos]
        if surface and surface[0] is not None:
            ax.axhline(
                float(surface[0]), color="black", ls=":", lw=0.9, label="surface features (length, format)"
            )
        ax.axhline(0.5, color="grey", lw=0.6)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("layer")
        note = (notes or {}).get(pos)
        ax.set_title(pos if not note else f"{pos}\n({note})", fontsize=10)
    axes[0].set_ylabel("AUROC" if metric == "auroc" else metric)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_cross_format(
    formats: Sequence[str], matrix: Sequence[Sequence[float]], *, title: str | None = None
) -> Figure:
    """Heatmap of held-out accuracy: rows = cue format trained on, columns = cue format tested on."""
    m = np.asarray(matrix, dtype=float)
    fig = Figure(figsize=(1.2 * len(formats) + 2.4, 1.0 * len(formats) + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(formats)), list(formats), rotation=30, ha="right")
    ax.set_yticks(range(len(formats)), list(formats))
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = "–" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
            ax.text(
                j, i, text, ha="center", va="center", color="white" if m[i, j] < 0.6 else "black", fontsize=9
            )
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title(title or "cross-format generalization", fontsize=10)
    return fig


def plot_pca(
    coords: np.ndarray,
    tier: Sequence[str],
    cue_format: Sequence[str],
    *,
    title: str | None = None,
    explained: Sequence[float] | None = None,
) -> Figure:
    """2-D scatter of ``coords[prompt, 2]`` coloured by tier and marked by cue format."""
    coords = np.asarray(coords)
    tier_arr, fmt_arr = np.asarray(tier), np.asarray(cue_format)
    fig = Figure(figsize=(5.4, 4.4), layout="constrained")
    ax = fig.subplots()
    colours = {"free": "tab:red", "paid": "tab:blue"}
    for k, fmt in enumerate(dict.fromkeys(fmt_arr.tolist())):
        for t in dict.fromkeys(tier_arr.tolist()):
            sel = (fmt_arr == fmt) & (tier_arr == t)
            ax.scatter(
                coords[sel, 0],
                coords[sel, 1],
                c=colours.get(t, "grey"),
                marker=_MARKERS[k % len(_MARKERS)],
                s=22,
                alpha=0.75,
                label=f"{t} · {fmt}",
                edgecolors="none",
            )
    ev = list(explained or [])
    ax.set_xlabel("PC1" + (f" ({100 * ev[0]:.0f}%)" if len(ev) > 0 else ""))
    ax.set_ylabel("PC2" + (f" ({100 * ev[1]:.0f}%)" if len(ev) > 1 else ""))
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "PCA", fontsize=10)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg``."""
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths
