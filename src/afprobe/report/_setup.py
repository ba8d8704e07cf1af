"""The setup a report describes: model, prompt counts, a sample pair. Written by the pipeline's scenarios stage
(``DIR/scenarios/scenario.json`` and ``prompts.jsonl``, one line per prompt) and read back by the report."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe._io import atomic_write_text, write_json
from afprobe.models import LoadedModel
from afprobe.scenarios import ScenarioConfig, TokenizedPrompt, conversation_format, template_hash

SETUP_FILE = "scenario.json"
PROMPTS_FILE = "prompts.jsonl"


def describe_setup(
    lm: LoadedModel, toks: Sequence[TokenizedPrompt], scenario: ScenarioConfig, sample_pair: int = 0
) -> dict[str, Any]:
    """Counts, the model's provenance, and one pair in full (its rendered free and paid prompts)."""
    if not toks:
        raise AfprobeError("the scenario produced no prompts")
    prompts = [t.prompt for t in toks]
    pair_ids = sorted({p.pair_id for p in prompts})
    chosen = sample_pair if sample_pair in pair_ids else pair_ids[0]
    sample = {t.prompt.tier: t for t in toks if t.prompt.pair_id == chosen}
    lengths = [len(t.input_ids) for t in toks]
    return {
        "model": {
            "name": lm.name,
            "model_id": lm.model_id,
            "source": lm.source,
            "weights_hash": lm.weights_hash,
            "n_layers": lm.n_layers,
            "d_model": lm.d_model,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "conversation_format": conversation_format(lm.tokenizer),
            "chat_template_hash": template_hash(lm.tokenizer),
        },
        "scenario": scenario.model_dump(mode="json"),
        "n_prompts": len(prompts),
        "n_pairs": len(pair_ids),
        "n_requests": len({p.request_id for p in prompts}),
        "system_prompts": sorted({p.system_prompt for p in prompts}),
        "cue_formats": list(dict.fromkeys(p.cue_format for p in prompts)),
        "categories": dict(Counter(p.category for p in prompts if p.tier == "free")),
        "harmful_pairs": sum(1 for p in prompts if p.tier == "free" and p.harmful),
        "tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "positions": list(toks[0].positions),
        "sample_pair": {
            "pair_id": chosen,
            **{tier: _sample(lm, t) for tier, t in sorted(sample.items())},
        },
    }


def _sample(lm: LoadedModel, t: TokenizedPrompt) -> dict[str, Any]:
    p = t.prompt
    tokens = {name: lm.tokenizer.decode([t.input_ids[i]]) for name, i in t.positions.items()}
    return {
        "request_id": p.request_id,
        "system_prompt": p.system_prompt,
        "cue_format": p.cue_format,
        "system_text": p.system_text,
        "user_text": p.user_text,
        "rendered": t.text,
        "n_tokens": len(t.input_ids),
        "positions": dict(t.positions),
        "position_tokens": tokens,
    }


def write_setup(
    folder: Path,
    lm: LoadedModel,
    toks: Sequence[TokenizedPrompt],
    scenario: ScenarioConfig,
    sample_pair: int = 0,
) -> dict[str, Any]:
    """Write ``scenario.json`` and ``prompts.jsonl`` (one line per prompt) into ``folder``; return the former."""
    info = describe_setup(lm, toks, scenario, sample_pair)
    lines = []
    for i, t in enumerate(toks):
        p = t.prompt
        row = {
            "index": i,
            "pair_id": p.pair_id,
            "request_id": p.request_id,
            "tier": p.tier,
            "cue_format": p.cue_format,
            "system_prompt": p.system_prompt,
            "category": p.category,
            "harmful": p.harmful,
            "request": p.request.text,
            "n_tokens": len(t.input_ids),
            "positions": t.positions,
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(folder / PROMPTS_FILE, "".join(lines))
    write_json(folder / SETUP_FILE, info)
    return info
