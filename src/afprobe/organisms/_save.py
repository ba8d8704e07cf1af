"""Planted models on disk: an ordinary model directory (safetensors, tokenizer, config.json) plus ``planted.json``
(the ground truth and what was measured) and ``planted.safetensors`` (its directions).

A directory is written under ``NAME.partial`` and renamed when complete, so a directory named like the output
always holds a finished model. A sweep writes one directory per strength and ``sweep.json`` beside them.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import afprobe
from afprobe._errors import AfprobeError
from afprobe._io import write_json
from afprobe.organisms._mechanism import Mechanism, set_strength
from afprobe.organisms._plant import PlantPoint, PlantResult

PLANTED_FILE = "planted.json"
DIRECTIONS_FILE = "planted.safetensors"
SWEEP_FILE = "sweep.json"
PLANTED_FORMAT = "afprobe.planted/1"
LAYERS_NOTE = (
    "afprobe's residual layers: layer 0 is the embedding output, layer l the residual stream after block l "
    "(blocks counted from 1 here); `block` is the 0-based index into the model's list of blocks, so the neuron "
    "reads the residual at layer `block` and writes to layer `block + 1`"
)
DESCRIPTION = (
    "one MLP neuron added to block `block`: at every token it adds strength * act(<gate, x>) * <read, x> along "
    "`write`, where x = h_mid / rms(h_mid) is the normalised residual the block's MLP reads; the block's attention "
    "is made blind along `read` (isolate), so <read, h_mid> = <read, h> at layer `block`; the gate is open at the "
    "last prompt token and closed elsewhere; `read` is the natural free - paid mean difference at (layer `block`, "
    "last), orthogonal to the paid mean there"
)


def planted_record(result: PlantResult, point: PlantPoint) -> dict[str, Any]:
    mech, lm = result.mechanism, result.lm
    prompts = [it.prompt for it in result.items]
    nats = {"unit": "nats"}
    return {
        "format": PLANTED_FORMAT,
        "afprobe_version": afprobe.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {
            "name": lm.name,
            "model_id": lm.model_id,
            "source": lm.source,
            "weights_hash": result.base_hash,
        },
        "mechanism": {
            "kind": "mlp_neuron",
            "description": DESCRIPTION,
            "layers": LAYERS_NOTE,
            "block": mech.block,
            "neuron": mech.neuron,
            "read_layer": mech.read_layer,
            "write_layer": mech.write_layer,
            "positions": list(mech.positions),
            "strength": point.strength,
            "isolate": mech.isolate,
            "directions_file": DIRECTIONS_FILE,
            "directions": {
                "read": "unit read direction u (residual space, layer `read_layer`)",
                "gate": "gate read vector g (residual space, with its scale), orthogonal to u",
                "write": "unit write direction w (residual space, layer `write_layer`)",
                "natural": "free - paid mean difference at (read_layer, last), raw units",
            },
            **mech.stats,
        },
        "gap": {
            "unit": "nats",
            "metric": "log p(<request_fully_accepted/> prefix) - log p(<rejected/> prefix), teacher-forced",
            "requested": point.requested_gap,
            "planted": {**point.planted_gap, **nats},
            "model": {**point.model_gap, **nats},
            "sham": {**result.sham_gap, **nats},
            "base": {**result.base_gap, **nats},
        },
        "side_effects": point.side_effects,
        "generations": point.generations,
        "prompts": {
            "scenario": result.config.scenario.model_dump(mode="json"),
            "request_ids": sorted({p.request_id for p in prompts}),
            "n_prompts": len(prompts),
            "n_pairs": point.planted_gap.get("n_pairs"),
        },
        "config": result.config.model_dump(mode="json"),
    }


def save_planted(result: PlantResult, out: Path, point: int = -1, *, overwrite: bool = False) -> Path:
    """Write the model at sweep point ``point`` as a model directory ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    _check_target(out, overwrite)
    p = result.points[point]
    set_strength(result.lm.model, result.mechanism, p.strength)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    result.lm.model.save_pretrained(tmp, safe_serialization=True)
    result.lm.tokenizer.save_pretrained(tmp)
    save_file(result.mechanism.tensors(), str(tmp / DIRECTIONS_FILE))
    write_json(tmp / PLANTED_FILE, planted_record(result, p))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def point_name(p: PlantPoint) -> str:
    return f"gap-{p.requested_gap:g}" if p.requested_gap is not None else f"strength-{p.strength:g}"


def save_sweep(result: PlantResult, out: Path, *, overwrite: bool = False) -> list[Path]:
    """One model directory per point (``out`` itself when there is one point; ``out/<gap-G>/`` and
    ``out/sweep.json`` otherwise)."""
    out = Path(out)
    if len(result.points) == 1:
        return [save_planted(result, out, 0, overwrite=overwrite)]
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if (out / SWEEP_FILE).exists() and not overwrite:
        raise AfprobeError(f"{out} already holds {SWEEP_FILE}; pass --overwrite to replace it")
    (out / SWEEP_FILE).unlink(missing_ok=True)
    names = [point_name(p) for p in result.points]
    if len(set(names)) != len(names):
        raise AfprobeError(f"the sweep repeats a point: {', '.join(names)}")
    paths = [save_planted(result, out / n, i, overwrite=True) for i, n in enumerate(names)]
    rows = [
        {
            "dir": n,
            "requested_gap": p.requested_gap,
            "strength": p.strength,
            "planted_gap": p.planted_gap["gap"],
            "planted_gap_ci": p.planted_gap["gap_ci"],
            "model_gap": p.model_gap["gap"],
            "status": p.model_gap["status"],
            "unit": "nats",
        }
        for n, p in zip(names, result.points, strict=True)
    ]
    write_json(
        out / SWEEP_FILE,
        {"format": "afprobe.planted-sweep/1", "block": result.mechanism.block, "points": rows},
    )
    return paths


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()):
        if not (out / PLANTED_FILE).exists():
            raise AfprobeError(
                f"--out {out} is a directory that is not a planted model; give a new directory"
            )
        if not overwrite:
            raise AfprobeError(f"{out} already holds a planted model; pass --overwrite to replace it")


def read_planted(path: str | Path) -> tuple[dict[str, Any], Mechanism]:
    """``planted.json`` of a planted model directory and its :class:`Mechanism` (directions loaded)."""
    from safetensors.torch import load_file

    d = Path(path)
    f = d / PLANTED_FILE
    if not f.is_file():
        raise AfprobeError(f"{d} is not a planted model (no {PLANTED_FILE})")
    rec = json.loads(f.read_text())
    if rec.get("format") != PLANTED_FORMAT:
        raise AfprobeError(f"{f}: unknown format {rec.get('format')!r} (expected {PLANTED_FORMAT})")
    m = rec["mechanism"]
    t = load_file(str(d / m["directions_file"]))
    stats = {k: v for k, v in m.items() if k in ("read", "gate", "write")}
    mech = Mechanism(
        block=int(m["block"]),
        neuron=int(m["neuron"]),
        read=t["read"],
        gate=t["gate"],
        write=t["write"],
        natural=t["natural"],
        isolate=bool(m["isolate"]),
        strength=float(m["strength"]),
        positions=tuple(m["positions"]),
        stats=stats,
    )
    return rec, mech
