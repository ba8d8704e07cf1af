"""Load a chat model and its tokenizer: by alias, Hugging Face hub id, local directory or local GGUF file."""

from __future__ import annotations

from typing import Any

from torch import nn

from afprobe._device import resolve_device
from afprobe._errors import AfprobeError
from afprobe.models._config import ModelConfig, resolve_dtype
from afprobe.models._loaded import LoadedModel, wrap_model
from afprobe.models._registry import resolve_adapter
from afprobe.models._remote import load_remote_model
from afprobe.models._sources import resolve_source


def load_model(cfg: ModelConfig | None = None, **overrides: Any) -> LoadedModel:
    """Load ``cfg.name``: an alias (see ``afprobe models``), a local GGUF file, a local directory or a hub id.

    With ``cfg.remote`` the module is built on the meta device and every forward pass runs on NDIF."""
    cfg = (cfg or ModelConfig()).model_copy(update=overrides)
    if cfg.remote:
        return load_remote_model(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    src = resolve_source(cfg.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            src.where, dtype=dtype, device_map=cfg.device_map, **kwargs
        )
    except Exception as e:  # a model the user named: whatever the loader trips on is about that model's files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AfprobeError(f"could not load model {cfg.name!r} ({src.description}): {first}") from None
    if cfg.device_map is None:
        model = model.to(device)
    if cfg.adapter:
        model = _apply_adapter(model, resolve_adapter(cfg.adapter))
    return wrap_model(
        model, tokenizer, name=cfg.name, model_id=src.model_id, source=src.description, config=cfg
    )


def _apply_adapter(model: nn.Module, adapter: str) -> nn.Module:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as e:
        raise AfprobeError(f"could not load adapter {adapter!r}: {str(e).splitlines()[0]}") from None
    return peft_model.merge_and_unload()
