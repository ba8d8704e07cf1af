"""``afprobe run``: the stages (scenarios -> cache -> probes -> compliance -> steering -> patching -> report) as
one :class:`Stage` object each, their stamps, the run config and the shipped configs, and the runner that chains
them with one model load, reusing what is up to date. It sits above every other package; none imports it."""

from afprobe.pipeline._config import (
    STAGE_NAMES,
    RunConfig,
    check_model_layers,
    check_run_config,
    dump_config,
    load_run_config,
    shipped_configs,
)
from afprobe.pipeline._estimate import Estimate, ModelShape, check_fits, model_shape
from afprobe.pipeline._runner import (
    RESOLVED_CONFIG,
    Pipeline,
    PipelineResult,
    StageRecord,
    finished_stages,
    render_run_report,
    run_pipeline,
    run_results,
)
from afprobe.pipeline._stage_costs import estimate_run
from afprobe.pipeline._stages import ACTIVATIONS, STAGES, Stage, stage_results
from afprobe.pipeline._stamps import stamped_seconds
from afprobe.pipeline._state import RunState

__all__ = [
    "ACTIVATIONS",
    "RESOLVED_CONFIG",
    "STAGES",
    "STAGE_NAMES",
    "Estimate",
    "ModelShape",
    "Pipeline",
    "PipelineResult",
    "RunConfig",
    "RunState",
    "Stage",
    "StageRecord",
    "check_fits",
    "check_model_layers",
    "check_run_config",
    "dump_config",
    "estimate_run",
    "finished_stages",
    "load_run_config",
    "model_shape",
    "render_run_report",
    "run_pipeline",
    "run_results",
    "shipped_configs",
    "stage_results",
    "stamped_seconds",
]
