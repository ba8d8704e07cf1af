"""Runners behind ``afprobe steer`` and ``afprobe patch``: config in, JSON + CSV out, the summary dict returned.

``run_steering`` writes ``compliance.json`` / ``compliance.csv`` (the natural gap every effect is stated
against) and ``steering.json`` / ``steering.csv``; ``run_patching`` writes ``patching.json``, ``patching.csv`` and
``patching_pairs.csv``. JSON files are written last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from afprobe._errors import AfprobeError
from afprobe.experiments._compliance import (
    ComplianceResult,
    get_classifier,
    measure_compliance,
    pair_indices,
)
from afprobe.experiments._config import SteerRunConfig
from afprobe.experiments._directions import (
    Directions,
    as_directions,
    load_probe_directions,
    mean_difference_directions,
)
from afprobe.experiments._generate import GenerationEdit, generate
from afprobe.experiments._io import check_out_dir, write_csv, write_json
from afprobe.experiments._resid import median_norms
from afprobe.experiments._scoring import ScoredPrompt, prepare_prompts
from afprobe.experiments._steering import run_sweep, summarize_sweep, sweep_rows, sweep_settings
from afprobe.models import Backend, LoadedModel, ModelConfig, load_model, make_backend
from afprobe.scenarios import ScenarioConfig, build_scenario, tokenize_prompts

COMPLIANCE_FILE = "compliance.json"
STEERING_FILE = "steering.json"
PATCHING_FILE = "patching.json"


@dataclass
class Setup:
    lm: LoadedModel
    backend: Backend
    items: list[ScoredPrompt]


def setup(
    model: ModelConfig, scenario: ScenarioConfig, seed: int, lm: LoadedModel | None, backend: str | None
) -> Setup:
    """Seed, load the model (unless given), build and tokenize the prompts."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    prompts = build_scenario(scenario)
    lm = lm or load_model(model)
    toks = tokenize_prompts(lm.tokenizer, prompts)
    return Setup(lm, make_backend(lm, backend), prepare_prompts(lm.tokenizer, toks))


def model_meta(lm: LoadedModel) -> dict[str, Any]:
    return {
        "name": lm.name,
        "model_id": lm.model_id,
        "weights_hash": lm.weights_hash,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "dtype": str(lm.dtype).removeprefix("torch."),
    }


def resolve_directions(
    s: Setup,
    directions: Directions | dict[int, Tensor] | None,
    probes: str | Path | None,
    position: str,
    probe: str | None,
    batch_size: int,
) -> Directions:
    """Given directions, else ``afprobe probe``'s output in ``probes``, else in-sample mean differences."""
    if directions is not None:
        return as_directions(directions, position)
    if probes is not None:
        return load_probe_directions(probes, s.lm, position=position, probe=probe)
    return mean_difference_directions(
        s.backend, s.items, list(range(s.lm.n_layers + 1)), position, batch_size=batch_size
    )


def choose_layers(spec: Literal["auto"] | list[int], dirs: Directions, n_auto: int) -> list[int]:
    """``auto``: up to ``n_auto`` evenly spaced layers with a direction (past the embedding), the probes' best
    layer included; a list is checked against the layers that have directions."""
    if spec != "auto":
        missing = [layer for layer in spec if layer not in dirs.vectors]
        if missing:
            raise AfprobeError(f"no direction for layers {missing} (layers with directions: {dirs.layers})")
        return sorted(set(spec))
    pool = [layer for layer in dirs.layers if layer > 0] or dirs.layers
    picks = {pool[round(float(i))] for i in np.linspace(0, len(pool) - 1, min(n_auto, len(pool)))}
    if dirs.best_layer is not None and dirs.best_layer in pool and dirs.best_layer not in picks:
        picks.remove(min(picks, key=lambda x: abs(x - dirs.best_layer)))  # type: ignore[operator]
        picks.add(dirs.best_layer)
    return sorted(picks)


def write_compliance(result: ComplianceResult, out: Path, extra: dict[str, Any]) -> None:
    write_csv(out / "compliance.csv", result.rows())
    write_json(out / COMPLIANCE_FILE, {**extra, **result.summary})


