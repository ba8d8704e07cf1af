"""Probes for the "this conversation is used for training" representation: estimators (scikit-learn contract),
grouped cross-validation with baselines, the tested headline (nested selection, max-statistic permutation test),
generalization across cue formats and system prompts, directions I/O and plots. ``ProbeRunner(cfg).run(out,
activations=path)`` is what ``afprobe probe`` calls."""

from afprobe.probes._batched import BatchedLinear, fit_logistic_batched, fit_mass_mean_batched
from afprobe.probes._config import PROBE_TYPES, ProbeConfig, ProbeRunConfig
from afprobe.probes._directions import (
    SIGN_CONVENTION,
    ProbeDirections,
    cosine_between_layers,
    cosine_between_probes,
    load_directions,
    save_directions,
)
from afprobe.probes._estimators import LogisticProbe, MassMeanProbe, TorchLogisticProbe
from afprobe.probes._evaluate import cross_validate_layer, transfer_matrix
from afprobe.probes._labels import LabelSets, make_label_sets
from afprobe.probes._lbfgs import choose_solver, fit_logistic_lbfgs
from afprobe.probes._metrics import (
    RequestBootstrap,
    accuracy,
    auroc,
    grouped_folds,
    shuffled_labels,
)
from afprobe.probes._outputs import RESULTS_FILE, read_probe_results
from afprobe.probes._plots import plot_cross_format, plot_layer_curves, plot_pca, save_figure
from afprobe.probes._runner import ProbeRunner, run_probes
from afprobe.probes._selection import nested_selection, permutation_test
from afprobe.probes._surface import surface_baseline, surface_features

__all__ = [
    "PROBE_TYPES",
    "RESULTS_FILE",
    "SIGN_CONVENTION",
    "BatchedLinear",
    "LabelSets",
    "LogisticProbe",
    "MassMeanProbe",
    "ProbeConfig",
    "ProbeDirections",
    "ProbeRunConfig",
    "ProbeRunner",
    "RequestBootstrap",
    "TorchLogisticProbe",
    "accuracy",
    "auroc",
    "choose_solver",
    "cosine_between_layers",
    "cosine_between_probes",
    "cross_validate_layer",
    "fit_logistic_batched",
    "fit_logistic_lbfgs",
    "fit_mass_mean_batched",
    "grouped_folds",
    "load_directions",
    "make_label_sets",
    "nested_selection",
    "permutation_test",
    "plot_cross_format",
    "plot_layer_curves",
    "plot_pca",
    "read_probe_results",
    "run_probes",
    "save_directions",
    "save_figure",
    "shuffled_labels",
    "surface_baseline",
    "surface_features",
    "transfer_matrix",
]
