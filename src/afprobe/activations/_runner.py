"""``CacheRunner(cfg).run(out)``: prompts -> model -> residual stream at named positions -> HDF5."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import afprobe
from afprobe._errors import AfprobeError
from afprobe._io import check_free_space
from afprobe._lock import output_lock
from afprobe._progress import progress_bar
from afprobe.activations._gpu import OverlappedWriter, SubBatcher, model_devices, rows_that_fit
from afprobe.activations._store import ActivationWriter, check_output_path, partial_path, to_attr
from afprobe.config import Seed, StrictModel
from afprobe.models import (
    LoadedModel,
    ModelConfig,
    PrefixStore,
    continue_mask,
    load_model,
    make_backend,
    plan_prefixes,
    prompt_keys,
    right_pad,
)
from afprobe.scenarios import (
    POSITION_NAMES,
    ScenarioConfig,
    TokenizedPrompt,
    build_scenario,
    conversation_format,
    system_prompt_provenance,
    template_hash,
    tokenize_prompts,
)

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class CacheConfig(StrictModel):
    """What to store: ``layers`` is ``"all"`` (embedding output and every block) or a list of layer numbers.
    ``share_prefix``: the tokens every prompt with the same system prompt starts with (up to the first stored
    position) run once, and each batch continues from their KV cache (backends with a KV cache)."""

    layers: Literal["all"] | list[int] = "all"
    positions: list[str] = list(POSITION_NAMES)
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = 16
    share_prefix: bool = True


class CacheRunConfig(StrictModel):
    """Everything ``afprobe cache`` needs; the same sections appear in ``afprobe run`` configs."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = ScenarioConfig()
    cache: CacheConfig = CacheConfig()
    seed: Seed = 0


def resolve_layers(spec: Literal["all"] | list[int], n_layers: int, name: str) -> list[int]:
    layers = list(range(n_layers + 1)) if spec == "all" else list(spec)
    if not layers:
        raise AfprobeError("cache.layers is empty")
    for layer in layers:
        if not 0 <= layer <= n_layers:
            raise AfprobeError(f"layer {layer} out of range: {name} has layers 0..{n_layers}")
    if len(set(layers)) != len(layers):
        raise AfprobeError(f"cache.layers repeats a layer: {layers}")
    return sorted(layers)


