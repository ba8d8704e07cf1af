"""Planting: fit the mechanism, calibrate its strength to the requested gaps, measure what it did.

The planted gap is the free − paid gap the mechanism adds: the planted model's gap minus the sham's (the same
model at strength 0), in nats of the compliance metric (log p(accept prefix) − log p(reject prefix)), on the
calibration prompts, with a bootstrap CI over requests. Calibration runs the sham with the neuron's write at
``last`` added as an edit (``strength * c * w``, ``c`` measured per prompt), several strengths per forward pass,
interpolates, then installs each strength in the weights and measures again (refining by the ratio if needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from afprobe._errors import AfprobeError
from afprobe.config import StrictModel
from afprobe.experiments import (
    RowBatch,
    ScoredPrompt,
    gap_summary,
    logit_scores,
    pair_indices,
    prepare_prompts,
    score_settings,
)
from afprobe.models import Edit, LoadedModel, ModelConfig, generate, make_backend
from afprobe.organisms._mechanism import Mechanism, build_mechanism, default_block, set_strength
from afprobe.scenarios import ScenarioConfig, build_scenario, tokenize_prompts

# multiples of the first-order estimate of the strength that plants the largest requested gap (the metric
# saturates: the first-order estimate is an upper bound on where the linear regime ends)
GRID = (0.0, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0, 1.5, 2.0, 4.0, 8.0)


class PlantConfig(StrictModel):
    """What to plant. ``gaps`` (nats) are calibrated; ``strengths`` (the write's norm per unit of neuron output)
    are used as given instead. Several values give a sweep (one model directory each); 0 is the sham."""

    block: int | None = None
    gaps: list[float] = [1.0]
    strengths: list[float] | None = None
    isolate: bool = True
    gate_scale: float = Field(default=10.0, gt=0)
    n_gradient: int = Field(default=8, ge=1)
    batch_size: int = Field(default=8, ge=1)
    tolerance: float = Field(default=0.05, gt=0)
    max_refine: int = Field(default=2, ge=0)
    generations: int = Field(default=2, ge=0)
    max_new_tokens: int = Field(default=24, ge=1)
    n_bootstrap: int = Field(default=1000, ge=100)

    @field_validator("gaps")
    @classmethod
    def _gaps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("gaps is empty")
        if any(g < 0 for g in v):
            raise ValueError("a planted gap must be >= 0 (free minus paid, in nats)")
        return v


def _plant_scenario() -> ScenarioConfig:
    return ScenarioConfig(harmful=True, limit=8, system_prompts=["helpful_only"])


class PlantRunConfig(StrictModel):
    """Everything ``afprobe organism plant`` needs: the base model, the calibration prompts, the plant."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=_plant_scenario)
    plant: PlantConfig = PlantConfig()
    seed: int = 0


@dataclass
class PlantPoint:
    """One strength of a sweep: the requested gap (``None`` when the strength was given) and what was measured."""

    requested_gap: float | None
    strength: float
    metric: np.ndarray
    planted_gap: dict[str, Any]
    model_gap: dict[str, Any]
    side_effects: dict[str, Any]
    generations: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PlantResult:
    lm: LoadedModel
    mechanism: Mechanism
    items: list[ScoredPrompt]
    base_metric: np.ndarray
    sham_metric: np.ndarray
    base_gap: dict[str, Any]
    sham_gap: dict[str, Any]
    points: list[PlantPoint]
    base_generations: list[str]
    config: PlantRunConfig
    base_hash: str = ""


def plant(
    lm: LoadedModel, cfg: PlantRunConfig, *, progress: bool = False, keep: int | None = None
) -> PlantResult:
    """Plant into ``lm.model`` **in place** and measure every requested strength; the model is left at the
    strength of point ``keep`` (default: the last)."""
    torch.manual_seed(cfg.seed)
    base_hash = lm.weights_hash
    pc = cfg.plant
    block = default_block(lm.n_layers) if pc.block is None else pc.block
    prompts = build_scenario(cfg.scenario)
    items = prepare_prompts(lm.tokenizer, tokenize_prompts(lm.tokenizer, prompts))
    pairs = pair_indices([it.prompt for it in items])
    backend = make_backend(lm, "hooks")
    kw = {"n_boot": pc.n_bootstrap, "seed": cfg.seed}
    gen_idx = [i for p in pairs[: pc.generations] for i in p]
    base = _metric(backend, items, pc.batch_size, progress)
    base_gen = _generate(backend, items, gen_idx, pc, progress)
    mech, c = build_mechanism(
        lm,
        items,
        block,
        isolate=pc.isolate,
        gate_scale=pc.gate_scale,
        n_gradient=pc.n_gradient,
        batch_size=pc.batch_size,
        progress=progress,
    )
    backend = make_backend(lm, "hooks")
    ps = [it.prompt for it in items]
    targets: list[tuple[float | None, float]]
    if pc.strengths is not None:
        sham = _metric(backend, items, pc.batch_size, progress)
        targets = [(None, s) for s in pc.strengths]
    else:
        sham, strengths = calibrate(backend, items, mech, c, pc.gaps, pc.batch_size, progress)
        targets = list(zip(pc.gaps, strengths, strict=True))
    points = []
    for goal, k in targets:
        metric = _measure_at(backend, items, mech, k, pc, progress)
        gap = gap_summary(metric - sham, ps, pairs, **kw)
        for _ in range(pc.max_refine):
            if (
                goal is None
                or goal == 0
                or gap["gap"] is None
                or abs(gap["gap"] - goal) <= pc.tolerance * goal
            ):
                break
            if gap["gap"] <= 0:
                break
            k = k * goal / gap["gap"]
            metric = _measure_at(backend, items, mech, k, pc, progress)
            gap = gap_summary(metric - sham, ps, pairs, **kw)
        points.append(
            PlantPoint(
                requested_gap=goal,
                strength=float(k),
                metric=metric,
                planted_gap=gap,
                model_gap=gap_summary(metric, ps, pairs, **kw),
                side_effects=side_effects(metric, base, sham, ps),
                generations=[
                    {"tier": items[i].prompt.tier, "base": b, "planted": p}
                    for i, b, p in zip(
                        gen_idx, base_gen, _generate(backend, items, gen_idx, pc, progress), strict=True
                    )
                ],
            )
        )
    set_strength(lm.model, mech, points[-1 if keep is None else keep].strength)
    return PlantResult(
        lm=lm,
        mechanism=mech,
        items=items,
        base_metric=base,
        sham_metric=sham,
        base_gap=gap_summary(base, ps, pairs, **kw),
        sham_gap=gap_summary(sham, ps, pairs, **kw),
        points=points,
        base_generations=base_gen,
        config=cfg,
        base_hash=base_hash,
    )


def _metric(backend: Any, items: Sequence[ScoredPrompt], batch_size: int, progress: bool) -> np.ndarray:
    acc, rej = logit_scores(backend, items, batch_size=batch_size, progress=progress)
    return np.asarray(acc - rej)


def _measure_at(
    backend: Any, items: Sequence[ScoredPrompt], mech: Mechanism, k: float, pc: PlantConfig, progress: bool
) -> np.ndarray:
    set_strength(backend.lm.model, mech, k)
    return _metric(backend, items, pc.batch_size, progress)


def _generate(
    backend: Any, items: Sequence[ScoredPrompt], idx: Sequence[int], pc: PlantConfig, progress: bool
) -> list[str]:
    if not idx:
        return []
    new = generate(
        backend,
        [items[i].tok for i in idx],
        max_new_tokens=pc.max_new_tokens,
        batch_size=pc.batch_size,
        progress=progress,
    )
    tok = backend.lm.tokenizer
    return [tok.decode(ids, skip_special_tokens=False) for ids in new]


def side_effects(
    metric: np.ndarray, base: np.ndarray, sham: np.ndarray, prompts: Sequence[Any]
) -> dict[str, Any]:
    """How far the planted model's metric moved from the base model's, per tier (mean and sd over prompts, nats),
    and how far the sham (isolation only) moved."""
    out: dict[str, Any] = {}
    for tier in ("free", "paid"):
        sel = np.array([p.tier == tier for p in prompts])
        d = metric[sel] - base[sel]
        s = sham[sel] - base[sel]
        out[f"{tier}_metric_change"] = {"mean": float(d.mean()), "sd": float(d.std()), "unit": "nats"}
        out[f"{tier}_sham_change"] = {"mean": float(s.mean()), "sd": float(s.std()), "unit": "nats"}
    return out


def calibrate(
    backend: Any,
    items: Sequence[ScoredPrompt],
    mech: Mechanism,
    c: torch.Tensor,
    gaps: Sequence[float],
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, list[float]]:
    """The sham's metric and, for each requested gap, the strength that plants it (interpolated on a grid of
    strengths run as edits of the sham)."""
    prompts = [it.prompt for it in items]
    pairs = pair_indices(prompts)
    grad = float(mech.stats["write"]["metric_gradient_norm"])
    cf = float(np.mean([float(c[a]) for a, _ in pairs]))
    cp = float(np.mean([float(c[b]) for _, b in pairs]))
    slope = grad * (cf - cp)
    if not slope > 0:
        raise AfprobeError(
            "the neuron's output is not larger on free prompts than on paid ones: nothing to calibrate"
        )
    top = max(gaps) if max(gaps) > 0 else 1.0
    unit = top / slope
    grid = [unit * f for f in GRID]
    value = c.float()

    def setting(k: float):
        def edits(batch: RowBatch) -> list[Edit]:
            if k == 0:
                return []
            rows = torch.tensor(batch.indices)[batch.row_prompt]
            v = (k * value[rows])[:, None, None] * mech.write.float()[None, None, :]
            last = batch.per_row(torch.tensor([it.tok.positions["last"] for it in batch.items]))
            return [Edit(mech.write_layer, "add", v, last[:, None])]

        return edits

    scores = score_settings(
        backend,
        items,
        [setting(k) for k in grid],
        batch_size=batch_size,
        progress=progress,
        description="calibrating",
    )
    metric = scores.metric
    sham = metric[0]
    gap_at = np.array([np.mean([(m[a] - sham[a]) - (m[b] - sham[b]) for a, b in pairs]) for m in metric])
    return sham, [_interpolate(grid, gap_at, g) for g in gaps]


def _interpolate(grid: Sequence[float], gap_at: np.ndarray, goal: float) -> float:
    if goal == 0:
        return 0.0
    for i in range(1, len(grid)):
        lo, hi = gap_at[i - 1], gap_at[i]
        if lo <= goal <= hi and hi > lo:
            return float(grid[i - 1] + (goal - lo) / (hi - lo) * (grid[i] - grid[i - 1]))
    raise AfprobeError(
        f"cannot plant a gap of {goal:g} nats: the strengths tried reach at most {float(np.max(gap_at)):.3g} nats"
    )
