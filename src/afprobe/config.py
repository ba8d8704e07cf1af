"""Loading stage configs: YAML files, dotted ``--set key=value`` overrides, pydantic validation.

Every stage owns a pydantic model with ``extra="forbid"``; this module only merges and validates, so an unknown
key or a wrong type becomes one :class:`AfprobeError` line that names the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from afprobe._errors import AfprobeError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def check_device(v: str) -> str:
    """The device names a config accepts: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (a field validator)."""
    if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
    return v


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a one-line :class:`AfprobeError`."""
    p = Path(path)
    if not p.is_file():
        raise AfprobeError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise AfprobeError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AfprobeError(f"config file {p} must hold a mapping of keys, not {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], sets: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied; values are parsed as YAML scalars."""
    out: dict[str, Any] = _deepcopy(data)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise AfprobeError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise AfprobeError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def validate(model: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Validate ``data`` against ``model``; the error names the first offending dotted key."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as e:
        raise AfprobeError(f"{source}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(root)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    return f"key {key!r}: {err['msg']} (got {err.get('input')!r})"


def load_config(model: type[T], path: str | Path | None = None, sets: Iterable[str] = (), **base: Any) -> T:
    """Build a config: ``base`` defaults, then the YAML file, then ``--set`` overrides."""
    data: dict[str, Any] = _deepcopy(base)
    if path is not None:
        _merge(data, read_yaml(path))
    data = apply_overrides(data, sets)
    return validate(model, data, source=str(path) if path else "config")


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = _deepcopy(v) if isinstance(v, Mapping) else v


def _deepcopy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, Mapping) else v for k, v in d.items()}