class CacheRunner:
    """Cache the residual stream of ``cfg.model`` on ``cfg.scenario``'s prompts into the HDF5 file ``out``."""

    def __init__(self, cfg: CacheRunConfig, *, progress: bool = True, overwrite: bool = False):
        self.cfg = cfg
        self.overwrite = overwrite
        self.progress = progress
        self.forward_batch_size: int | None = None  # the forward sub-batch size the last run ended with
        self.prefix_store: PrefixStore | None = None

    def prepare(
        self, lm: LoadedModel | None = None, prompts: list[TokenizedPrompt] | None = None
    ) -> tuple[LoadedModel, list[TokenizedPrompt]]:
        """The model (loaded unless given) and the prompts (built and tokenized unless given)."""
        cfg = self.cfg
        if prompts is None:
            built = build_scenario(cfg.scenario)
            lm = lm or load_model(cfg.model)
            prompts = tokenize_prompts(lm.tokenizer, built, cfg.cache.positions)
        return lm or load_model(cfg.model), prompts

    def run(
        self, out: str | Path, *, lm: LoadedModel | None = None, prompts: list[TokenizedPrompt] | None = None
    ) -> Path:
        """Cache into ``out`` (resuming its ``.partial``); pass ``lm`` and ``prompts`` when they are already
        loaded and tokenized (their provenance is what gets recorded). Returns the finished file."""
        cfg = self.cfg
        out = Path(out)
        check_output_path(out, self.overwrite)
        if cfg.cache.batch_size < 1:
            raise AfprobeError("cache.batch_size must be at least 1")
        lm, toks = self.prepare(lm, prompts)
        layers = resolve_layers(cfg.cache.layers, lm.n_layers, lm.name)
        with output_lock(out, "activation file"):  # one writer per file: a second run is refused
            check_output_path(out, self.overwrite)  # it may have been finished meanwhile
            return self._write(out, lm, toks, layers)

    def _write(self, out: Path, lm: LoadedModel, toks: list[TokenizedPrompt], layers: list[int]) -> Path:
        cfg = self.cfg
        if self.overwrite:
            out.unlink(missing_ok=True)
            partial_path(out).unlink(missing_ok=True)
        check_free_space(out, self._bytes_needed(out, len(toks), layers, lm), "the activation file")
        writer = ActivationWriter(
            out,
            run_key=self.run_key(lm, toks),
            n_prompts=len(toks),
            layers=layers,
            position_names=cfg.cache.positions,
            d_model=lm.d_model,
            max_len=max(len(t.input_ids) for t in toks),
            dtype=cfg.cache.dtype,
            batch_size=cfg.cache.batch_size,
            meta=_meta_columns(toks),
            attrs=self.provenance(lm, toks),
        )
        try:
            self._fill(writer, lm, toks, layers)
        except BaseException:
            writer.close()
            raise
        return writer.finalize()

    def _bytes_needed(self, out: Path, n_prompts: int, layers: list[int], lm: LoadedModel) -> int:
        """What the finished file will take on disk (the arrays; chunks are allocated as they are written, so a
        partial file already holds its share), minus what a partial file being resumed already has."""
        item = np.dtype(self.cfg.cache.dtype).itemsize
        per_prompt = len(layers) * len(self.cfg.cache.positions) * lm.d_model * item + 1024
        partial = partial_path(out)
        have = partial.stat().st_size if partial.is_file() else 0
        return max(0, n_prompts * per_prompt - have)

    def _fill(
        self, writer: ActivationWriter, lm: LoadedModel, toks: list[TokenizedPrompt], layers: list[int]
    ) -> None:
        """Forward every batch not yet in ``writer`` and write it, in row order.

        The configured batch (``cache.batch_size`` rows) is the unit of work: it is written whole, and a resume
        restarts at a batch boundary. The forward pass runs it as sub-batches sized from free device memory
        (halved on out-of-memory, keeping the rows already done), each padded to the width of the whole batch,
        so every row sees the same shapes however the batch was split. On CPU the stored arrays are then
        bit-identical for any split (tested); on CUDA a different row count can pick another matmul kernel, so
        after an out-of-memory back-off the last bits may differ from an uninterrupted run.

        Device-to-host copies and HDF5 writes run behind the next forward pass (see ``_gpu``).
        """
        backend = make_backend(lm)
        bs = self.cfg.cache.batch_size
        positions = self.cfg.cache.positions
        store = STORE_DTYPES[self.cfg.cache.dtype]
        pad_id = int(lm.tokenizer.pad_token_id)
        todo = toks[writer.n_done :]
        if not todo:
            return
        prefixes = PrefixStore(backend)
        shared = [0] * len(toks)
        if self.cfg.cache.share_prefix and prefixes.usable:
            limits = [min(t.positions[p] for p in positions) for t in toks]
            shared = plan_prefixes([t.input_ids for t in toks], prompt_keys(toks), limits)
        self.prefix_store = prefixes  # what the last run shared (``computed``: the prefix passes it ran)
        width = max(len(t.input_ids) for t in todo)
        sub = SubBatcher(rows_that_fit(lm.model, width, bs), on_shrink=self._note_shrink)
        on_cuda = any(d.type == "cuda" for d in model_devices(lm.model))
        pipe = OverlappedWriter(
            _HDF5Sink(writer, self.cfg.cache.dtype),
            (len(layers), min(bs, len(todo)), len(positions), lm.d_model),
            store,
            pin=on_cuda,
        )
        with progress_bar(self.progress, "caching ") as bar, pipe:
            task = bar.add_task(f"{lm.name} ({len(layers)} layers)", total=len(toks), completed=writer.n_done)
            for start in range(writer.n_done, len(toks), bs):
                batch = toks[start : start + bs]
                ids, mask = right_pad([t.input_ids for t in batch], pad_id)
                pos = torch.tensor([[t.positions[p] for p in positions] for t in batch], dtype=torch.long)
                pos_dev = pos.to(lm.device)  # once per batch, not once per layer read
                host = pipe.buffer()

                plan = shared[start : start + bs]
                # the batch's prefix groups and each one's width in the whole batch (less padding; a sub-batch
                # after an out-of-memory keeps the widths, and so gives the same bits)
                groups = _groups(plan, ids)
                widths = {rows[0]: int(mask[rows].sum(1).max()) for rows in groups}

                def step(
                    a: int,
                    b: int,
                    ids=ids,
                    mask=mask,
                    pos_dev=pos_dev,
                    host=host,
                    plan=plan,
                    groups=groups,
                    widths=widths,
                ) -> None:
                    with torch.inference_mode():
                        for group in groups:  # rows that share one prefix (or none)
                            rows = [i for i in group if a <= i < b]
                            if not rows:
                                continue
                            idx, p, n, w = torch.tensor(rows), plan[rows[0]], len(rows), widths[group[0]]
                            at = pos_dev[idx.to(pos_dev.device)]
                            if p == 0:
                                out = backend.run(
                                    ids[idx, :w],
                                    mask[idx, :w],
                                    read_layers=layers,
                                    read_positions=at,
                                    logits=False,
                                )
                            else:
                                out = backend.run(
                                    ids[idx, p:w],
                                    continue_mask(p, mask[idx, p:w]),
                                    read_layers=layers,
                                    read_positions=at - p,
                                    logit_positions=torch.zeros(n, 1, dtype=torch.long),
                                    **prefixes.continue_from(ids[rows[0], :p].tolist(), n, w),
                                )
                            for j, layer in enumerate(layers):
                                for dst, src, k in _segments(rows):
                                    pipe.copy_into(host[j, dst : dst + k], out.resid[layer][src : src + k])

                sub.run(len(batch), step)
                pipe.submit(len(batch), (start, ids.numpy(), mask.sum(1).numpy(), pos.numpy()))
                bar.advance(task, len(batch))
        self.forward_batch_size = sub.size

    def _note_shrink(self, size: int) -> None:
        warnings.warn(f"out of memory: forward sub-batches shrink to {size} prompts", stacklevel=2)

    def run_key(self, lm: LoadedModel, toks: list[TokenizedPrompt]) -> str:
        """Hash of everything that determines the file's content: model, config and the exact token ids."""
        h = hashlib.sha256()
        h.update(lm.weights_hash.encode())
        h.update(str(lm.dtype).encode())
        h.update(self.cfg.model_dump_json(exclude={"model": {"device"}}).encode())
        for t in toks:
            h.update(np.asarray(t.input_ids, dtype=np.int64).tobytes())
            h.update(
                json.dumps({p: t.positions[p] for p in self.cfg.cache.positions}, sort_keys=True).encode()
            )
        return h.hexdigest()

    def provenance(self, lm: LoadedModel, toks: list[TokenizedPrompt] | None = None) -> dict:
        import transformers

        return {
            k: to_attr(v)
            for k, v in {
                "model_id": lm.model_id,
                "model_name": lm.name,
                "model_source": lm.source,
                "weights_hash": lm.weights_hash,
                "dtype": str(lm.dtype).removeprefix("torch."),
                "storage_dtype": self.cfg.cache.dtype,
                "n_layers": lm.n_layers,
                "d_model": lm.d_model,
                "chat_template_hash": template_hash(lm.tokenizer),
                "conversation_format": conversation_format(lm.tokenizer),
                "backend": lm.config.backend_name,
                "afprobe_version": afprobe.__version__,
                "torch_version": torch.__version__,
                "transformers_version": transformers.__version__,
                "config": json.loads(self.cfg.model_dump_json()),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "pad_token_id": int(lm.tokenizer.pad_token_id),
                "system_prompts": system_prompt_provenance(t.prompt for t in toks or []),
            }.items()
        }


