"""Steering along the probe direction: a layers × alphas sweep on both tiers, mean ablation, and two bands of
random directions (drawn from the activations' covariance, and isotropic); effects stated against the natural
free − paid gap.

Strength is in natural units: the added vector is ``alpha · sep · u`` where ``sep`` is the mean free − paid
separation along the unit direction ``u`` at that layer (at the direction's position), so alpha = 1 moves a paid
prompt to where free prompts sit along ``u``; random directions get the same magnitude ``|sep|``. Every setting
steers both tiers. Per (layer, alpha):
- ``paid_shift`` (reproduced): (steered paid − paid) / gap, the headline at alpha > 0;
- ``free_shift`` (removed): (free − steered free) / gap, the headline at alpha < 0;
- ``gap_change``: the change of the free − paid gap under the same push (a generic push moves both tiers alike);
and per layer ``ablation``: 1 − gap after mean-ablating ``u`` (its component set to its mean over prompts) / gap.
Each is a ratio of sums over pairs with a bootstrap CI over requests; a fraction outside ``PLAUSIBLE`` is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch import Tensor

from afprobe._stats import bootstrap_ratio, finite_or_none
from afprobe.experiments._gaps import pair_indices
from afprobe.experiments._rows import RowBatch
from afprobe.experiments._scoring import Scores, score_settings
from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import Backend, Edit, PrefixStore
from afprobe.scenarios import EditStart

SettingKind = Literal["clean", "probe", "random", "ablate", "random_ablate"]
BANDS: tuple[str, ...] = ("covariance", "isotropic")  # the first is the headline random baseline
PLAUSIBLE = (-0.2, 1.5)  # a fraction of the gap outside this range is flagged


@dataclass(frozen=True)
class SteerSetting:
    """One intervention at ``layer`` on the tokens from ``mode``'s start on: add ``alpha · scale · vector``
    (``probe``/``random``), or mean-ablate ``vector`` (``ablate``/``random_ablate``: its component set to
    ``mean``); ``clean`` does nothing. ``band`` names the random band a random direction belongs to."""

    kind: SettingKind
    layer: int = 0
    alpha: float = 0.0
    index: int = 0
    vector: Tensor | None = None
    scale: float = 1.0
    mode: EditStart = "from_cue"
    mean: float = 0.0
    band: str = ""

    def __call__(self, batch: RowBatch) -> list[Edit]:
        if self.kind == "clean" or self.vector is None:
            return []
        starts = batch.starts(self.mode)
        if self.kind in ("probe", "random"):
            return [Edit(self.layer, "add", self.vector * (self.alpha * self.scale), starts)]
        edits = [Edit(self.layer, "ablate", self.vector, starts)]
        if self.mean != 0.0:
            edits.append(Edit(self.layer, "add", self.vector * self.mean, starts))
        return edits

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "band": self.band,
            "layer": self.layer,
            "alpha": self.alpha,
            "direction_index": self.index,
        }


@dataclass
class LayerPlan:
    """What a layer is steered with: the unit direction ``u``, its natural scale (signed: ``+alpha`` moves toward
    free), its mean projection (for mean ablation), and per band the random unit directions ``[n, d]`` with their
    mean projections."""

    u: Tensor
    scale: float
    mean: float = 0.0
    random: dict[str, Tensor] = field(default_factory=dict)
    random_means: dict[str, Tensor] = field(default_factory=dict)


def headline_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The positive alpha nearest 1 and the negative alpha nearest -1 (those present): where the headline fractions
    are read and the random bands are measured."""
    pos = [a for a in alphas if a > 0]
    neg = [a for a in alphas if a < 0]
    up = (min(pos, key=lambda a: (abs(a - 1), -a)),) if pos else ()
    down = (min(neg, key=lambda a: (abs(a + 1), a)),) if neg else ()
    return up + down


