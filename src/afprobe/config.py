"""Loading stage configs: YAML files, dotted ``--set key=value`` overrides, pydantic validation.

Every stage owns a pydantic model with ``extra="forbid"``; this module only merges and validates, so an unknown
key or a wrong type becomes one :class:`AfprobeError` line that names the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from afprobe._errors import AfprobeError

T = TypeVar("T", bound=BaseModel)
# A random seed every stage accepts: numpy's generators take 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="random seed, 0 <= seed < 2**32")]
# A config file is small: more values than this after expanding YAML aliases is an alias bomb, not a config.
MAX_YAML_VALUES = 100_000


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def check_device(v: str) -> str:
    """The device names a config accepts: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (a field validator)."""
    if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
    return v


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses YAML whose aliases expand past :data:`MAX_YAML_VALUES` values (a "billion
    laughs" file would hang the validation that walks it); every failure is one :class:`AfprobeError` line."""
    try:
        return _load_checked(text, source)
    except yaml.YAMLError as e:
        raise AfprobeError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None


def _load_checked(text: str, source: str) -> Any:
    """``yaml.safe_load`` after the alias check; a parse error stays a ``yaml.YAMLError``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise AfprobeError(
                f"{source}: its YAML aliases expand to more than {MAX_YAML_VALUES} values; write the values out"
            )
    except RecursionError:
        raise AfprobeError(f"{source}: YAML nested too deeply") from None
    return yaml.safe_load(text)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` holds once every alias is expanded (an alias is the same node object again)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_VALUES + 1  # a node that contains itself expands forever
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a one-line :class:`AfprobeError`."""
    p = Path(path)
    if p.is_dir():
        raise AfprobeError(f"config file {p} is a directory; give a .yaml file")
    if not p.is_file():
        raise AfprobeError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AfprobeError(f"config file {p} is not UTF-8 text") from None
    except OSError as e:
        raise AfprobeError(f"cannot read config file {p}: {e.strerror or e}") from None
    data = safe_yaml(text, f"config file {p}")
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
            value = _load_checked(raw, f"--set {key.strip()}") if raw.strip() else ""
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
