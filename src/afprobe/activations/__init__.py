"""The activation cache: run the model over matched prompts and store the residual stream in HDF5."""

from afprobe.activations._reader import ActivationReader
from afprobe.activations._runner import CacheConfig, CacheRunConfig, CacheRunner, pad_batch, resolve_layers
from afprobe.activations._store import META_COLUMNS, ActivationWriter, partial_path

__all__ = [
    "META_COLUMNS",
    "ActivationReader",
    "ActivationWriter",
    "CacheConfig",
    "CacheRunConfig",
    "CacheRunner",
    "pad_batch",
    "partial_path",
    "resolve_layers",
]
