"""The one device resolver: config strings (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) to torch devices."""

from __future__ import annotations

import torch

from afprobe._errors import AfprobeError


def resolve_device(device: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; a CUDA device asked for on a machine without one is
    an :class:`AfprobeError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AfprobeError(f"device {device!r} asked for, but no CUDA device is available")
    return torch.device(device)
