"""``LoadedModel``: a model ready for afprobe (the HF module, its tokenizer, its provenance), and the helpers that
find its blocks and fingerprint its weights."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from afprobe._errors import AfprobeError
from afprobe.models._attention import use_cpu_gqa, use_prefix_attention
from afprobe.models._config import ModelConfig


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

    def meta(self) -> dict[str, Any]:
        """The provenance every results file records."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "weights_hash": self.weights_hash,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


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
    use_cpu_gqa()
    use_prefix_attention()
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
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        model_id=model_id or name,
        source=source,
        weights_hash=weights_fingerprint(model),
        dtype=param.dtype,
        device=param.device,
        n_layers=len(decoder_layers(model)),
        d_model=int(getattr(hf_cfg, "hidden_size", 0) or getattr(hf_cfg, "n_embd", 0)),
        config=config or ModelConfig(name=name),
    )


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