def run_steering(
    cfg: SteerRunConfig,
    out_dir: str | Path | None = None,
    *,
    lm: LoadedModel | None = None,
    directions: Directions | dict[int, Tensor] | None = None,
    probes: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure compliance, then sweep steering along the direction (layers × alphas, both tiers, random band,
    ablation); write the results into ``out_dir`` (when given) and return ``steering.json``'s content."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_out_dir(out, STEERING_FILE, overwrite)
    sc = cfg.steering
    t0 = time.perf_counter()
    s = setup(cfg.model, cfg.scenario, cfg.seed, lm, sc.backend)
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
    comp = measure_compliance(s.backend, s.items, cfg.compliance, seed=cfg.seed, progress=progress)
    timings["compliance"] = time.perf_counter() - t
    meta = {
        "schema": "afprobe.compliance/1",
        "model": model_meta(s.lm),
        "config": cfg.model_dump(mode="json"),
    }
    if out is not None:
        write_compliance(comp, out, meta)

    t = time.perf_counter()
    norms = median_norms(s.backend, s.items, layers, sc.positions, batch_size=cfg.compliance.batch_size)
    settings = sweep_settings(
        dirs.vectors,
        layers,
        sc.alphas,
        norms,
        mode=sc.positions,
        n_random=sc.n_random,
        ablate=sc.ablate,
        seed=cfg.seed,
    )
    sweep = run_sweep(
        s.backend,
        s.items,
        settings,
        batch_size=sc.batch_size,
        max_rows=sc.max_rows,
        share_prefix=sc.share_prefix,
        progress=progress,
    )
    timings["sweep"] = time.perf_counter() - t

    logit = comp.summary["logit"]
    kw: dict[str, Any] = {"n_boot": cfg.compliance.n_bootstrap, "ci": cfg.compliance.ci, "seed": cfg.seed}
    summary = summarize_sweep(sweep, gap_usable=logit["status"] == "significant", **kw)
    by_sp = {}
    for sp, block in logit["by_system_prompt"].items():
        subset = [i for i, it in enumerate(s.items) if it.prompt.system_prompt == sp]
        part = summarize_sweep(sweep, gap_usable=block["status"] == "significant", subset=subset, **kw)
        by_sp[sp] = {
            "natural_gap": _gap_only(block),
            **{k: part[k] for k in ("best_layer", "fraction_of_gap", "random_baseline")},
        }
    result: dict[str, Any] = {
        "schema": "afprobe.steering/1",
        "model": model_meta(s.lm),
        "config": cfg.model_dump(mode="json"),
        "n_pairs": logit["n_pairs"],
        "n_requests": logit["n_requests"],
        "directions": dirs.meta(),
        "positions": sc.positions,
        "layers": layers,
        "alphas": list(sc.alphas),
        "n_random": sc.n_random,
        "norms": {str(k): v for k, v in norms.items()},
        "natural_gap": _gap_only(logit),
        "best_layer": summary["best_layer"],
        "fraction_of_gap": summary["fraction_of_gap"],
        "random_baseline": summary["random_baseline"],
        "grid": summary["grid"],
        "ablation": summary["ablation"],
        "by_system_prompt": by_sp,
        "clean_consistency_max_abs": float(np.abs(sweep.metric[0] - comp.metric).max()),
        "generation": None,
    }
    if sc.generate and summary["best_layer"] is not None:
        t = time.perf_counter()
        result["generation"] = _steered_generation(s, cfg, dirs, summary["best_layer"], norms, comp, progress)
        timings["generation"] = time.perf_counter() - t
    result["note"] = steering_note(result, dirs)
    result["timings"] = timings
    if out is not None:
        write_csv(
            out / "steering.csv",
            sweep_rows(sweep, logit["gap"] if logit["status"] == "significant" else None),
        )
        write_json(out / STEERING_FILE, result)
    return result


def _gap_only(block: dict[str, Any]) -> dict[str, Any]:
    return {k: block.get(k) for k in ("free", "paid", "gap", "gap_ci", "status", "n_pairs")}


def _steered_generation(
    s: Setup,
    cfg: SteerRunConfig,
    dirs: Directions,
    layer: int,
    norms: dict[int, float],
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
        edit = GenerationEdit(layer, "add", dirs[layer] * (alpha * norms[layer]), sc.positions)
        new = generate(
            s.backend,
            [s.items[i].tok for i in idx],
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
    parts = []
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
                f"reproduces {rep['value']:.2f} of the gap (CI [{rep['ci'][0]:.2f}, {rep['ci'][1]:.2f}]); matched "
                f"random directions {rr['mean']:.2f} ± {rr['sd']:.2f}."
            )
        if f and f.get("ablation") and f["ablation"]["value"] is not None:
            parts.append(f"Ablating the direction there removes {f['ablation']['value']:.2f} of the gap.")
    if dirs.source.startswith("mean_difference"):
        parts.append("Directions are in-sample mean differences of the steered prompts (no --probes given).")
    return " ".join(parts)


def read_results(out_dir: str | Path, name: str) -> dict[str, Any]:
    """Read a finished results file (``compliance.json``, ``steering.json``, ``patching.json``)."""
    from afprobe.experiments._io import read_json

    return read_json(Path(out_dir) / name)
