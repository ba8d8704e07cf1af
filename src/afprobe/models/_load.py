"""Load a chat model and its tokenizer: by alias, Hugging Face hub id, local directory or local GGUF file."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from afprobe._device import resolve_device
from afprobe._errors import AfprobeError
from afprobe.models._config import ModelConfig, resolve_dtype
from afprobe.models._embedded import cache_root
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
    converted = (
        converted_dir(Path(src.where) / src.gguf_file) if src.gguf_file and src.keep_converted else None
    )

    def load(where: str, kw: dict[str, Any]) -> tuple[Any, Any]:
        tok = AutoTokenizer.from_pretrained(where, **kw)
        return tok, AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device_map=cfg.device_map, **kw)

    loaded = None
    if converted is not None and (converted / "config.json").is_file():
        with contextlib.suppress(Exception):  # unreadable (another transformers version?): from the GGUF
            loaded = load(str(converted), {k: v for k, v in kwargs.items() if k != "gguf_file"})
    if loaded is None:
        try:
            loaded = load(src.where, kwargs)
        except Exception as e:  # a model the user named: whatever the loader trips on is about its files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AfprobeError(f"could not load model {cfg.name!r} ({src.description}): {first}") from None
        if converted is not None:
            # a read-only or full cache: the next load reads the GGUF again
            with contextlib.suppress(OSError):
                _keep_converted(loaded[1], loaded[0], converted)
    tokenizer, model = loaded
    if cfg.device_map is None:
        model = model.to(device)
    if cfg.adapter:
        model = _apply_adapter(model, resolve_adapter(cfg.adapter))
    return wrap_model(
        model, tokenizer, name=cfg.name, model_id=src.model_id, source=src.description, config=cfg
    )


def converted_dir(gguf: Path) -> Path:
    """Where the dequantized checkpoint of ``gguf`` is kept: under the cache, named by the file's sha256."""
    st = gguf.stat()
    return (
        cache_root()
        / "converted"
        / f"{gguf.stem}-{_sha256(str(gguf.resolve()), st.st_size, st.st_mtime_ns)[:16]}"
    )


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256, once per process for a given size and modification time (every load asks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _keep_converted(model: nn.Module, tokenizer: Any, target: Path) -> None:
    """Save the model as transformers loaded it from the GGUF (float32, before any dtype cast: transformers
    dequantizes to float32) and its tokenizer, atomically: a later load reads safetensors instead of parsing and
    dequantizing the GGUF three times (the embedded model: ~19 s -> ~2 s), with the same tensors (tested)."""
    if next(model.parameters()).dtype != torch.float32:
        return  # keep only the exact dequantized weights
    target.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # transformers refuses to serialize a model it read from a GGUF: the config and the tensors by hand
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(tmp)
        save_model(model, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process kept it first
            return
        os.mkdir(tmp)  # for the context manager's cleanup


def _apply_adapter(model: nn.Module, adapter: str) -> nn.Module:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as e:
        raise AfprobeError(f"could not load adapter {adapter!r}: {str(e).splitlines()[0]}") from None
    return peft_model.merge_and_unload()
