"""``TranscriptCacheRunner(cfg).run(out, transcripts=..., lm=...)``: replay saved transcripts (the model's own
scratchpad reasoning and output, ``afprobe.experiments`` scratchpad mode) through the backend and cache named
spans of them into the same HDF5 contract as the prompt cache, so that probes, and directions for steering and
patching, come from the model's reasoning.

Named spans (``position_names``; each row's token span in ``span_start`` / ``span_end``):

- ``scratchpad``: the mean over every token inside the transcript's reasoning blocks;
- ``output``: the mean over the output's tokens;
- ``decision``: the mean over the tokens of the decision tag (``<request_fully_accepted/>`` / ``<rejected/>``);
- ``output_first``: the first token of the output.

``position_index`` holds the first token of each span; ``resid[i, l, p]`` is the mean of a plain Hugging Face
forward pass's hidden state ``l`` over the span's tokens of ``input_ids[i, :lengths[i]]`` (tested), with the
activation cache's one exception (the last layer is stored before the final norm). A transcript that lacks one of
the asked spans (no reasoning, no output, no tag) is left out, and counted in the ``skipped`` attr. The system
prompt's tokens, shared by every transcript, run once (``share_prefix``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from afprobe._errors import AfprobeError
from afprobe._progress import progress_bar
from afprobe.activations._runner import resolve_layers
from afprobe.activations._store import (
    META_COLUMNS,
    ActivationWriter,
    check_output_path,
    partial_path,
    to_attr,
)
from afprobe.config import StrictModel
from afprobe.models import LoadedModel, PrefixStore, continue_mask, make_backend, plan_prefixes, right_pad

TRANSCRIPT_POSITIONS: dict[str, str] = {
    "scratchpad": "mean",
    "output": "mean",
    "decision": "mean",
    "output_first": "first",
}


class TranscriptCacheConfig(StrictModel):
    """Which layers and named spans of the transcripts to store."""

    layers: Literal["all"] | list[int] = "all"
    positions: list[str] = ["scratchpad", "decision", "output_first"]
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = Field(default=4, ge=1)
    share_prefix: bool = True

    @field_validator("positions")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in TRANSCRIPT_POSITIONS:
                raise ValueError(
                    f"unknown transcript span {name!r} (known: {', '.join(TRANSCRIPT_POSITIONS)})"
                )
        if not v or len(set(v)) != len(v):
            raise ValueError("positions must be a non-empty list without repeats")
        return v


def usable(transcripts: Sequence[Any], positions: Sequence[str]) -> list[int]:
    """Indices of the transcripts that have every span in ``positions``."""
    return [i for i, t in enumerate(transcripts) if t.input_ids and all(t.spans.get(p) for p in positions)]


class TranscriptCacheRunner:
    """Cache the spans of ``transcripts`` (``Transcript`` objects with ``input_ids`` and ``spans``) into ``out``."""

    def __init__(self, cfg: TranscriptCacheConfig, *, progress: bool = True, overwrite: bool = False):
        self.cfg = cfg
        self.progress = progress
        self.overwrite = overwrite
        self.prefix_store: PrefixStore | None = None

    def run(self, out: str | Path, *, transcripts: Sequence[Any], lm: LoadedModel) -> Path:
        cfg = self.cfg
        out = Path(out)
        check_output_path(out, self.overwrite)
        keep = usable(transcripts, cfg.positions)
        if not keep:
            raise AfprobeError(
                f"no transcript has all of the spans {', '.join(cfg.positions)} (they need reasoning, an output "
                "and a decision tag): nothing to cache"
            )
        rows = [transcripts[i] for i in keep]
        layers = resolve_layers(cfg.layers, lm.n_layers, lm.name)
        if self.overwrite:
            out.unlink(missing_ok=True)
            partial_path(out).unlink(missing_ok=True)
        writer = ActivationWriter(
            out,
            run_key=self.run_key(lm, rows),
            n_prompts=len(rows),
            layers=layers,
            position_names=cfg.positions,
            d_model=lm.d_model,
            max_len=max(len(t.input_ids) for t in rows),
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            meta=_meta(rows),
            attrs=self._attrs(lm, len(transcripts) - len(rows)),
        )
        try:
            _extra_columns(writer, rows, cfg.positions)
            self._fill(writer, lm, rows, layers)
        except BaseException:
            writer.close()
            raise
        return writer.finalize()

    def _fill(self, writer: ActivationWriter, lm: LoadedModel, rows: list[Any], layers: list[int]) -> None:
        backend = make_backend(lm)
        positions = self.cfg.positions
        store = PrefixStore(backend)
        self.prefix_store = store
        ids_all = [list(t.input_ids) for t in rows]
        plan = [0] * len(rows)
        if self.cfg.share_prefix and store.usable:
            limits = [min(t.spans[p][0][0] for p in positions) for t in rows]
            plan = plan_prefixes(ids_all, [t.messages[0]["content"] for t in rows], limits)
        np_dtype = np.float16 if self.cfg.dtype == "float16" else np.float32
        pad = int(lm.tokenizer.pad_token_id)
        bs = self.cfg.batch_size
        with progress_bar(self.progress, "transcripts ") as bar, torch.inference_mode():
            task = bar.add_task(f"{lm.name} ({len(layers)} layers)", total=len(rows), completed=writer.n_done)
            for start in range(writer.n_done, len(rows), bs):
                batch = rows[start : start + bs]
                ids, mask = right_pad(ids_all[start : start + bs], pad)
                resid = np.zeros((len(batch), len(layers), len(positions), lm.d_model), dtype=np_dtype)
                for c, d in _groups(plan[start : start + bs], ids):
                    p = plan[start + c]
                    if p == 0:
                        out = backend.run(ids[c:d], mask[c:d], read_layers=layers, logits=False)
                    else:
                        out = backend.run(
                            ids[c:d, p:],
                            continue_mask(p, mask[c:d, p:]),
                            read_layers=layers,
                            logit_positions=torch.zeros(d - c, 1, dtype=torch.long),
                            **store.continue_from(ids[c, :p].tolist(), d - c, ids.shape[1]),
                        )
                    for r in range(c, d):
                        t = batch[r]
                        for j, layer in enumerate(layers):
                            h = out.resid[layer][r - c].float()
                            for k, name in enumerate(positions):
                                resid[r, j, k] = (
                                    _reduce(h, t.spans[name], TRANSCRIPT_POSITIONS[name], p).cpu().numpy()
                                )
                index = np.array([[t.spans[name][0][0] for name in positions] for t in batch], dtype=np.int64)
                lengths = mask.sum(1).numpy()
                writer.write_batch(start, resid, ids.numpy(), lengths, index)
                bar.advance(task, len(batch))

    def run_key(self, lm: LoadedModel, rows: Sequence[Any]) -> str:
        h = hashlib.sha256()
        h.update(lm.weights_hash.encode())
        h.update(str(lm.dtype).encode())
        h.update(self.cfg.model_dump_json().encode())
        for t in rows:
            h.update(np.asarray(t.input_ids, dtype=np.int64).tobytes())
            h.update(json.dumps({p: t.spans[p] for p in self.cfg.positions}, sort_keys=True).encode())
        return h.hexdigest()

    def _attrs(self, lm: LoadedModel, skipped: int) -> dict[str, Any]:
        from afprobe.activations._runner import CacheRunConfig, CacheRunner

        base = CacheRunner(CacheRunConfig()).provenance(lm)
        base.update(
            {
                "kind": "transcripts",
                "config": to_attr({"transcripts": json.loads(self.cfg.model_dump_json())}),
                "storage_dtype": self.cfg.dtype,
                "position_reduce": to_attr({p: TRANSCRIPT_POSITIONS[p] for p in self.cfg.positions}),
                "skipped": skipped,
            }
        )
        return base


def _reduce(h: torch.Tensor, spans: list[list[int]], how: str, offset: int) -> torch.Tensor:
    """The mean of ``h`` [seq, d] over the token ``spans`` (shifted by ``offset``), or its first token."""
    if how == "first":
        return h[spans[0][0] - offset]
    idx = torch.cat([torch.arange(a - offset, b - offset) for a, b in spans])
    return h[idx.to(h.device)].mean(0)


def _groups(plan: list[int], ids: torch.Tensor) -> list[tuple[int, int]]:
    """Consecutive rows sharing one prefix (the same length and tokens)."""
    out, c = [], 0
    for i in range(1, len(plan) + 1):
        if i == len(plan) or plan[i] != plan[c] or not torch.equal(ids[i, : plan[c]], ids[c, : plan[c]]):
            out.append((c, i))
            c = i
    return out


def _meta(rows: Sequence[Any]) -> dict[str, list]:
    return {c: [getattr(t, c) for t in rows] for c in META_COLUMNS}


def _extra_columns(writer: ActivationWriter, rows: Sequence[Any], positions: Sequence[str]) -> None:
    """Transcript columns beyond the prompt cache's (written once, when the file is created)."""
    meta = writer.f["meta"]
    if "sample" in meta:
        return
    meta.create_dataset("prompt_index", data=np.asarray([t.prompt_index for t in rows], dtype=np.int64))
    meta.create_dataset("sample", data=np.asarray([t.sample for t in rows], dtype=np.int64))
    meta.create_dataset("verdict", data=np.asarray([t.verdict for t in rows], dtype=object), dtype=_str())
    af = [(t.judge or {}).get("alignment_faking") for t in rows]
    meta.create_dataset(
        "alignment_faking", data=np.asarray([-1 if a is None else int(a) for a in af], dtype=np.int8)
    )
    writer.f.create_dataset(
        "span_start", data=np.asarray([[t.spans[p][0][0] for p in positions] for t in rows], dtype=np.int64)
    )
    writer.f.create_dataset(
        "span_end", data=np.asarray([[t.spans[p][-1][1] for p in positions] for t in rows], dtype=np.int64)
    )
    writer.f.flush()


def _str() -> Any:
    import h5py

    return h5py.string_dtype("utf-8")