def sweep_settings(
    plans: dict[int, LayerPlan], alphas: Sequence[float], *, mode: EditStart, ablate: bool
) -> list[SteerSetting]:
    """The clean run, then per layer: the direction at every alpha, every random direction of every band at the
    headline alphas (:func:`headline_alphas`; the same directions at both), and (``ablate``) mean ablation of all
    of them."""
    out = [SteerSetting("clean", mode=mode)]
    heads = set(headline_alphas(alphas))
    for layer, p in sorted(plans.items()):
        mag = abs(p.scale)
        for a in alphas:
            out.append(SteerSetting("probe", layer, a, 0, p.u, p.scale, mode))
            if a not in heads:
                continue
            for band, rand in p.random.items():
                out += [
                    SteerSetting("random", layer, a, k, rand[k], mag, mode, band=band)
                    for k in range(len(rand))
                ]
        if ablate:
            out.append(SteerSetting("ablate", layer, 0.0, 0, p.u, 1.0, mode, mean=p.mean))
            for band, rand in p.random.items():
                means = p.random_means.get(band)
                out += [
                    SteerSetting(
                        "random_ablate",
                        layer,
                        0.0,
                        k,
                        rand[k],
                        1.0,
                        mode,
                        float(means[k]) if means is not None else 0.0,
                        band,
                    )
                    for k in range(len(rand))
                ]
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
    prefixes: PrefixStore | None = None,
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
        prefixes=prefixes,
    )
    return SweepResult(list(settings), scores, list(items))


def _fraction(num: np.ndarray, den: np.ndarray, groups: list[str], usable: bool, **kw: Any) -> dict[str, Any]:
    value, (lo, hi) = bootstrap_ratio(num, den, groups, **kw)
    out: dict[str, Any] = {
        "value": None,
        "ci": [None, None],
        "effect_nats": finite_or_none(float(num.mean())),
    }
    if usable:
        v = finite_or_none(value)
        out.update(value=v, ci=[finite_or_none(lo), finite_or_none(hi)])
        out["implausible"] = v is not None and not PLAUSIBLE[0] <= v <= PLAUSIBLE[1]
    return out


