"""Synthetic probe workloads at real sizes: activations shaped like one (layer, position) of a residual-stream cache,
and the problems the probe stage fits on them.

The activations mimic what makes real ones hard to fit: prompts come in requests (``per_request`` prompts each:
both tiers x ``per_request / 2`` cue formats) that share a request effect drawn from a power-law low-rank
spectrum; each cue format adds its own offset; the tier moves every prompt by ``+-signal`` along one direction
(``signal = 0.2`` gives held-out accuracy around 0.85 at 4,000 prompts x 4,096 features); isotropic noise; large
per-feature offsets (three "massive activation" features near 300). Labels are 1 for the free tier.
"""

from __future__ import annotations

import numpy as np

from afprobe.probes import ProbeConfig, grouped_folds, shuffled_labels
from afprobe.probes._evaluate import Problems


def synthetic_activations(
    n: int, d: int, *, seed: int = 0, signal: float = 0.2, rank: int = 128, per_request: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X[n, d] float32, labels[n], request_ids[n])``; ``n`` is rounded down to whole requests."""
    rng = np.random.default_rng(seed)
    n_req = max(2, n // per_request)
    groups = np.repeat(np.arange(n_req), per_request)
    tier = np.tile(np.arange(per_request) % 2, n_req)
    fmt = np.tile(np.arange(per_request) // 2, n_req)
    rank = min(rank, d)
    scales = (3.0 / np.sqrt(1.0 + np.arange(rank))).astype(np.float32)
    basis = rng.standard_normal((rank, d), dtype=np.float32) * np.float32(np.sqrt(d) / rank)
    X = ((rng.standard_normal((n_req, rank), dtype=np.float32) * scales) @ basis)[groups]
    X += rng.standard_normal((len(groups), d), dtype=np.float32)
    u = rng.standard_normal(d).astype(np.float32)
    u *= np.float32(signal * np.sqrt(d) / 8 / np.linalg.norm(u))
    X += np.where(tier[:, None] == 1, u, -u)
    X += rng.standard_normal((per_request // 2, d), dtype=np.float32)[fmt]
    offset = 2 * rng.standard_normal(d).astype(np.float32)
    offset[:3] = 300.0
    X += offset
    return X, tier.astype(np.int64), groups.astype(str)


def stage_problems(
    y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig, draws: int | None = None
) -> tuple[Problems, list[str], list[np.ndarray | None]]:
    """The problems the probe stage fits at one candidate position after the cue (as
    :func:`afprobe.probes.cross_validate_layer` builds them): every fold of the task labels and of ``draws``
    permutation draws (labels permuted within each request; default ``cfg.baseline_repeats``, the draws fitted at
    every position), the inner folds of nested selection (task labels; one fit per pair of held-out folds), one fit
    on all rows. Returns the problems, each one's kind (``task``, ``null``, ``inner``, ``full``) and its held-out
    rows (None for inner and full)."""
    k = cfg.baseline_repeats if draws is None else draws
    folds = grouped_folds(groups, cfg.folds, 0)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence([0, 17]).spawn(k)]
    sets = [y, *(shuffled_labels(y, groups, s) for s in seeds)]
    ys, train, kinds, held = [], [], [], []
    for v, labels in enumerate(sets):
        for f in range(cfg.folds):
            ys.append(labels)
            train.append(folds != f)
            kinds.append("task" if v == 0 else "null")
            held.append(folds == f)
    for f in range(cfg.folds):
        for g in range(f + 1, cfg.folds):  # one fit serves outer fold f's inner fold g and g's inner fold f
            ys.append(y)
            train.append((folds != f) & (folds != g))
            kinds.append("inner")
            held.append(None)
    ys.append(y)
    train.append(np.ones(len(y), dtype=bool))
    kinds.append("full")
    held.append(None)
    problems = Problems(np.zeros(len(ys), dtype=np.int64), np.stack(ys), np.stack(train))
    return problems, kinds, held


def held_out_accuracy(scores: np.ndarray, problems: Problems, held: list[np.ndarray | None]) -> np.ndarray:
    """Held-out accuracy of each cross-validation problem (those with held-out rows): its scores on its fold."""
    return np.array(
        [np.mean((scores[b, h] > 0) == (problems.y[b, h] == 1)) for b, h in enumerate(held) if h is not None]
    )
