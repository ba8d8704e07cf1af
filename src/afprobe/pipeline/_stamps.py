"""Stage stamps: a small JSON file a stage writes last into its directory, holding a hash of the config sections
it reads and of the stamps of the stages it reads from. A stage whose stamp matches is reused; since every hash
covers its upstream hashes, a change flows downstream and nowhere else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from afprobe._io import atomic_write_text
from afprobe.pipeline._config import RunConfig

STAMP = ".afprobe-stage.json"
PIPELINE_FORMAT = "afprobe.pipeline/1"
# Settings that change where or how fast a stage runs, not what it computes: left out of the hashes.
NOT_HASHED: frozenset[str] = frozenset({"model.device", "probes.device", "probes.max_batch_elements"})


def _section(dump: Mapping[str, Any], key: str) -> Any:
    node: Any = dump
    for part in key.split("."):
        node = node[part]
    return node


def _strip(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v, f"{prefix}.{k}") for k, v in node.items() if f"{prefix}.{k}" not in NOT_HASHED}
    return node


def config_inputs(cfg: RunConfig, keys: Sequence[str]) -> dict[str, Any]:
    """The config values at ``keys`` (dotted) that a stage's hash covers (``NOT_HASHED`` settings left out);
    ``causal_scenario`` is the resolved one."""
    dump = cfg.model_dump(mode="json")
    dump["causal_scenario"] = cfg.resolved_causal_scenario.model_dump(mode="json")
    return {key: _strip(_section(dump, key), key) for key in keys}


def stage_hash(stage: str, inputs: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    payload = {
        "format": PIPELINE_FORMAT,
        "stage": stage,
        "inputs": dict(inputs),
        "upstream": dict(sorted(upstream.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_stamp(stage_dir: Path) -> dict[str, Any] | None:
    """The stamp of a finished stage, or None (missing or unreadable: the stage did not finish)."""
    try:
        data = json.loads((stage_dir / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "hash" in data else None


def write_stamp(stage_dir: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(stage_dir / STAMP, json.dumps(dict(record), indent=2, sort_keys=True) + "\n")


def stamped_seconds(run_dir: Path, stages: Sequence[str]) -> dict[str, float]:
    """Stage -> seconds it took, for every stage of ``stages`` with a stamp in ``run_dir``."""
    stamps = {name: read_stamp(Path(run_dir) / name) for name in stages}
    return {name: float(st.get("seconds", 0.0)) for name, st in stamps.items() if st is not None}
