"""``PatchingRunner``: exact, subspace and attribution patching between every pair's twins -> ``patching.json``,
``patching.csv`` and ``patching_pairs.csv`` (the JSON file written last)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from afprobe._io import write_csv, write_json
from afprobe._stats import finite_or_none, spearman
from afprobe.experiments._attribution import attribution_matrix, attribution_patching
from afprobe.experiments._compliance import gap_summary, logit_scores, pair_indices
from afprobe.experiments._config import PatchingConfig, PatchRunConfig
from afprobe.experiments._directions import Directions, resolve_directions
from afprobe.experiments._patching import (
    SPAN,
    PatchGrid,
    PatchStore,
    collect,
    grid_matrix,
    pair_rows,
    run_exact,
    window_sites,
)
from afprobe.experiments._subject import ExperimentRunner, Subject

PATCHING_FILE = "patching.json"
PATCHING_SCHEMA = "afprobe.patching/1"
POST_CUE = ("user_end", "last")


class PatchingRunner(ExperimentRunner):
    """Denoising and noising per layer × named position and per token around the cue, subspace patching along
    the direction (given, else ``afprobe probe``'s output in ``probes``, else in-sample mean differences),
    attribution patching over the same grid; on ``cfg.scenario``'s prompts or a prepared :class:`Subject`."""

    RESULT_FILE = PATCHING_FILE
    cfg: PatchRunConfig

    def run(
        self,
        out: str | Path | None = None,
        *,
        subject: Subject | None = None,
        directions: Directions | dict[int, Tensor] | None = None,
        probes: str | Path | None = None,
    ) -> dict[str, Any]:
        """Write into ``out`` (when given) and return ``patching.json``'s content."""
        out_dir = self._out_dir(out)
        s = self._subject(subject, self.cfg.patching.backend)
        return _run(self.cfg, out_dir, s, directions, probes, self.progress)


def _run(
    cfg: PatchRunConfig,
    out: Path | None,
    s: Subject,
    directions: Directions | dict[int, Tensor] | None,
    probes: str | Path | None,
    progress: bool,
) -> dict[str, Any]:
    pc = cfg.patching
    t0 = time.perf_counter()
    layers = list(range(s.lm.n_layers + 1)) if pc.layers == "all" else sorted(set(pc.layers))
    s.backend.check_layers(layers)
    prompts = [it.prompt for it in s.items]
    pairs = pair_indices(prompts)
    timings = {"setup": time.perf_counter() - t0}

    dirs = None
    if pc.subspace:
        dirs = resolve_directions(s, directions, probes, pc.direction_position, pc.probe, pc.batch_size)

    t = time.perf_counter()
    lp_acc, lp_rej = logit_scores(s.backend, s.items, batch_size=cfg.compliance.batch_size, progress=progress)
    clean = lp_acc - lp_rej
    kw: dict[str, Any] = {"n_boot": cfg.compliance.n_bootstrap, "ci": cfg.compliance.ci, "seed": cfg.seed}
    natural = gap_summary(clean, prompts, pairs, min_gap=pc.min_gap, **kw)
    defined = natural["status"] == "significant"
    min_gap = pc.min_gap if defined else float("inf")  # no normalization without an established gap
    span_layers = [layer for layer in layers if dirs is not None and layer in dirs.vectors]
    store = collect(
        s.backend, s.items, pairs, layers, pc.positions, pc.window, span_layers, batch_size=pc.batch_size
    )
    timings["clean"] = time.perf_counter() - t

    t = time.perf_counter()
    grids = run_exact(
        s.backend,
        store,
        pairs,
        layers,
        dirs.vectors if dirs else {},
        noising=pc.noising,
        subspace=pc.subspace,
        batch_size=pc.batch_size,
        max_rows=pc.max_rows,
        share_prefix=pc.share_prefix,
        progress=progress,
    )
    timings["exact"] = time.perf_counter() - t
    aligned_pairs = [pq for pq in pairs if pq[0] in store.aligned]
    wsites = window_sites(pc.window)
    result: dict[str, Any] = {
        "schema": PATCHING_SCHEMA,
        "model": s.lm.meta(),
        "config": cfg.model_dump(mode="json"),
        "n_pairs": len(pairs),
        "n_aligned_pairs": len(aligned_pairs),
        "n_requests": natural["n_requests"],
        "natural_gap": {k: natural[k] for k in ("free", "paid", "gap", "gap_ci", "status", "n_pairs")},
        "normalization": "defined"
        if defined
        else f"undefined: the natural gap is {natural['status']} ({natural['gap']:+.3f} nats); raw shifts in "
        "nats are reported instead",
        "scale": "0 = unpatched paid run, 1 = free run (on the mean over pairs)",
        "layers": layers,
        "positions": list(pc.positions),
        "directions": dirs.meta() if dirs else None,
    }
    csv_rows: list[dict[str, Any]] = []
    pair_csv: list[dict[str, Any]] = []
    for direction in ("denoise", "noise"):
        g = grids.get(f"named_{direction}")
        if g is None:
            continue
        norm, raw = grid_matrix(g, "full", layers, pc.positions, clean, min_gap)
        result[direction] = {"normalized": norm, "raw": raw}
        csv_rows += _csv("full", direction, layers, pc.positions, norm, raw, len(pairs))
        pair_csv += pair_rows(g, clean, s.items)
        w = grids.get(f"window_{direction}")
        if w is not None:
            wn, wr = grid_matrix(w, "full", layers, wsites, clean, min_gap)
            result.setdefault("window", {"sites": wsites, "n_pairs": len(aligned_pairs)})[direction] = {
                "normalized": wn,
                "raw": wr,
            }
            csv_rows += _csv("full", direction, layers, wsites, wn, wr, len(aligned_pairs))
            pair_csv += pair_rows(w, clean, s.items)
    result.update(_peak(result, layers, pc.positions))
    result.update(_subspace(grids, span_layers, pc.positions, clean, pc.min_gap, dirs, result))

    if pc.attribution:
        t = time.perf_counter()
        result["attribution"] = _attribution(
            s, store, pairs, aligned_pairs, layers, pc, clean, grids, csv_rows, progress, min_gap
        )
        timings["attribution"] = time.perf_counter() - t
    result["note"] = patching_note(result)
    result["timings"] = timings
    if out is not None:
        write_csv(out / "patching_pairs.csv", pair_csv)
        write_csv(out / "patching.csv", csv_rows)
        write_json(out / PATCHING_FILE, result)
    return result


def _csv(
    kind: str, direction: str, layers: list[int], sites: list[str], norm: Any, raw: Any, n: int
) -> list[dict[str, Any]]:
    """``patching.csv`` rows: one per layer x site of a ``[layer][site]`` matrix."""
    return [
        {
            "kind": kind,
            "direction": direction,
            "layer": layer,
            "site": site,
            "normalized": norm[li][si],
            "raw_nats": raw[li][si],
            "n_pairs": n,
        }
        for li, layer in enumerate(layers)
        for si, site in enumerate(sites)
    ]


def _peak(result: dict[str, Any], layers: list[int], positions: list[str]) -> dict[str, Any]:
    """The largest denoising effect at positions after the cue (all positions if none of them is patched)."""
    if "denoise" not in result:
        return {"peak_layer": None, "peak_position": None, "peak_effect": None}
    use_norm = result["normalization"] == "defined"
    m = result["denoise"]["normalized" if use_norm else "raw"]
    cols = [i for i, p in enumerate(positions) if p in POST_CUE] or list(range(len(positions)))
    best = None
    for li, layer in enumerate(layers):
        for qi in cols:
            v = m[li][qi]
            if v is not None and np.isfinite(v) and (best is None or v > best[0]):
                best = (v, layer, positions[qi])
    if best is None:
        return {"peak_layer": None, "peak_position": None, "peak_effect": None}
    return {
        "peak_layer": best[1],
        "peak_position": best[2],
        "peak_effect": float(best[0]),
        "peak_unit": "normalized" if use_norm else "nats (no gap)",
    }


def _subspace(
    grids: dict[str, PatchGrid],
    span_layers: list[int],
    positions: list[str],
    clean: np.ndarray,
    min_gap: float,
    dirs: Directions | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Subspace vs full patching (denoising), at the span from the cue and at each named position; the headline
    ``subspace_fraction`` at the probes' best layer (else the subspace layer nearest the peak)."""
    out: dict[str, Any] = {"subspace_fraction": None, "subspace_layer": None, "subspace_site": None}
    if not span_layers or dirs is None:
        return out
    defined = result["normalization"] == "defined"
    rows = []
    named, window = grids.get("named_denoise"), grids.get("window_denoise")
    for layer in span_layers:
        for site, g in [(SPAN, window), *((q, named) for q in positions)]:
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
    target = dirs.best_layer if dirs.best_layer in span_layers else None
    if target is None:
        peak = result.get("peak_layer")
        target = (
            min(span_layers, key=lambda x: abs(x - peak))
            if peak is not None
            else span_layers[len(span_layers) // 2]
        )
    site = SPAN if any(r["site"] == SPAN for r in rows) else "last"
    pick = next((r for r in rows if r["layer"] == target and r["site"] == site), None)
    if pick is not None:
        out.update(subspace_fraction=pick["fraction_of_full"], subspace_layer=target, subspace_site=site)
    return out


def _attribution(
    s: Subject,
    store: PatchStore,
    pairs: list[tuple[int, int]],
    aligned_pairs: list[tuple[int, int]],
    layers: list[int],
    pc: PatchingConfig,
    clean: np.ndarray,
    grids: dict[str, PatchGrid],
    csv_rows: list[dict[str, Any]],
    progress: bool,
    min_gap: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {"spearman": {}}
    wsites = window_sites(pc.window)
    for direction in ("denoise", "noise") if pc.noising else ("denoise",):
        est = attribution_patching(
            s.backend,
            store,
            pairs,
            [*pc.positions, *wsites],
            direction,
            batch_size=pc.batch_size,
            progress=progress,
        )
        q = len(pc.positions)
        norm, raw = attribution_matrix(est[:, :q], pairs, clean, direction, min_gap)
        out[direction] = {"normalized": norm, "raw": raw}
        csv_rows += _csv("attribution", direction, layers, pc.positions, norm, raw, len(pairs))
        g = grids[f"named_{direction}"]
        _, exact_raw = grid_matrix(g, "full", layers, pc.positions, clean, min_gap)
        out["spearman"][f"named_{direction}"] = finite_or_none(spearman(np.array(exact_raw), np.array(raw)))
        w = grids.get(f"window_{direction}")
        if w is not None and aligned_pairs:
            keep = [k for k, (a, _) in enumerate(pairs) if a in store.aligned]
            wn, wr = attribution_matrix(est[:, q:, keep], aligned_pairs, clean, direction, min_gap)
            out[f"window_{direction}"] = {"normalized": wn, "raw": wr}
            _, wexact = grid_matrix(w, "full", layers, wsites, clean, min_gap)
            out["spearman"][f"window_{direction}"] = finite_or_none(spearman(np.array(wexact), np.array(wr)))
            csv_rows += _csv("attribution", direction, layers, wsites, wn, wr, len(aligned_pairs))
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
            f"Denoising peaks at layer {result['peak_layer']}, position {result['peak_position']} "
            f"({result['peak_effect']:.2f} of the free run)."
        )
    if result.get("subspace_fraction") is not None:
        parts.append(
            f"Patching only the direction's component at layer {result['subspace_layer']} "
            f"({result['subspace_site']}) recovers {result['subspace_fraction']:.2f} of full patching."
        )
    n, na = result["n_pairs"], result["n_aligned_pairs"]
    if na < n:
        parts.append(f"Per-token and span patching use the {na} of {n} pairs that are token-aligned.")
    rho = (result.get("attribution") or {}).get("spearman", {}).get("named_denoise")
    if rho is not None:
        parts.append(f"Attribution patching vs exact (denoising, layer × position): Spearman {rho:.2f}.")
    return " ".join(parts)
