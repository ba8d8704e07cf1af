"""Laying out ``afprobe probe``'s directory: results JSON, the CSV tables behind every plot, directions, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afprobe._io import write_csv, write_json
from afprobe.probes._directions import save_directions
from afprobe.probes._outputs import RESULTS_FILE, staged_output_dir
from afprobe.probes._plots import plot_cross_format, plot_layer_curves, plot_pca, save_figure


def write_outputs(
    out: Path,
    overwrite: bool,
    results: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]],
    extra: dict[str, Any],
    plots: bool = True,
) -> None:
    """Write everything into a staging directory that replaces ``out`` once complete; the results JSON, which
    marks a finished directory, is written last."""
    with staged_output_dir(out, overwrite) as tmp:
        (tmp / "results").mkdir()
        for name, rows in tables.items():
            write_csv(tmp / "results" / f"{name}.csv", rows)
        save_directions(tmp, extra["directions"])
        if plots:
            write_plots(tmp / "plots", results, extra)
        write_json(tmp / RESULTS_FILE, results)


def write_plots(folder: Path, results: dict[str, Any], extra: dict[str, Any]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    notes = {
        p: {"cue": "trivial: reads the tier token", "before_cue": "before the cue: expect chance"}.get(r, "")
        for p, r in results["position_relation"].items()
    }
    model = results["model_id"]
    paths = []
    for metric in ("accuracy", "auroc"):
        fig = plot_layer_curves(
            results["per_layer"],
            metric,
            positions=results["positions"],
            notes=notes,
            title=f"{model}: probe {metric} by layer (95% CI over requests)",
        )
        paths += save_figure(fig, folder / f"{metric}_by_layer")
    cf = results.get("cross_format")
    if cf is not None:
        fig = plot_cross_format(
            cf["formats"],
            cf["matrix"],
            title=f"cross-format accuracy, layer {cf['layer']} · {cf['position']} · {cf['probe']}",
        )
        paths += save_figure(fig, folder / "cross_format")
    pca, best = extra.get("pca"), results.get("best")
    if pca is not None and best is not None:
        fig = plot_pca(
            pca["coords"],
            pca["tier"],
            pca["cue_format"],
            explained=pca["explained"],
            title=f"PCA at layer {best['layer']} · {best['position']}",
        )
        paths += save_figure(fig, folder / "pca_best_layer")
    return paths
