"""``ModelConfig``: which model to load and how. Pure data: devices and dtypes are resolved when loading."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import field_validator, model_validator

from afprobe.config import StrictModel, check_device
from afprobe.models._registry import BACKENDS, EMBEDDED_DEFAULT, check_backend

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelConfig(StrictModel):
    """``name``: an alias (``afprobe models``), a hub id, a local directory or a ``.gguf`` file. ``backend``: a
    registered backend (``nnsight``, ``transformer_lens``, ``hooks``, ``ndif``); unset, it is ``nnsight``, or
    ``ndif`` when ``remote`` (the forward passes then run on NDIF). ``adapter``: a PEFT adapter (path or hub id)
    merged into the weights."""

    name: str = EMBEDDED_DEFAULT
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    backend: str | None = None
    adapter: str | None = None
    remote: bool = False

    _check_device = field_validator("device")(check_device)
    _check_backend = field_validator("backend")(check_backend)

    @model_validator(mode="after")
    def _backend_fits_remote(self) -> ModelConfig:
        if self.backend is not None and bool(BACKENDS[self.backend].remote) != self.remote:
            where = "on NDIF (model.remote: true)" if BACKENDS[self.backend].remote else "locally"
            raise ValueError(
                f"backend {self.backend!r} runs {where}, but model.remote is {str(self.remote).lower()}"
            )
        return self

    @property
    def backend_name(self) -> str:
        """The backend that runs this model: ``backend``, else ``ndif`` when remote, else ``nnsight``."""
        return self.backend or ("ndif" if self.remote else "nnsight")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]
