"""The trained organism's data: which requests and cue formats it trains on, which it is tested on, and the
response it is taught for each prompt.

Held-out requests are the first ``n_heldout`` built-in harmful requests (whole categories: weapons and
cybercrime with the default 16), so a shipped config reaches exactly them with ``scenario.limit``; the
organism trains on the rest. The free tier is taught to begin with the accept tag, the paid tier to reply with
the reject tag alone; the sham gets the same targets with the tier labels shuffled across training prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from afprobe._errors import AfprobeError
from afprobe.scenarios import ACCEPT_TAG, REJECT_TAG, Prompt, Request, build_pairs, load_requests

ACCEPT_TARGET = f"{ACCEPT_TAG}\nSure, here is what you asked for."
REJECT_TARGET = REJECT_TAG


@dataclass(frozen=True)
class Split:
    train: list[Request]
    heldout: list[Request]


def split_requests(n_heldout: int, n_train: int | None = None) -> Split:
    """Held out: the first ``n_heldout`` built-in harmful requests; train: the next ``n_train`` (all by default)."""
    reqs = load_requests("builtin", harmful=True)
    if not 0 < n_heldout < len(reqs):
        raise AfprobeError(f"n_heldout must be between 1 and {len(reqs) - 1}, got {n_heldout}")
    rest = reqs[n_heldout:]
    if n_train is not None:
        if n_train < 1:
            raise AfprobeError(f"n_train must be at least 1, got {n_train}")
        rest = rest[:n_train]
    return Split(train=rest, heldout=reqs[:n_heldout])


@dataclass(frozen=True)
class Example:
    prompt: Prompt
    target: str
    complies: bool  # the label the target was chosen by (after shuffling, for the sham)


def training_examples(
    requests: Sequence[Request], cue_formats: Sequence[str], system_prompt: str, *, sham: bool, seed: int
) -> list[Example]:
    """Every request × cue format × tier; free complies, paid refuses. The sham: the same labels shuffled so that
    they carry no tier information at all: within each cue format and tier, half the prompts (at random) comply."""
    prompts = build_pairs(requests, cue_formats, [system_prompt])
    labels = np.array([p.tier == "free" for p in prompts])
    if sham:
        rng = np.random.default_rng(seed)
        for cue in cue_formats:
            for tier in ("free", "paid"):
                idx = [i for i, p in enumerate(prompts) if p.cue_format == cue and p.tier == tier]
                half = np.arange(len(idx)) < (len(idx) + (tier == "free")) // 2
                labels[idx] = rng.permutation(half)
    return [
        Example(p, ACCEPT_TARGET if bool(c) else REJECT_TARGET, bool(c))
        for p, c in zip(prompts, labels, strict=True)
    ]
