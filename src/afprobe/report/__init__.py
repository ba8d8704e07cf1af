"""The report of a run: ``summary.json`` (headline numbers and a verdict computed from them), the CSV tables behind
every figure (``results/``) and ``report.html``, one self-contained page; and the plots of the causal experiments
(functions of their results that return a Figure). Everything is read from the finished stages' results files,
which the pipeline hands over, so ``afprobe report DIR`` can redraw it at any time."""

from afprobe.report._config import ReportConfig
from afprobe.report._figures import ReportFigure, plot_steering_vs_random
from afprobe.report._html import REPORT_FILE, SUMMARY_FILE, collect_figures, render_html, write_report
from afprobe.report._known import KNOWN_FILE, known_markdown, known_section, read_known
from afprobe.report._plots import (
    patching_heatmaps,
    plot_compliance_gap,
    plot_dose_response,
    plot_patching_heatmap,
)
from afprobe.report._setup import SETUP_FILE, describe_setup, write_setup
from afprobe.report._summary import StageResults, build_summary, read_stage
from afprobe.report._verdict import (
    ALPHA,
    MIN_PROBE_REQUESTS,
    RANDOM_SDS,
    STABLE_AGREEMENT,
    SUBSPACE_MAJORITY,
    TRANSFER_ACCURACY,
    caveats,
    gap_state,
    is_decodable,
    steering_beyond_random,
    verdict,
)

__all__ = [
    "ALPHA",
    "KNOWN_FILE",
    "MIN_PROBE_REQUESTS",
    "RANDOM_SDS",
    "REPORT_FILE",
    "SETUP_FILE",
    "STABLE_AGREEMENT",
    "SUBSPACE_MAJORITY",
    "SUMMARY_FILE",
    "TRANSFER_ACCURACY",
    "ReportConfig",
    "ReportFigure",
    "StageResults",
    "build_summary",
    "caveats",
    "collect_figures",
    "describe_setup",
    "gap_state",
    "is_decodable",
    "known_markdown",
    "known_section",
    "patching_heatmaps",
    "plot_compliance_gap",
    "plot_dose_response",
    "plot_patching_heatmap",
    "plot_steering_vs_random",
    "read_known",
    "read_stage",
    "render_html",
    "steering_beyond_random",
    "verdict",
    "write_report",
    "write_setup",
]
