"""Loading chat models (alias, hub id, local directory, GGUF, LoRA adapter), running them through one backend
interface (read, add to, replace or ablate the residual stream), and one generation stack on top of it."""

from afprobe.models._backend import Backend, RunOutput, fan_out_start, make_backend
from afprobe.models._batching import left_pad, right_pad
from afprobe.models._config import DTYPES, ModelConfig, resolve_dtype
from afprobe.models._edits import (
    Edit,
    EditOp,
    apply_edit,
    edit_mask,
    first_edited,
    gather_positions,
    shift_edit,
    stack_edits,
)
from afprobe.models._embedded import cache_root, embedded_gguf_path, ensure_embedded
from afprobe.models._generate import Engine, generate, stop_token_ids
from afprobe.models._load import converted_dir, load_model
from afprobe.models._loaded import LoadedModel, decoder_layers, weights_fingerprint, wrap_model
from afprobe.models._local import HooksBackend, NNsightBackend, TransformerLensBackend
from afprobe.models._prefix import (
    MIN_PREFIX,
    PrefixStore,
    cache_length,
    common_prefix_len,
    continue_mask,
    plan_prefixes,
    prefix_batches,
    prompt_keys,
    select_cache,
)
from afprobe.models._registry import (
    BACKENDS,
    EMBEDDED_DEFAULT,
    MODEL_ALIASES,
    ModelSource,
    check_backend,
    register_backend,
    register_model_alias,
    resolve_adapter,
    shipped_adapters,
)
from afprobe.models._remote import NDIFBackend
from afprobe.models._sources import Source, resolve_source
from afprobe.models._tiny import make_tiny_model, make_tiny_tokenizer

__all__ = [
    "BACKENDS",
    "DTYPES",
    "EMBEDDED_DEFAULT",
    "MIN_PREFIX",
    "MODEL_ALIASES",
    "Backend",
    "Edit",
    "EditOp",
    "Engine",
    "HooksBackend",
    "LoadedModel",
    "ModelConfig",
    "ModelSource",
    "NDIFBackend",
    "NNsightBackend",
    "PrefixStore",
    "RunOutput",
    "Source",
    "TransformerLensBackend",
    "apply_edit",
    "cache_length",
    "cache_root",
    "check_backend",
    "common_prefix_len",
    "continue_mask",
    "converted_dir",
    "decoder_layers",
    "edit_mask",
    "embedded_gguf_path",
    "ensure_embedded",
    "fan_out_start",
    "first_edited",
    "gather_positions",
    "generate",
    "left_pad",
    "load_model",
    "make_backend",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "plan_prefixes",
    "prefix_batches",
    "prompt_keys",
    "register_backend",
    "register_model_alias",
    "resolve_adapter",
    "resolve_dtype",
    "resolve_source",
    "right_pad",
    "select_cache",
    "shift_edit",
    "shipped_adapters",
    "stack_edits",
    "stop_token_ids",
    "weights_fingerprint",
    "wrap_model",
]
