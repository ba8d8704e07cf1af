"""The activation cache: run the model over matched prompts (or replay saved transcripts of its own reasoning)
and store the residual stream in HDF5."""

from afprobe.activations._layout import relayout
from afprobe.activations._reader import ActivationReader
from afprobe.activations._runner import CacheConfig, CacheRunConfig, CacheRunner, resolve_layers
from afprobe.activations._store import (
    META_COLUMNS,
    ActivationWriter,
    hdf5_writes_failed,
    partial_path,
    partial_run_key,
)
from afprobe.activations._transcripts import (
    TRANSCRIPT_POSITIONS,
    TranscriptCacheConfig,
    TranscriptCacheRunner,
    usable,
)

__all__ = [
    "META_COLUMNS",
    "TRANSCRIPT_POSITIONS",
    "ActivationReader",
    "ActivationWriter",
    "CacheConfig",
    "CacheRunConfig",
    "CacheRunner",
    "TranscriptCacheConfig",
    "TranscriptCacheRunner",
    "hdf5_writes_failed",
    "partial_path",
    "partial_run_key",
    "relayout",
    "resolve_layers",
    "usable",
]