class _HDF5Sink:
    """The writer thread's end: refuse values float16 cannot hold, then ``write_batch`` the rows."""

    def __init__(self, writer: ActivationWriter, dtype: str):
        self.writer = writer
        self.check_range = dtype == "float16"

    def __call__(self, resid: np.ndarray, payload: tuple) -> None:
        start, ids, lengths, pos = payload
        if self.check_range and np.isinf(resid).any():
            raise AfprobeError(
                "residual stream values exceed the float16 range; use --set cache.dtype=float32"
            )
        self.writer.write_batch(start, resid, ids, lengths, pos)


def _groups(plan: list[int], ids: torch.Tensor) -> list[list[int]]:
    """The batch's rows grouped by the prefix they share (the same length and tokens), each group in row order: a
    batch of prompts under several system prompts runs one pass per system prompt, not one per run of
    neighbours."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(plan)):
        groups.setdefault(tuple(ids[i, : plan[i]].tolist()), []).append(i)
    return list(groups.values())


def _segments(rows: list[int]) -> list[tuple[int, int, int]]:
    """``(first row, first position in rows, count)`` of each run of consecutive rows in ``rows``."""
    out: list[tuple[int, int, int]] = []
    for k, r in enumerate(rows):
        if out and out[-1][0] + out[-1][2] == r:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((r, k, 1))
    return out


def _meta_columns(toks: list[TokenizedPrompt]) -> dict[str, list]:
    return {
        "pair_id": [t.prompt.pair_id for t in toks],
        "request_id": [t.prompt.request_id for t in toks],
        "tier": [t.prompt.tier for t in toks],
        "cue_format": [t.prompt.cue_format for t in toks],
        "system_prompt": [t.prompt.system_prompt for t in toks],
        "category": [t.prompt.category for t in toks],
        "harmful": [t.prompt.harmful for t in toks],
        "request_text": [t.prompt.request.text for t in toks],
    }
