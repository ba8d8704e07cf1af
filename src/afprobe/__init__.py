"""afprobe: probe, steer and patch the "this conversation is used for training" representation of chat models."""

from afprobe._errors import AfprobeError

__version__ = "0.1.0"

__all__ = ["AfprobeError", "__version__"]
