"""The labels every probe is fitted on: the task (1 = free tier) and the permutation draws of its null.

The draws swap the free and paid labels within random pairs (:func:`afprobe._stats.pair_flips`): under the null
that the activations carry nothing of the tier the two prompts of a pair are exchangeable, so each draw is as
likely as the real labeling, and every training set stays balanced (a pair never straddles folds, since folds are
grouped by request). Files whose pairs are not complete fall back to permuting labels within each request.

The same draws serve two purposes: the first ``n_curve`` are fitted at every position and averaged into each
curve's shuffled-label baseline; the first ``n_test`` make the max-statistic permutation test over the positions
after the cue (:mod:`afprobe.probes._selection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afprobe._stats import complete_pairs, pair_flips
from afprobe.probes._metrics import shuffled_labels

NULL_PAIRS = "labels swapped within random free/paid pairs"
NULL_REQUESTS = "labels permuted within each request (the file's pairs are incomplete)"


@dataclass
class LabelSets:
    """``y`` the task labels, ``folds`` the request-grouped folds every set shares, ``null[draw, prompt]`` the
    permutation draws (``n_curve`` of them fitted at every position, ``n_test`` used by the test)."""

    y: np.ndarray
    folds: np.ndarray
    null: np.ndarray
    n_curve: int
    n_test: int
    null_kind: str

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1


def make_label_sets(
    y: np.ndarray,
    folds: np.ndarray,
    pairs: np.ndarray,
    groups: np.ndarray,
    *,
    n_curve: int,
    n_test: int,
    seed: int,
) -> LabelSets:
    """The task and ``max(n_curve, n_test)`` seeded permutation draws (see the module docstring)."""
    n = max(n_curve, n_test)
    state = int(np.random.SeedSequence([seed, 17]).generate_state(1)[0])
    if complete_pairs(y, pairs):
        null, kind = pair_flips(y, pairs, n, state), NULL_PAIRS
    else:
        draws = [shuffled_labels(y, groups, state + i) for i in range(n)]
        null, kind = (np.stack(draws) if draws else np.zeros((0, len(y)), dtype=np.int64)), NULL_REQUESTS
    return LabelSets(np.asarray(y), folds, null.reshape(n, len(y)), n_curve, n_test, kind)
