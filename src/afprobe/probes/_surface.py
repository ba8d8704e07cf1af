"""Surface-feature baseline: how well the tier is predicted from what any reader of the prompt sees without the
model, after Nguyen et al. 2025 (who report a prompt-length baseline beside their probes).

The features are the prompt's length in tokens, the token index of every stored position (the token counts before
each), one-hot cue format and system prompt, and length x cue format (a cue whose free and paid values tokenize
to different lengths gives the tier away by length within that format). The headline probe type is fitted on them
(z-scored over all prompts, a label-free transform) with the same request-grouped folds as every probe; its
held-out AUROC and accuracy are drawn beside every curve. A probe that does not beat it may be reading prompt
shape rather than a representation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from afprobe.activations import ActivationReader
from afprobe.probes._config import ProbeConfig
from afprobe.probes._evaluate import Problems, fit_problems
from afprobe.probes._metrics import RequestBootstrap, accuracy, auroc


def surface_features(reader: ActivationReader) -> tuple[np.ndarray, list[str]]:
    """``(features [prompt, k], names)``, z-scored columns (constant ones dropped)."""
    meta = reader.meta
    length = np.asarray(reader.lengths, dtype=np.float64)
    cols, names = [length], ["length"]
    index = np.asarray(reader.position_index, dtype=np.float64)
    for j, name in enumerate(reader.position_names):
        cols.append(index[:, j])
        names.append(f"index:{name}")
    for key in ("cue_format", "system_prompt"):
        values = np.asarray(meta[key]).astype(str)
        for v in sorted(set(values.tolist())):
            one = (values == v).astype(np.float64)
            cols.append(one)
            names.append(f"{key}={v}")
            if key == "cue_format":
                cols.append(one * length)
                names.append(f"length x {key}={v}")
    F = np.stack(cols, axis=1)
    sd = F.std(0)
    keep = sd > 1e-12
    F = (F[:, keep] - F[:, keep].mean(0)) / sd[keep]
    return F, [n for n, k in zip(names, keep, strict=True) if k]


def surface_baseline(
    reader: ActivationReader,
    y: np.ndarray,
    folds: np.ndarray,
    probe: str,
    cfg: ProbeConfig,
    device: torch.device,
    boot: RequestBootstrap,
) -> dict[str, Any]:
    """Held-out AUROC and accuracy (with bootstrap CIs over requests) of ``probe`` on the surface features."""
    F, names = surface_features(reader)
    if F.shape[1] == 0:
        F, names = np.zeros((len(y), 1)), ["constant"]
    n_folds = int(folds.max()) + 1
    problems = Problems(
        np.zeros(n_folds, dtype=np.int64),
        np.broadcast_to(y, (n_folds, len(y))).copy(),
        np.stack([folds != f for f in range(n_folds)]),
    )
    scores = fit_problems(probe, F[None].astype(np.float32), problems, cfg, device).scores
    oof = np.empty(len(y))
    for f in range(n_folds):
        oof[folds == f] = scores[f, folds == f]
    return {
        "probe": probe,
        "features": names,
        "auroc": auroc(y, oof),
        "auroc_ci": list(boot.auroc_ci(y, oof)),
        "accuracy": accuracy(y, oof),
        "accuracy_ci": list(boot.accuracy_ci(y, oof)),
    }
