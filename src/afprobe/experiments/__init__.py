"""Causal tests: does the probe's "training" direction drive the model's free-vs-paid compliance gap?

One intervention layer under every experiment: the prompts built and tokenized once (:class:`Subject`), scored
teacher-forced under any number of edits stacked into one pass (:func:`score_settings`); then one runner per
experiment, each ``Runner(cfg).run(out, subject=...)`` like the cache and probe runners:

- :class:`ComplianceRunner`: the logit metric, generated responses with a swappable classifier, the gap with a
  bootstrap CI over requests, broken down by system prompt (``neutral`` is the control) and cue format;
- :class:`SteeringRunner`: layers × alphas on both tiers, directional ablation, matched-norm random directions,
  effects as fractions of the natural gap;
- :class:`PatchingRunner`: denoising / noising per layer × position and per token around the cue, subspace
  patching along the direction, attribution patching with its rank correlation to exact patching.

Their plots live in :mod:`afprobe.report`.
"""

from afprobe.experiments._attribution import attribution_matrix, attribution_patching
from afprobe.experiments._compliance import (
    CLASSIFIERS,
    REFUSAL_PHRASES,
    VERDICTS,
    ComplianceResult,
    PrefixClassifier,
    ResponseClassifier,
    get_classifier,
    logit_scores,
    measure_compliance,
    register_classifier,
    summarize_compliance,
)
from afprobe.experiments._compliance_runner import COMPLIANCE_FILE, ComplianceRunner
from afprobe.experiments._config import (
    ComplianceConfig,
    ComplianceRunConfig,
    PatchingConfig,
    PatchRunConfig,
    SteeringConfig,
    SteerRunConfig,
)
from afprobe.experiments._directions import (
    Directions,
    as_directions,
    best_probe_layer,
    covariance_directions,
    load_probe_directions,
    mean_difference_directions,
    random_unit_vectors,
    resolve_directions,
    unit_directions,
)
from afprobe.experiments._gaps import gap_summary, headline_pairs, pair_indices
from afprobe.experiments._patching import (
    PatchGrid,
    PatchSetting,
    PatchStore,
    collect,
    exact_patching,
    normalized,
    window_sites,
)
from afprobe.experiments._patching_runner import PATCHING_FILE, PatchingRunner
from afprobe.experiments._reads import median_norms, read_named
from afprobe.experiments._rows import RowBatch, make_row_batch
from afprobe.experiments._scoring import Scores, Setting, no_edit, score_settings
from afprobe.experiments._steer_plan import plan_layers
from afprobe.experiments._steering import (
    LayerPlan,
    SteerSetting,
    SweepResult,
    run_sweep,
    summarize_sweep,
    sweep_settings,
)
from afprobe.experiments._steering_runner import STEERING_FILE, SteeringRunner, choose_layers
from afprobe.experiments._subject import (
    ScoredPrompt,
    Subject,
    build_subject,
    continuation_ids,
    make_subject,
    prepare_prompts,
)

__all__ = [
    "CLASSIFIERS",
    "COMPLIANCE_FILE",
    "PATCHING_FILE",
    "REFUSAL_PHRASES",
    "STEERING_FILE",
    "VERDICTS",
    "ComplianceConfig",
    "ComplianceResult",
    "ComplianceRunConfig",
    "ComplianceRunner",
    "Directions",
    "LayerPlan",
    "PatchGrid",
    "PatchRunConfig",
    "PatchSetting",
    "PatchStore",
    "PatchingConfig",
    "PatchingRunner",
    "PrefixClassifier",
    "ResponseClassifier",
    "RowBatch",
    "ScoredPrompt",
    "Scores",
    "Setting",
    "SteerRunConfig",
    "SteerSetting",
    "SteeringConfig",
    "SteeringRunner",
    "Subject",
    "SweepResult",
    "as_directions",
    "attribution_matrix",
    "attribution_patching",
    "best_probe_layer",
    "build_subject",
    "choose_layers",
    "collect",
    "continuation_ids",
    "covariance_directions",
    "exact_patching",
    "gap_summary",
    "get_classifier",
    "headline_pairs",
    "load_probe_directions",
    "logit_scores",
    "make_row_batch",
    "make_subject",
    "mean_difference_directions",
    "measure_compliance",
    "median_norms",
    "no_edit",
    "normalized",
    "pair_indices",
    "plan_layers",
    "prepare_prompts",
    "random_unit_vectors",
    "read_named",
    "register_classifier",
    "resolve_directions",
    "run_sweep",
    "score_settings",
    "summarize_compliance",
    "summarize_sweep",
    "sweep_settings",
    "unit_directions",
    "window_sites",
]
