"""``SteeringRunner``: compliance (the gap every effect is stated against), then a steering sweep along the
direction (layers × alphas on both tiers, the random band, ablation) -> ``compliance.json`` / ``.csv`` and
``steering.json`` / ``.csv`` (each JSON file written last)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from afprobe._errors import AfprobeError
from afprobe._io import write_csv, write_json
from afprobe.experiments._compliance import ComplianceResult, get_classifier, measure_compliance
from afprobe.experiments._compliance_runner import write_compliance
from afprobe.experiments._config import SteerRunConfig
from afprobe.experiments._directions import Directions, resolve_directions
from afprobe.experiments._gaps import pair_indices
from afprobe.experiments._steer_plan import plan_layers
from afprobe.experiments._steering import (
    PLAUSIBLE,
    LayerPlan,
    run_sweep,
    summarize_sweep,
    sweep_rows,
    sweep_settings,
)
from afprobe.experiments._subject import ExperimentRunner, Subject
from afprobe.models import Edit, generate
from afprobe.scenarios import edit_starts

STEERING_FILE = "steering.json"
STEERING_SCHEMA = "afprobe.steering/1"


class SteeringRunner(ExperimentRunner):
    """Steer along ``directions`` (given, else ``afprobe probe``'s output in ``probes``, else in-sample mean
    differences) on ``cfg.scenario``'s prompts or a prepared :class:`Subject`; write into ``out`` and return
    ``steering.json``'s content."""

    RESULT_FILE = STEERING_FILE
    cfg: SteerRunConfig

    def run(
        self,
        out: str | Path | None = None,
        *,
        subject: Subject | None = None,
        directions: Directions | dict[int, Tensor] | None = None,
        probes: str | Path | None = None,
    ) -> dict[str, Any]:
        cfg, progress = self.cfg, self.progress
        out_dir = self._out_dir(out)
        sc = cfg.steering
        t0 = time.perf_counter()
        s = self._subject(subject, sc.backend)
        timings: dict[str, float] = {"setup": time.perf_counter() - t0}
        if sc.layers != "auto":
            s.backend.check_layers(sc.layers)
        t = time.perf_counter()
        dirs = resolve_directions(
            s, directions, probes, sc.direction_position, sc.probe, cfg.compliance.batch_size
        )
        layers = choose_layers(sc.layers, dirs, sc.n_auto_layers)
        timings["directions"] = time.perf_counter() - t

        t = time.perf_counter()
        comp = measure_compliance(
            s.backend, s.items, cfg.compliance, seed=cfg.seed, progress=progress, prefixes=s.prefixes
        )
        timings["compliance"] = time.perf_counter() - t
        if out_dir is not None:
            write_compliance(comp, out_dir, s, cfg.model_dump(mode="json"))

        t = time.perf_counter()
        plans, strength = plan_layers(
            s.backend,
            s.items,
            dirs,
            layers,
            mode=sc.edit_start,
            n_random=sc.n_random,
            scale=sc.scale,
            seed=cfg.seed,
            batch_size=cfg.compliance.batch_size,
            prefixes=s.prefixes,
        )
        settings = sweep_settings(plans, sc.alphas, mode=sc.edit_start, ablate=sc.ablate)
        sweep = run_sweep(
            s.backend,
            s.items,
            settings,
            batch_size=sc.batch_size,
            max_rows=sc.max_rows,
            share_prefix=sc.share_prefix,
            progress=progress,
            prefixes=s.prefixes,
        )
        timings["sweep"] = time.perf_counter() - t
        result = _result(cfg, s, comp, sweep, dirs, layers, strength)
        if sc.generate and result["best_layer"] is not None:
            t = time.perf_counter()
            result["generation"] = _steered_generation(s, cfg, plans, result["best_layer"], comp, progress)
            timings["generation"] = time.perf_counter() - t
        result["note"] = steering_note(result, dirs)
        result["timings"] = timings
        if out_dir is not None:
            gap = comp.summary["logit"]
            write_csv(
                out_dir / "steering.csv",
                sweep_rows(sweep, gap["gap"] if gap["status"] == "significant" else None),
            )
            write_json(out_dir / STEERING_FILE, result)
        return result


def _result(
    cfg: SteerRunConfig,
    s: Subject,
    comp: ComplianceResult,
    sweep: Any,
    dirs: Directions,
    layers: list[int],
    strength: dict[str, Any],
) -> dict[str, Any]:
    sc = cfg.steering
    logit = comp.summary["logit"]
    kw: dict[str, Any] = {"n_boot": cfg.compliance.n_bootstrap, "ci": cfg.compliance.ci, "seed": cfg.seed}
    summary = summarize_sweep(sweep, gap_usable=logit["status"] == "significant", **kw)
    by_sp = {}
    for sp, block in logit["by_system_prompt"].items():
        subset = [i for i, it in enumerate(s.items) if it.prompt.system_prompt == sp]
        part = summarize_sweep(sweep, gap_usable=block["status"] == "significant", subset=subset, **kw)
        by_sp[sp] = {
            "natural_gap": gap_only(block),
            **{k: part[k] for k in ("best_layer", "fraction_of_gap", "random_baseline")},
        }
    return {
        "schema": STEERING_SCHEMA,
        "model": s.lm.meta(),
        "config": cfg.model_dump(mode="json"),
        "n_pairs": logit["n_pairs"],
        "n_requests": logit["n_requests"],
        "directions": dirs.meta(),
        "edit_start": sc.edit_start,
        "layers": layers,
        "alphas": list(sc.alphas),
        "n_random": sc.n_random,
        "strength": strength,
        "natural_gap": gap_only(logit),
        "best_layer": summary["best_layer"],
        "fraction_of_gap": summary["fraction_of_gap"],
        "random_baseline": summary["random_baseline"],
        "random_isotropic": summary["random_isotropic"],
        "grid": summary["grid"],
        "ablation": summary["ablation"],
        "by_system_prompt": by_sp,
        "clean_consistency_max_abs": float(np.abs(sweep.metric[0] - comp.metric).max()),
        "generation": None,
    }


