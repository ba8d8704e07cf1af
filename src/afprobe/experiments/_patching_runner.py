"""``PatchingRunner``: exact, subspace and attribution patching between every pair's twins -> ``patching.json``,
``patching.csv`` and ``patching_pairs.csv`` (the JSON file written last)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from afprobe._io import write_csv, write_json
from afprobe.experiments._attribution import attribution_matrix, attribution_patching
from afprobe.experiments._compliance import logit_scores
from afprobe.experiments._config import PatchingConfig, PatchRunConfig
from afprobe.experiments._directions import Directions, resolve_directions
from afprobe.experiments._gaps import gap_summary, pair_indices
from afprobe.experiments._patching import (
    PatchGrid,
    PatchStore,
    collect,
    grid_matrix,
    named_sites,
    pair_rows,
    run_exact,
    window_sites,
)
from afprobe.experiments._patching_summary import (
    attribution_agreement,
    patching_note,
    patching_peak,
    subspace_vs_full,
    trivial_cells,
)
from afprobe.experiments._subject import ExperimentRunner, Subject

PATCHING_FILE = "patching.json"
PATCHING_SCHEMA = "afprobe.patching/1"


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
    lp_acc, lp_rej = logit_scores(
        s.backend, s.items, batch_size=cfg.compliance.batch_size, progress=progress, prefixes=s.prefixes
    )
    clean = lp_acc - lp_rej
    kw: dict[str, Any] = {"n_boot": cfg.compliance.n_bootstrap, "ci": cfg.compliance.ci, "seed": cfg.seed}
    natural = gap_summary(clean, prompts, pairs, min_gap=pc.min_gap, **kw)
    defined = natural["status"] == "significant"
    min_gap = pc.min_gap if defined else float("inf")  # no normalization without an established gap
    span_layers = [layer for layer in layers if dirs is not None and layer in dirs.vectors]
    store = collect(
        s.backend,
        s.items,
        pairs,
        layers,
        pc.positions,
        pc.window,
        span_layers,
        batch_size=pc.batch_size,
        prefixes=s.prefixes,
        share_prefix=pc.share_prefix,
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
        response=pc.response,
        batch_size=pc.batch_size,
        max_rows=pc.max_rows,
        share_prefix=pc.share_prefix,
        progress=progress,
        prefixes=s.prefixes,
    )
    timings["exact"] = time.perf_counter() - t
    sites = named_sites(store, pc.response)
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
        "sites": sites,
        "directions": dirs.meta() if dirs else None,
    }
    csv_rows: list[dict[str, Any]] = []
    pair_csv: list[dict[str, Any]] = []
    for direction in ("denoise", "noise"):
        g = grids.get(f"named_{direction}")
        if g is None:
            continue
        norm, raw = grid_matrix(g, "full", layers, sites, clean, min_gap)
        result[direction] = {"normalized": norm, "raw": raw}
        csv_rows += _csv("full", direction, layers, sites, norm, raw, len(pairs))
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
    result.update(patching_peak(result, layers, sites))
    result.update(subspace_vs_full(grids, span_layers, sites, clean, pc.min_gap, dirs, result))

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
    out: dict[str, Any] = {"spearman": {}, "agreement": {}}
    wsites = window_sites(pc.window)
    sites = named_sites(store, pc.response)
    for direction in ("denoise", "noise") if pc.noising else ("denoise",):
        est, delta_max = attribution_patching(
            s.backend,
            store,
            pairs,
            [*sites, *wsites],
            direction,
            batch_size=pc.batch_size,
            progress=progress,
            share_prefix=pc.share_prefix,
            prefixes=s.prefixes,
        )
        trivial = trivial_cells(delta_max, layers, [*sites, *wsites], s.lm.n_layers)
        q = len(sites)
        blocks = [("named", sites, grids.get(f"named_{direction}"), pairs, est[:, :q], trivial[:, :q])]
        if grids.get(f"window_{direction}") is not None and aligned_pairs:
            keep = [k for k, (a, _) in enumerate(pairs) if a in store.aligned]
            blocks.append(
                (
                    "window",
                    wsites,
                    grids[f"window_{direction}"],
                    aligned_pairs,
                    est[:, q:, keep],
                    trivial[:, q:],
                )
            )
        for name, names, grid, ps, e, triv in blocks:
            norm, raw = attribution_matrix(e, ps, clean, direction, min_gap)
            out[f"{name}_{direction}" if name == "window" else direction] = {"normalized": norm, "raw": raw}
            csv_rows += _csv("attribution", direction, layers, names, norm, raw, len(ps))
            assert grid is not None
            _, exact_raw = grid_matrix(grid, "full", layers, names, clean, min_gap)
            agree = attribution_agreement(
                np.array(exact_raw, dtype=float), np.array(raw, dtype=float), triv, layers, names
            )
            out["agreement"][f"{name}_{direction}"] = agree
            out["spearman"][f"{name}_{direction}"] = agree["spearman"]
    return out
