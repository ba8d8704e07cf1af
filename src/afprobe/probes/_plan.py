"""Checking an activation file against the probe config before any fitting: positions, layers, both tiers,
enough requests, finite values; the label sets (task and permutation draws) and each position's place vs the cue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afprobe._errors import AfprobeError
from afprobe.activations import ActivationReader
from afprobe.probes._config import ProbeConfig
from afprobe.probes._labels import LabelSets, make_label_sets
from afprobe.probes._metrics import grouped_folds


@dataclass
class Plan:
    """What the activation file holds and what will be fitted, checked before any fitting starts."""

    positions: list[str]
    columns: list[int]
    layers: list[int]
    y: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    relation: dict[str, str]
    pairs: np.ndarray

    @property
    def candidates(self) -> list[str]:
        """Positions ``best`` may come from: after the cue (or, without a stored cue, every position)."""
        after = [p for p in self.positions if self.relation[p] == "after_cue"]
        return after or [p for p in self.positions if self.relation[p] == "unknown"]


def label_sets(plan: Plan, cfg: ProbeConfig, seed: int) -> LabelSets:
    """The task labels and the permutation draws (:mod:`afprobe.probes._labels`) on the plan's folds."""
    return make_label_sets(
        plan.y,
        plan.folds,
        plan.pairs,
        plan.groups,
        n_curve=cfg.baseline_repeats,
        n_test=cfg.permutations,
        seed=seed,
    )


def make_plan(reader: ActivationReader, cfg: ProbeConfig, seed: int) -> Plan:
    """Check the file against the config: positions, layers, both tiers, enough requests for the folds."""
    name = reader.path.name
    positions = list(cfg.positions) if cfg.positions is not None else list(reader.position_names)
    if not positions:
        raise AfprobeError("positions is empty: name at least one stored position")
    columns = [reader.position_col(p) for p in positions]
    layers = list(cfg.layers) if cfg.layers is not None else list(reader.layers)
    if not layers:
        raise AfprobeError("layers is empty: name at least one stored layer")
    for layer in layers:
        reader.layer_row(layer)
    for col in ("pair_id", "request_id", "tier", "cue_format", "system_prompt"):
        if col not in reader.meta:
            raise AfprobeError(f"{name} has no meta/{col} column; re-cache it with this afprobe version")
    tiers = set(reader.meta["tier"].tolist())
    if not tiers <= {"free", "paid"}:
        raise AfprobeError(f"{name} has tier values {sorted(tiers)}; expected free and paid")
    if len(tiers) < 2:
        raise AfprobeError(
            f"{name} holds only {next(iter(tiers), 'no')}-tier prompts: probes need both tiers"
        )
    groups = np.asarray(reader.meta["request_id"]).astype(str)
    folds = grouped_folds(groups, cfg.folds, seed)
    pairs = np.asarray(reader.meta["pair_id"]).astype(str)
    return Plan(
        positions, columns, layers, reader.labels, groups, folds, _relations(reader, positions), pairs
    )


def check_finite(reader: ActivationReader, plan: Plan) -> None:
    """Refuse NaN or infinite activations before any fitting (one layer at a time)."""
    for layer in plan.layers:
        X = reader.layer(layer)[:, plan.columns, :]
        bad = ~np.isfinite(X)
        if bad.any():
            prompts, cols = np.nonzero(bad.any(axis=2))
            raise AfprobeError(
                f"{reader.path.name} has NaN or infinite activations at layer {layer}, position "
                f"{plan.positions[int(cols[0])]!r} ({len(set(prompts.tolist()))} prompts affected)"
            )


def _relations(reader: ActivationReader, positions: list[str]) -> dict[str, str]:
    """``cue``, ``after_cue`` or ``before_cue`` (token index vs the cue's in every prompt), else ``unknown``."""
    if "cue" not in reader.position_names:
        return {p: "unknown" for p in positions}
    idx = reader.position_index
    cue = idx[:, reader.position_col("cue")]
    out = {}
    for p in positions:
        col = idx[:, reader.position_col(p)]
        out[p] = (
            "cue"
            if p == "cue"
            else "after_cue"
            if (col > cue).all()
            else "before_cue"
            if (col < cue).all()
            else "unknown"
        )
    return out
