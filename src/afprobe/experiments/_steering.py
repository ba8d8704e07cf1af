"""Steering along the probe direction: a layers × alphas sweep on both tiers, directional ablation, and a band
of matched-norm random directions; effects stated as fractions of the natural free − paid gap.

The added vector is ``alpha · unit direction · median residual norm at that layer``. Fractions of the gap:
- ``reproduced`` (alpha > 0, paid prompts): (steered paid − paid) / (free − paid);
- ``removed`` (alpha < 0, free prompts): (free − steered free) / (free − paid);
- ``ablation`` (both tiers): 1 − (ablated free − ablated paid) / (free − paid).
Each is a ratio of means over pairs, with a bootstrap CI that resamples requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor

from afprobe._stats import bootstrap_ratio, finite_or_none
from afprobe.experiments._compliance import pair_indices
from afprobe.experiments._directions import random_unit_vectors
from afprobe.experiments._rows import RowBatch
from afprobe.experiments._scoring import Scores, score_settings
from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import Backend, Edit
from afprobe.scenarios import EditStart

SettingKind = Literal["clean", "probe", "random", "ablate", "random_ablate"]


@dataclass(frozen=True)
class SteerSetting:
    """One intervention: add ``alpha · scale · vector`` (``probe``/``random``) or project ``vector`` out
    (``ablate``/``random_ablate``) at ``layer``, on the tokens ``mode`` selects; ``clean`` does nothing."""

    kind: SettingKind
    layer: int = 0
    alpha: float = 0.0
    index: int = 0
    vector: Tensor | None = None
    scale: float = 1.0
    mode: EditStart = "from_cue"

    def __call__(self, batch: RowBatch) -> list[Edit]:
        if self.kind == "clean" or self.vector is None:
            return []
        starts = batch.starts(self.mode)
        if self.kind in ("probe", "random"):
            return [Edit(self.layer, "add", self.vector * (self.alpha * self.scale), starts)]
        return [Edit(self.layer, "ablate", self.vector, starts)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "alpha": self.alpha, "direction_index": self.index}


def sweep_settings(
    directions: dict[int, Tensor],
    layers: Sequence[int],
    alphas: Sequence[float],
    norms: dict[int, float],
    *,
    mode: EditStart,
    n_random: int,
    ablate: bool,
    seed: int,
) -> list[SteerSetting]:
    """The clean run, then per layer: the probe direction at every alpha, ``n_random`` random directions at every
    alpha (the same directions across alphas), and (``ablate``) ablation of the probe and the random directions."""
    out = [SteerSetting("clean", mode=mode)]
    for layer in layers:
        u = directions[layer]
        rand = random_unit_vectors(n_random, u.shape[-1], seed + 7919 * (layer + 1))
        for a in alphas:
            out.append(SteerSetting("probe", layer, a, 0, u, norms[layer], mode))
            out += [SteerSetting("random", layer, a, k, rand[k], norms[layer], mode) for k in range(n_random)]
        if ablate:
            out.append(SteerSetting("ablate", layer, 0.0, 0, u, 1.0, mode))
            out += [SteerSetting("random_ablate", layer, 0.0, k, rand[k], 1.0, mode) for k in range(n_random)]
    return out


@dataclass
class SweepResult:
    """The settings of a sweep and the log-probabilities under each (row 0 is the clean run)."""

    settings: list[SteerSetting]
    scores: Scores
    items: list[ScoredPrompt]

    @property
    def metric(self) -> np.ndarray:
        return self.scores.metric


def run_sweep(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    settings: Sequence[SteerSetting],
    *,
    batch_size: int = 4,
    max_rows: int = 64,
    share_prefix: bool = True,
    progress: bool = False,
) -> SweepResult:
    """Score every setting on every prompt, several settings per forward pass."""
    scores = score_settings(
        backend,
        items,
        list(settings),
        batch_size=batch_size,
        max_rows=max_rows,
        share_prefix=share_prefix,
        progress=progress,
        description="steering sweep",
    )
    return SweepResult(list(settings), scores, list(items))


def _fraction(num: np.ndarray, den: np.ndarray, groups: list[str], usable: bool, **kw: Any) -> dict[str, Any]:
    value, (lo, hi) = bootstrap_ratio(num, den, groups, **kw)
    effect = float(num.mean()) if len(num) else float("nan")
    if not usable:
        return {"value": None, "ci": [None, None], "effect_nats": finite_or_none(effect)}
    return {
        "value": finite_or_none(value),
        "ci": [finite_or_none(lo), finite_or_none(hi)],
        "effect_nats": finite_or_none(effect),
    }


def summarize_sweep(
    sweep: SweepResult,
    *,
    gap_usable: bool,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    subset: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per (layer, alpha): shifts of each tier in nats and as fractions of the gap, with the random band; per layer:
    ablation; and the headline (best layer, its fractions and random baseline).

    ``gap_usable`` False (no gap) keeps the effects in nats and leaves every fraction ``None``."""
    prompts = [it.prompt for it in sweep.items]
    pairs = pair_indices(prompts)
    if subset is not None:
        keep = set(subset)
        pairs = [pq for pq in pairs if pq[0] in keep]
    fi = np.array([a for a, _ in pairs])
    pi = np.array([b for _, b in pairs])
    groups = [prompts[a].request_id for a, _ in pairs]
    m = sweep.metric
    clean = m[0]
    gap_i = clean[fi] - clean[pi]
    kw = {"n_boot": n_boot, "ci": ci, "seed": seed}

    def frac_stats(rows: list[int], kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Per setting in ``rows``: the numerators per pair of the reproduced/removed/ablation fraction."""
        if kind == "paid_shift":
            return m[rows][:, pi] - clean[pi], gap_i
        if kind == "free_shift":
            return clean[fi] - m[rows][:, fi], gap_i
        return gap_i - (m[rows][:, fi] - m[rows][:, pi]), gap_i

    def ratio(num: np.ndarray) -> float:
        return float(num.sum() / gap_i.sum()) if gap_usable and gap_i.sum() != 0 else float("nan")

    layers = sorted({s.layer for s in sweep.settings if s.kind != "clean"})
    alphas = sorted({s.alpha for s in sweep.settings if s.kind == "probe"})
    grid, ablation = [], []
    for layer in layers:
        for a in alphas:
            probe = [
                i
                for i, s in enumerate(sweep.settings)
                if s.kind == "probe" and s.layer == layer and s.alpha == a
            ]
            rand = [
                i
                for i, s in enumerate(sweep.settings)
                if s.kind == "random" and s.layer == layer and s.alpha == a
            ]
            row: dict[str, Any] = {"layer": layer, "alpha": a}
            for key, kind in (("paid_shift", "paid_shift"), ("free_shift", "free_shift")):
                num, den = frac_stats(probe, kind)
                row[key] = _fraction(num[0], den, groups, gap_usable, **kw)
                rnum, _ = frac_stats(rand, kind)
                rvals = np.array([ratio(r) if gap_usable else float(r.mean()) for r in rnum])
                row[f"random_{key}"] = {
                    "mean": finite_or_none(rvals.mean()),
                    "sd": finite_or_none(rvals.std(ddof=1)),
                    "unit": "fraction" if gap_usable else "nats",
                    "n": len(rvals),
                }
            row["free_mean"] = float(m[probe[0]][fi].mean())
            row["paid_mean"] = float(m[probe[0]][pi].mean())
            row["random_free_mean"] = [float(m[r][fi].mean()) for r in rand]
            row["random_paid_mean"] = [float(m[r][pi].mean()) for r in rand]
            grid.append(row)
        abl = [i for i, s in enumerate(sweep.settings) if s.kind == "ablate" and s.layer == layer]
        rabl = [i for i, s in enumerate(sweep.settings) if s.kind == "random_ablate" and s.layer == layer]
        if abl:
            num, den = frac_stats(abl, "ablation")
            rnum, _ = frac_stats(rabl, "ablation")
            rvals = np.array([ratio(r) if gap_usable else float(r.mean()) for r in rnum])
            ablation.append(
                {
                    "layer": layer,
                    "removed": _fraction(num[0], den, groups, gap_usable, **kw),
                    "gap_after": float((m[abl[0]][fi] - m[abl[0]][pi]).mean()),
                    "random": {
                        "mean": finite_or_none(rvals.mean()) if len(rvals) else None,
                        "sd": finite_or_none(rvals.std(ddof=1)) if len(rvals) > 1 else None,
                        "unit": "fraction" if gap_usable else "nats",
                        "n": len(rvals),
                    },
                }
            )
    return {"grid": grid, "ablation": ablation, **_headline(grid, ablation, gap_usable)}


def _headline(grid: list[dict[str, Any]], ablation: list[dict[str, Any]], gap_usable: bool) -> dict[str, Any]:
    """Best layer: the largest reproduced shift above the random band at the largest positive alpha (the most
    negative alpha's removal if no alpha is positive); effects in nats when there is no gap."""
    if not grid:
        return {"best_layer": None, "fraction_of_gap": None, "random_baseline": None}
    key = "value" if gap_usable else "effect_nats"
    pos = [r["alpha"] for r in grid if r["alpha"] > 0]
    neg = [r["alpha"] for r in grid if r["alpha"] < 0]
    a_up, a_down = (max(pos) if pos else None), (min(neg) if neg else None)

    def score(r: dict[str, Any], shift: str) -> float:
        v = r[shift][key]
        base = r[f"random_{shift}"]["mean"] or 0.0
        return float("-inf") if v is None else v - base

    rows = [r for r in grid if r["alpha"] == (a_up if a_up is not None else a_down)]
    shift = "paid_shift" if a_up is not None else "free_shift"
    best = max(rows, key=lambda r: score(r, shift))
    layer = best["layer"]
    up = next((r for r in grid if r["layer"] == layer and r["alpha"] == a_up), None)
    down = next((r for r in grid if r["layer"] == layer and r["alpha"] == a_down), None)
    abl = next((r for r in ablation if r["layer"] == layer), None)

    def pick(r: dict[str, Any] | None, shift: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if r is None:
            return None, None
        return {**r[shift], "alpha": r["alpha"]}, r[f"random_{shift}"]

    rep, rep_rand = pick(up, "paid_shift")
    rem, rem_rand = pick(down, "free_shift")
    return {
        "best_layer": layer,
        "fraction_of_gap": {
            "unit": "fraction of the free - paid gap" if gap_usable else "none: no gap (effects in nats)",
            "reproduced": rep,
            "removed": rem,
            "ablation": abl["removed"] if abl else None,
        },
        "random_baseline": {
            "reproduced": rep_rand,
            "removed": rem_rand,
            "ablation": abl["random"] if abl else None,
        },
    }


def sweep_rows(sweep: SweepResult, gap: float | None) -> list[dict[str, Any]]:
    """CSV rows: one per setting × tier × system prompt (and ``all``): mean metric and shift from clean."""
    prompts = [it.prompt for it in sweep.items]
    m = sweep.metric
    clean = m[0]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompts):
        for sp in ("all", p.system_prompt):
            groups.setdefault((p.tier, sp), []).append(i)
    rows = []
    for si, s in enumerate(sweep.settings):
        for (tier, sp), idx in sorted(groups.items()):
            shift = float((m[si, idx] - clean[idx]).mean())
            rows.append(
                {
                    **s.describe(),
                    "edit_start": s.mode,
                    "scale": s.scale,
                    "tier": tier,
                    "system_prompt": sp,
                    "n_prompts": len(idx),
                    "metric_mean": float(m[si, idx].mean()),
                    "shift_nats": shift,
                    "shift_fraction_of_gap": shift / gap if gap else None,
                }
            )
    return rows
