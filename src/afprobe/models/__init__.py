"""Loading chat models (alias, hub id, local directory, GGUF) and running them through one backend interface."""

from afprobe.models._backends import (
    BACKENDS,
    Backend,
    Edit,
    HooksBackend,
    NNsightBackend,
    RunOutput,
    TransformerLensBackend,
    apply_edit,
    gather_positions,
    make_backend,
)
from afprobe.models._embedded import cache_root, embedded_gguf_path, ensure_embedded
from afprobe.models._load import (
    LoadedModel,
    ModelConfig,
    decoder_layers,
    load_model,
    resolve_device,
    resolve_dtype,
    weights_fingerprint,
    wrap_model,
)
from afprobe.models._registry import EMBEDDED_DEFAULT, MODEL_ALIASES, ModelSource, register_model_alias
from afprobe.models._tiny import make_tiny_model, make_tiny_tokenizer

__all__ = [
    "BACKENDS",
    "EMBEDDED_DEFAULT",
    "MODEL_ALIASES",
    "Backend",
    "Edit",
    "HooksBackend",
    "LoadedModel",
    "ModelConfig",
    "ModelSource",
    "NNsightBackend",
    "RunOutput",
    "TransformerLensBackend",
    "apply_edit",
    "cache_root",
    "decoder_layers",
    "embedded_gguf_path",
    "ensure_embedded",
    "gather_positions",
    "load_model",
    "make_backend",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "register_model_alias",
    "resolve_device",
    "resolve_dtype",
    "weights_fingerprint",
    "wrap_model",
]
