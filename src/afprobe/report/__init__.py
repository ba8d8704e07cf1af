"""The report of a run: ``summary.json`` (headline numbers and a verdict computed from them), the CSV tables behind
every figure (``results/``) and ``report.html``, one self-contained page. Everything is read from the stages'
outputs on disk, so ``afprobe report DIR`` can redraw it at any time."""

from afprobe.report._config import ReportConfig
from afprobe.report._figures import ReportFigure, plot_steering_vs_random
from afprobe.report._html import REPORT_FILE, SUMMARY_FILE, collect_figures, render_html, write_report
from afprobe.report._setup import describe_setup, read_setup, write_setup
from afprobe.report._summary import STAGE_FILES, build_summary, read_stage
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
    "MIN_PROBE_REQUESTS",
    "RANDOM_SDS",
    "REPORT_FILE",
    "STABLE_AGREEMENT",
    "STAGE_FILES",
    "SUBSPACE_MAJORITY",
    "SUMMARY_FILE",
    "TRANSFER_ACCURACY",
    "ReportConfig",
    "ReportFigure",
    "build_summary",
    "caveats",
    "collect_figures",
    "describe_setup",
    "gap_state",
    "is_decodable",
    "plot_steering_vs_random",
    "read_setup",
    "read_stage",
    "render_html",
    "steering_beyond_random",
    "verdict",
    "write_report",
    "write_setup",
]
