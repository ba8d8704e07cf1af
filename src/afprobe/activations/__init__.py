"""The activation cache: run the model over matched prompts and store the residual stream in HDF5."""

from afprobe.activations._reader import ActivationReader
from afprobe.activations._runner import CacheConfig, CacheRunConfig, CacheRunner, resolve_layers
from afprobe.activations._store import META_COLUMNS, ActivationWriter, partial_path, partial_run_key

__all__ = [
    "META_COLUMNS",
    "ActivationReader",
    "ActivationWriter",
    "CacheConfig",
    "CacheRunConfig",
    "CacheRunner",
    "partial_path",
    "partial_run_key",
    "resolve_layers",
]
