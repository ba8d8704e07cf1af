"""Plot functions return a Figure built from data; saving writes PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from afprobe.probes import plot_cross_format, plot_layer_curves, plot_pca, save_figure


def rows() -> list[dict]:
    out = []
    for probe in ("torch_logistic", "mass_mean"):
        for pos in ("cue", "last"):
            for layer in range(4):
                acc = 0.5 + 0.1 * layer
                out.append(
                    {
                        "probe": probe,
                        "position": pos,
                        "layer": layer,
                        "accuracy": acc,
                        "accuracy_ci": [acc - 0.05, acc + 0.05],
                        "auroc": acc,
                        "auroc_ci": [acc - 0.1, acc],
                        "shuffled_accuracy": 0.5,
                        "shuffled_auroc": 0.5,
                        "surface_accuracy": 0.48,
                        "surface_auroc": 0.5,
                    }
                )
    return out


def test_layer_curves_have_bands_and_both_baselines(tmp_path: Path) -> None:
    fig = plot_layer_curves(rows(), "accuracy", notes={"cue": "trivial"})
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["cue\n(trivial)", "last"]
    labels = [line.get_label() for line in axes[1].get_lines()]
    assert {"torch_logistic", "torch_logistic: shuffled labels", "surface features (length, format)"} <= set(
        labels
    )
    assert len(axes[1].collections) == 2  # one CI band per probe type
    paths = save_figure(fig, tmp_path / "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.svg"] and all(p.stat().st_size > 0 for p in paths)


def test_cross_format_heatmap_and_pca() -> None:
    fig = plot_cross_format(["tag", "json"], [[0.9, 0.6], [float("nan"), 0.8]])
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tag", "json"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.60", "0.80", "0.90", "–"]
    coords = np.random.default_rng(0).normal(size=(8, 2))
    fig = plot_pca(coords, ["free", "paid"] * 4, ["tag"] * 4 + ["json"] * 4, explained=[0.4, 0.2])
    ax = fig.get_axes()[0]
    assert len(ax.collections) == 4 and ax.get_xlabel() == "PC1 (40%)"
