"""Causal tests: does the probe's "training" direction drive the model's free-vs-paid compliance gap?

- compliance: the teacher-forced logit metric, generated responses with a swappable classifier, the gap with a
  bootstrap CI over requests, broken down by system prompt (``neutral`` is the control) and cue format;
- steering: layers × alphas on both tiers, directional ablation, matched-norm random directions, effects as
  fractions of the natural gap; several settings per forward pass;
- patching: denoising / noising per layer × position and per token around the cue, subspace patching along the
  direction, attribution patching with its rank correlation to exact patching;
- plots: dose-response, patching heatmaps, compliance-gap bars.

``run_steering(cfg, out_dir)`` and ``run_patching(cfg, out_dir)`` are what ``afprobe steer`` and ``afprobe patch``
call.
"""

from afprobe.experiments._attribution import attribution_matrix, attribution_patching
from afprobe.experiments._compliance import (
    CLASSIFIERS,
    REFUSAL_PHRASES,
    VERDICTS,
    ComplianceResult,
    PrefixClassifier,
    ResponseClassifier,
    gap_summary,
    get_classifier,
    logit_scores,
    measure_compliance,
    pair_indices,
    register_classifier,
    summarize_compliance,
)
from afprobe.experiments._config import (
    ComplianceConfig,
    PatchingConfig,
    PatchRunConfig,
    SteeringConfig,
    SteerRunConfig,
)
from afprobe.experiments._directions import (
    Directions,
    as_directions,
    load_probe_directions,
    mean_difference_directions,
    random_unit_vectors,
)
from afprobe.experiments._generate import GenerationEdit, generate, stop_token_ids
from afprobe.experiments._io import read_json
from afprobe.experiments._patch_runner import PATCHING_FILE, run_patching
from afprobe.experiments._patching import (
    PatchGrid,
    PatchSetting,
    PatchStore,
    collect,
    exact_patching,
    normalized,
    window_sites,
)
from afprobe.experiments._pipeline import (
    STAGES,
    Pipeline,
    PipelineResult,
    RunConfig,
    StageRecord,
    load_run_config,
    render_run_report,
    run_pipeline,
    shipped_configs,
)
from afprobe.experiments._plots import plot_compliance_gap, plot_dose_response, plot_patching_heatmap
from afprobe.experiments._resid import median_norms, read_named
from afprobe.experiments._runners import COMPLIANCE_FILE, STEERING_FILE, run_steering
from afprobe.experiments._scoring import (
    RowBatch,
    ScoredPrompt,
    Scores,
    continuation_ids,
    make_row_batch,
    no_edit,
    prepare_prompts,
    score_settings,
    stack_edits,
)
from afprobe.experiments._stats import bootstrap_mean, bootstrap_ratio, spearman
from afprobe.experiments._steering import (
    SteerSetting,
    SweepResult,
    run_sweep,
    summarize_sweep,
    sweep_settings,
)

__all__ = [
    "CLASSIFIERS",
    "COMPLIANCE_FILE",
    "PATCHING_FILE",
    "REFUSAL_PHRASES",
    "STAGES",
    "STEERING_FILE",
    "VERDICTS",
    "ComplianceConfig",
    "ComplianceResult",
    "Directions",
    "GenerationEdit",
    "PatchGrid",
    "PatchRunConfig",
    "PatchSetting",
    "PatchStore",
    "PatchingConfig",
    "Pipeline",
    "PipelineResult",
    "PrefixClassifier",
    "ResponseClassifier",
    "RowBatch",
    "RunConfig",
    "ScoredPrompt",
    "Scores",
    "StageRecord",
    "SteerRunConfig",
    "SteerSetting",
    "SteeringConfig",
    "SweepResult",
    "as_directions",
    "attribution_matrix",
    "attribution_patching",
    "bootstrap_mean",
    "bootstrap_ratio",
    "collect",
    "continuation_ids",
    "exact_patching",
    "gap_summary",
    "generate",
    "get_classifier",
    "load_probe_directions",
    "load_run_config",
    "logit_scores",
    "make_row_batch",
    "mean_difference_directions",
    "measure_compliance",
    "median_norms",
    "no_edit",
    "normalized",
    "pair_indices",
    "plot_compliance_gap",
    "plot_dose_response",
    "plot_patching_heatmap",
    "prepare_prompts",
    "random_unit_vectors",
    "read_json",
    "read_named",
    "register_classifier",
    "render_run_report",
    "run_patching",
    "run_pipeline",
    "run_steering",
    "run_sweep",
    "score_settings",
    "shipped_configs",
    "spearman",
    "stack_edits",
    "stop_token_ids",
    "summarize_compliance",
    "summarize_sweep",
    "sweep_settings",
    "window_sites",
]
