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
from afprobe.experiments._endpoint import ChatClient, EndpointChat, LocalChat
from afprobe.experiments._gaps import gap_summary, headline_pairs, pair_indices
from afprobe.experiments._judges import (
    CRITERIA,
    AlignmentFakingJudge,
    JudgeConfig,
    RefusalClassifier,
    VerdictCache,
    judge_messages,
    make_judge,
    parse_vote,
)
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
from afprobe.experiments._scratchpad import (
    SCRATCHPAD_FILE,
    TRANSCRIPTS_FILE,
    ScratchpadConfig,
    ScratchpadRunConfig,
    ScratchpadRunner,
    classify,
    judge_transcripts,
    paper_scenario,
    sample_seed,
    sample_transcripts,
    summarize_scratchpad,
)
from afprobe.experiments._steer_plan import plan_layers
from afprobe.experiments._steering import (
    LayerPlan,
    SteerSetting,
    SweepResult,
    run_sweep,
    summarize_sweep,
    sweep_settings,
)
from afprobe.experiments._steering_runner import (
    STEERING_FILE,
    SteeringRunner,
    choose_layers,
    evenly_spaced,
)
from afprobe.experiments._subject import (
    ScoredPrompt,
    Subject,
    build_subject,
    continuation_ids,
    make_subject,
    prepare_prompts,
)
from afprobe.experiments._transcript import (
    SPAN_NAMES,
    Transcript,
    output_span,
    read_transcript,
    read_transcripts,
    write_transcripts,
)

__all__ = [
    "CLASSIFIERS",
    "COMPLIANCE_FILE",
    "CRITERIA",
    "PATCHING_FILE",
    "REFUSAL_PHRASES",
    "SCRATCHPAD_FILE",
    "SPAN_NAMES",
    "STEERING_FILE",
    "TRANSCRIPTS_FILE",
    "VERDICTS",
    "AlignmentFakingJudge",
    "ChatClient",
    "ComplianceConfig",
    "ComplianceResult",
    "ComplianceRunConfig",
    "ComplianceRunner",
    "Directions",
    "EndpointChat",
    "JudgeConfig",
    "LayerPlan",
    "LocalChat",
    "PatchGrid",
    "PatchRunConfig",
    "PatchSetting",
    "PatchStore",
    "PatchingConfig",
    "PatchingRunner",
    "PrefixClassifier",
    "RefusalClassifier",
    "ResponseClassifier",
    "RowBatch",
    "ScoredPrompt",
    "Scores",
    "ScratchpadConfig",
    "ScratchpadRunConfig",
    "ScratchpadRunner",
    "Setting",
    "SteerRunConfig",
    "SteerSetting",
    "SteeringConfig",
    "SteeringRunner",
    "Subject",
    "SweepResult",
    "Transcript",
    "VerdictCache",
    "as_directions",
    "attribution_matrix",
    "attribution_patching",
    "best_probe_layer",
    "build_subject",
    "choose_layers",
    "classify",
    "collect",
    "continuation_ids",
    "covariance_directions",
    "evenly_spaced",
    "exact_patching",
    "gap_summary",
    "get_classifier",
    "headline_pairs",
    "judge_messages",
    "judge_transcripts",
    "load_probe_directions",
    "logit_scores",
    "make_judge",
    "make_row_batch",
    "make_subject",
    "mean_difference_directions",
    "measure_compliance",
    "median_norms",
    "no_edit",
    "normalized",
    "output_span",
    "pair_indices",
    "paper_scenario",
    "parse_vote",
    "plan_layers",
    "prepare_prompts",
    "random_unit_vectors",
    "read_named",
    "read_transcript",
    "read_transcripts",
    "register_classifier",
    "resolve_directions",
    "run_sweep",
    "sample_seed",
    "sample_transcripts",
    "score_settings",
    "summarize_compliance",
    "summarize_scratchpad",
    "summarize_sweep",
    "sweep_settings",
    "unit_directions",
    "window_sites",
    "write_transcripts",
]