def evenly_spaced(pool: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` evenly spaced members of ``pool`` (first and last included)."""
    return sorted({pool[round(float(i))] for i in np.linspace(0, len(pool) - 1, min(n, len(pool)))})


def choose_layers(spec: Literal["auto"] | list[int], dirs: Directions, n_auto: int) -> list[int]:
    """``auto``: up to ``n_auto`` evenly spaced layers with a direction (past the embedding), the probes' best
    layer included; a list is checked against the layers that have directions."""
    if spec != "auto":
        missing = [layer for layer in spec if layer not in dirs.vectors]
        if missing:
            raise AfprobeError(f"no direction for layers {missing} (layers with directions: {dirs.layers})")
        return sorted(set(spec))
    pool = [layer for layer in dirs.layers if layer > 0] or dirs.layers
    picks = set(evenly_spaced(pool, n_auto))
    if dirs.best_layer is not None and dirs.best_layer in pool and dirs.best_layer not in picks:
        picks.remove(min(picks, key=lambda x: abs(x - dirs.best_layer)))  # type: ignore[operator]
        picks.add(dirs.best_layer)
    return sorted(picks)


def gap_only(block: dict[str, Any]) -> dict[str, Any]:
    return {k: block.get(k) for k in ("free", "paid", "gap", "gap_ci", "status", "n_pairs")}


def _steered_generation(
    s: Subject,
    cfg: SteerRunConfig,
    plans: dict[int, LayerPlan],
    layer: int,
    comp: ComplianceResult,
    progress: bool,
) -> dict[str, Any]:
    """Generated compliance with paid prompts steered by the largest positive alpha and free prompts by the most
    negative one, at ``layer``."""
    sc, cc = cfg.steering, cfg.compliance
    clf = get_classifier(cc.classifier)
    pairs = pair_indices([it.prompt for it in s.items])
    out: dict[str, Any] = {"layer": layer}
    for tier, alphas in (
        ("paid", [a for a in sc.alphas if a > 0]),
        ("free", [a for a in sc.alphas if a < 0]),
    ):
        if not alphas:
            continue
        alpha = max(alphas) if tier == "paid" else min(alphas)
        idx = [b if tier == "paid" else a for a, b in pairs]
        toks = [s.items[i].tok for i in idx]
        starts = torch.tensor(edit_starts(toks, sc.edit_start))
        edit = Edit(layer, "add", plans[layer].u * (alpha * plans[layer].scale), starts)
        new = generate(
            s.backend,
            toks,
            max_new_tokens=cc.max_new_tokens,
            sample=cc.sample,
            temperature=cc.temperature,
            seed=cfg.seed,
            edits=[edit],
            use_cache=cc.use_cache,
            batch_size=cc.batch_size,
            progress=progress,
        )
        verdicts = [clf(s.lm.tokenizer.decode(ids)) for ids in new]
        before = [comp.verdicts[i] for i in idx] if comp.verdicts else None
        out[tier] = {
            "alpha": alpha,
            "accepted_rate": float(np.mean([v == "accepted" for v in verdicts])),
            "unsteered_accepted_rate": float(np.mean([v == "accepted" for v in before])) if before else None,
            "counts": {v: verdicts.count(v) for v in ("accepted", "rejected", "unclear")},
        }
    return out


def steering_note(result: dict[str, Any], dirs: Directions) -> str:
    gap = result["natural_gap"]
    unit = (
        "alpha = 1 moves a prompt by the free - paid separation along the direction"
        if result["strength"]["scale"] == "natural"
        else "alpha = 1 adds the median residual norm (a push that measures breakage, not a dose-response)"
    )
    parts = [f"Steering strength: {unit}."]
    if gap["status"] != "significant":
        what = "No" if gap["status"] == "none" else "No established"
        parts.append(
            f"{what} free-vs-paid gap in the logit metric (gap {gap['gap']:+.3f} nats, {gap['status']}): "
            "steering effects are reported in nats only; fractions of the gap are undefined."
        )
    else:
        f, r = result["fraction_of_gap"], result["random_baseline"]
        if f and f.get("reproduced") and f["reproduced"]["value"] is not None:
            rep, rr = f["reproduced"], r["reproduced"]
            parts.append(
                f"At layer {result['best_layer']}, steering paid prompts along +direction (alpha {rep['alpha']:+g}) "
                f"reproduces {rep['value']:.2f} of the gap (CI [{rep['ci'][0]:.2f}, {rep['ci'][1]:.2f}]); random "
                f"directions from the activations' covariance {rr['mean']:.2f} ± {rr['sd'] or 0:.2f}."
            )
        if f and f.get("ablation") and f["ablation"]["value"] is not None:
            parts.append(
                f"Mean-ablating the direction there removes {f['ablation']['value']:.2f} of the gap."
            )
        flagged = [
            k for k in ("reproduced", "removed", "ablation") if f and f.get(k) and f[k].get("implausible")
        ]
        if flagged:
            lo, hi = PLAUSIBLE
            parts.append(
                f"Implausible fraction(s) ({', '.join(flagged)} outside [{lo:g}, {hi:g}]): the push does more "
                "than move prompts along the tier representation; read them as breakage, not as the mechanism."
            )
    if dirs.source.startswith("mean_difference"):
        parts.append("Directions are in-sample mean differences of the steered prompts (no --probes given).")
    return " ".join(parts)
