"""Reading a patching grid: the peak (every site, the cue at layer 0 aside), subspace versus full patching, the
agreement of attribution with exact patching (on the cells that are not zero by construction), and the note."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from afprobe._stats import finite_or_none, spearman
from afprobe.experiments._directions import Directions
from afprobe.experiments._patching import RESPONSE, SPAN, PatchGrid

TOP_SITES = 5  # the largest exact effects at which attribution's magnitude error is reported
WHOLE = 0.9  # a site carries the whole effect when patching it alone recovers this much of the free run


def patching_peak(result: dict[str, Any], layers: list[int], sites: list[str]) -> dict[str, Any]:
    """The largest denoising effect over every layer and site, the cue at layer 0 aside (patching the tier token's
    own embedding is the cue itself, not where the model carries it)."""
    if "denoise" not in result:
        return {"peak_layer": None, "peak_position": None, "peak_effect": None}
    use_norm = result["normalization"] == "defined"
    m = result["denoise"]["normalized" if use_norm else "raw"]
    best = None
    for li, layer in enumerate(layers):
        for qi, site in enumerate(sites):
            v = m[li][qi]
            if layer == 0 and site == "cue":
                continue
            if v is not None and np.isfinite(v) and (best is None or v > best[0]):
                best = (v, layer, site)
    if best is None:
        return {"peak_layer": None, "peak_position": None, "peak_effect": None}
    return {
        "peak_layer": best[1],
        "peak_position": best[2],
        "peak_effect": float(best[0]),
        "peak_unit": "fraction of the free run (0 = paid, 1 = free)" if use_norm else "nats (no gap)",
        **carried(m, layers, sites, use_norm),
    }


def carried(m: Any, layers: list[int], sites: list[str], normalized: bool) -> dict[str, Any]:
    """Where the effect is carried, layer by layer: the site with the largest denoising effect at each patched
    layer (the cue at layer 0 aside), and the first layer at which one site alone carries at least
    :data:`WHOLE` of it (normalized effects only). The overall peak alone misleads: at the last layer the
    response tokens carry the whole output by construction."""
    path: list[dict[str, Any]] = []
    for li, layer in enumerate(layers):
        row = [
            (float(v), -qi, site)  # ties: the earlier site
            for qi, (v, site) in enumerate(zip(m[li], sites, strict=True))
            if v is not None and np.isfinite(v) and not (layer == 0 and site == "cue")
        ]
        if row:
            v, _, site = max(row)
            path.append({"layer": layer, "site": site, "effect": v})
    whole = next((r for r in path if normalized and float(r["effect"]) >= WHOLE), None)
    return {
        "carried": path,
        "whole_layer": whole["layer"] if whole else None,
        "whole_position": whole["site"] if whole else None,
    }


def subspace_vs_full(
    grids: dict[str, PatchGrid],
    span_layers: list[int],
    sites: list[str],
    clean: np.ndarray,
    min_gap: float,
    dirs: Directions | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Subspace vs full patching (denoising), at the span from the cue and at each named site; the headline
    ``subspace_fraction`` at the peak's layer and site when the direction is there (else at the probes' best
    layer on the span, or the ``last`` position)."""
    out: dict[str, Any] = {"subspace_fraction": None, "subspace_layer": None, "subspace_site": None}
    if not span_layers or dirs is None:
        return out
    defined = result["normalization"] == "defined"
    rows = []
    named, window = grids.get("named_denoise"), grids.get("window_denoise")
    for layer in span_layers:
        for site, g in [(SPAN, window), *((q, named) for q in sites)]:
            if g is None:
                continue
            full, sub = g.lookup("full", layer, site), g.lookup("subspace", layer, site)
            if full is None or sub is None:
                continue
            paid = np.array([clean[b] for _, b in g.pairs])
            full_raw, sub_raw = float((full - paid).mean()), float((sub - paid).mean())
            frac = sub_raw / full_raw if defined and abs(full_raw) > max(min_gap, 1e-12) else None
            rows.append(
                {
                    "layer": layer,
                    "site": site,
                    "full_raw": full_raw,
                    "subspace_raw": sub_raw,
                    "fraction_of_full": finite_or_none(frac),
                    "n_pairs": len(g.pairs),
                }
            )
    out["subspace"] = rows
    peak = next(
        (
            r
            for r in rows
            if r["layer"] == result.get("peak_layer") and r["site"] == result.get("peak_position")
        ),
        None,
    )
    if peak is None:
        target = dirs.best_layer if dirs.best_layer in span_layers else span_layers[len(span_layers) // 2]
        site = SPAN if any(r["site"] == SPAN for r in rows) else "last"
        peak = next((r for r in rows if r["layer"] == target and r["site"] == site), None)
    if peak is not None:
        out.update(
            subspace_fraction=peak["fraction_of_full"],
            subspace_layer=peak["layer"],
            subspace_site=peak["site"],
        )
    return out


def attribution_agreement(
    exact: np.ndarray, attr: np.ndarray, trivial: np.ndarray, layers: Sequence[int], sites: Sequence[str]
) -> dict[str, Any]:
    """How well attribution ranks and sizes the exact effects ``[layer, site]`` (raw nats): Spearman over every
    cell, over the cells not zero by construction (``trivial``), per site over layers, and the relative magnitude
    error at the ``TOP_SITES`` largest exact effects."""
    keep = ~trivial & np.isfinite(exact) & np.isfinite(attr)
    per_site = {
        site: finite_or_none(spearman(exact[keep[:, si], si], attr[keep[:, si], si]))
        for si, site in enumerate(sites)
    }
    cells = np.argwhere(keep)
    top = sorted(cells.tolist(), key=lambda c: -abs(exact[c[0], c[1]]))[:TOP_SITES]
    errors = [
        {
            "layer": layers[li],
            "site": sites[si],
            "exact": float(exact[li, si]),
            "attribution": float(attr[li, si]),
            "relative_error": finite_or_none(abs(attr[li, si] - exact[li, si]) / abs(exact[li, si]))
            if exact[li, si] != 0
            else None,
        }
        for li, si in top
    ]
    rel = [float(e["relative_error"]) for e in errors if e["relative_error"] is not None]
    return {
        "spearman_all": finite_or_none(spearman(exact, attr)),
        "spearman": finite_or_none(spearman(exact[keep], attr[keep])),
        "n_cells": int(keep.sum()),
        "n_trivial": int((trivial & np.isfinite(exact)).sum()),
        "spearman_by_site": per_site,
        "top_sites": errors,
        "median_relative_error_top": finite_or_none(float(np.median(rel))) if rel else None,
    }


def trivial_cells(
    delta_max: np.ndarray, layers: Sequence[int], sites: Sequence[str], n_layers: int
) -> np.ndarray:
    """Cells zero by construction: the twins' activations are identical there (before the cue, or the embedding
    output after it), or the site is a prompt token at the last layer (its residual only feeds the prediction of
    the first tag token, which both tags share, so it cancels from the metric)."""
    out = delta_max <= 0
    for li, layer in enumerate(layers):
        if layer == n_layers:
            out[li] |= np.array([s != RESPONSE for s in sites])
    return out


def patching_note(result: dict[str, Any]) -> str:
    gap = result["natural_gap"]
    parts = []
    if gap["status"] != "significant":
        what = "No" if gap["status"] == "none" else "No established"
        parts.append(
            f"{what} free-vs-paid gap in the logit metric (gap {gap['gap']:+.3f} nats, {gap['status']}): "
            "normalized patching effects are undefined; raw shifts in nats are reported and carry no causal "
            "reading."
        )
    if result.get("peak_layer") is not None and gap["status"] == "significant":
        parts.append(
            f"Denoising peaks at layer {result['peak_layer']}, site {result['peak_position']} "
            f"({result['peak_effect']:.2f} of the way from the paid run to the free run)."
        )
        if result.get("whole_layer") is not None:
            parts.append(
                f"One site alone first carries >= {WHOLE} of it at layer {result['whole_layer']} "
                f"({result['whole_position']})."
            )
        path = ", ".join(f"{r['layer']} {r['site']} {r['effect']:.2f}" for r in result.get("carried") or [])
        if path:
            parts.append(f"Strongest site per layer: {path}.")
    if result.get("subspace_fraction") is not None:
        parts.append(
            f"Patching only the direction's component at layer {result['subspace_layer']} "
            f"({result['subspace_site']}) recovers {result['subspace_fraction']:.2f} of full patching there."
        )
    n, na = result["n_pairs"], result["n_aligned_pairs"]
    if na < n:
        parts.append(f"Per-token and span patching use the {na} of {n} pairs that are token-aligned.")
    agree = ((result.get("attribution") or {}).get("agreement") or {}).get("named_denoise") or {}
    if agree.get("spearman") is not None:
        parts.append(
            f"Attribution patching vs exact (denoising, {agree['n_cells']} cells that are not zero by "
            f"construction): Spearman {agree['spearman']:.2f}."
        )
    return " ".join(parts)