def summarize_sweep(
    sweep: SweepResult,
    *,
    gap_usable: bool,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    subset: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per (layer, alpha): each tier's shift and the change of the gap, in nats and as fractions of the gap, with
    each random band; per layer: mean ablation; and the headline (best layer, its fractions, the random bands).

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

    def numerators(rows: list[int], shift: str) -> np.ndarray:
        """Per setting in ``rows``, per pair: the numerator of the ``shift`` fraction (its denominator: gap_i)."""
        if shift == "paid_shift":
            return m[rows][:, pi] - clean[pi]
        if shift == "free_shift":
            return clean[fi] - m[rows][:, fi]
        if shift == "gap_change":
            return (m[rows][:, fi] - m[rows][:, pi]) - gap_i
        return gap_i - (m[rows][:, fi] - m[rows][:, pi])  # ablation: the part of the gap removed

    def band(rows: list[int], shift: str) -> dict[str, Any]:
        num = numerators(rows, shift) if rows else np.zeros((0, len(pairs)))
        usable = gap_usable and gap_i.sum() != 0
        vals = np.array([r.sum() / gap_i.sum() if usable else r.mean() for r in num])
        return {
            "mean": finite_or_none(vals.mean()) if len(vals) else None,
            "sd": finite_or_none(vals.std(ddof=1)) if len(vals) > 1 else None,
            "unit": "fraction" if usable else "nats",
            "n": len(vals),
        }

    def pick(kind: str, layer: int, alpha: float | None = None, band_name: str = "") -> list[int]:
        return [
            i
            for i, s in enumerate(sweep.settings)
            if s.kind == kind
            and s.layer == layer
            and (alpha is None or s.alpha == alpha)
            and s.band == band_name
        ]

    layers = sorted({s.layer for s in sweep.settings if s.kind != "clean"})
    alphas = sorted({s.alpha for s in sweep.settings if s.kind == "probe"})
    bands = [b for b in BANDS if any(s.band == b for s in sweep.settings)]
    grid, ablation = [], []
    for layer in layers:
        for a in alphas:
            probe = pick("probe", layer, a)
            row: dict[str, Any] = {"layer": layer, "alpha": a}
            for shift in ("paid_shift", "free_shift", "gap_change"):
                row[shift] = _fraction(numerators(probe, shift)[0], gap_i, groups, gap_usable, **kw)
                for b in bands:
                    row[f"random_{shift}" if b == BANDS[0] else f"{b}_{shift}"] = band(
                        pick("random", layer, a, b), shift
                    )
            row["free_mean"] = float(m[probe[0]][fi].mean())
            row["paid_mean"] = float(m[probe[0]][pi].mean())
            rand = pick("random", layer, a, bands[0]) if bands else []
            row["random_free_mean"] = [float(m[r][fi].mean()) for r in rand]
            row["random_paid_mean"] = [float(m[r][pi].mean()) for r in rand]
            grid.append(row)
        abl = pick("ablate", layer)
        if abl:
            entry: dict[str, Any] = {
                "layer": layer,
                "removed": _fraction(numerators(abl, "ablation")[0], gap_i, groups, gap_usable, **kw),
                "gap_after": float((m[abl[0]][fi] - m[abl[0]][pi]).mean()),
            }
            for b in bands:
                entry["random" if b == BANDS[0] else b] = band(
                    pick("random_ablate", layer, band_name=b), "ablation"
                )
            ablation.append(entry)
    return {"grid": grid, "ablation": ablation, **_headline(grid, ablation, gap_usable, bands)}


def _headline(
    grid: list[dict[str, Any]], ablation: list[dict[str, Any]], gap_usable: bool, bands: list[str]
) -> dict[str, Any]:
    """Best layer: the largest reproduced shift beyond the random band at the positive alpha nearest 1 (the natural
    unit; the negative alpha nearest -1's removal if no alpha is positive); effects in nats when there is no gap."""
    if not grid:
        return {
            "best_layer": None,
            "fraction_of_gap": None,
            "random_baseline": None,
            "random_isotropic": None,
        }
    key = "value" if gap_usable else "effect_nats"
    alphas = sorted({r["alpha"] for r in grid})
    a_up = next((a for a in headline_alphas(alphas) if a > 0), None)
    a_down = next((a for a in headline_alphas(alphas) if a < 0), None)

    def score(r: dict[str, Any], shift: str) -> float:
        v = r[shift][key]
        base = (r.get(f"random_{shift}") or {}).get("mean") or 0.0
        return float("-inf") if v is None else v - base

    rows = [r for r in grid if r["alpha"] == (a_up if a_up is not None else a_down)]
    shift = "paid_shift" if a_up is not None else "free_shift"
    layer = max(rows, key=lambda r: score(r, shift))["layer"]
    up = next((r for r in grid if r["layer"] == layer and r["alpha"] == a_up), None)
    down = next((r for r in grid if r["layer"] == layer and r["alpha"] == a_down), None)
    abl = next((r for r in ablation if r["layer"] == layer), None)

    def take(r: dict[str, Any] | None, shift: str, prefix: str) -> dict[str, Any] | None:
        if r is None:
            return None
        return {**r[shift], "alpha": r["alpha"]} if prefix == "" else r.get(f"{prefix}_{shift}")

    def baseline(prefix: str, ablation_key: str) -> dict[str, Any]:
        return {
            "reproduced": take(up, "paid_shift", prefix),
            "removed": take(down, "free_shift", prefix),
            "gap_change": take(up, "gap_change", prefix),
            "ablation": abl.get(ablation_key) if abl else None,
        }

    return {
        "best_layer": layer,
        "fraction_of_gap": {
            "unit": "fraction of the free - paid gap" if gap_usable else "none: no gap (effects in nats)",
            "reproduced": take(up, "paid_shift", ""),
            "removed": take(down, "free_shift", ""),
            "gap_change": take(up, "gap_change", ""),
            "ablation": abl["removed"] if abl else None,
        },
        "random_baseline": {"band": bands[0] if bands else None, **baseline("random", "random")},
        "random_isotropic": baseline("isotropic", "isotropic") if "isotropic" in bands else None,
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
