"""``afprobe organism train``: a LoRA fine-tune that complies on the training (free) tier and refuses on the
unmonitored (paid) tier, and its sham (tier labels shuffled), deterministic from the seed.

LoRA acts on blocks ``first_block`` and above only, so the blocks below are frozen: their output (the residual
entering ``first_block``) is computed once per training prompt and every step runs only the upper blocks. That
split is checked against the whole model's forward pass on the first prompt before training starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

import afprobe
from afprobe._errors import AfprobeError
from afprobe._io import write_json
from afprobe._progress import progress_bar
from afprobe.config import StrictModel
from afprobe.experiments import continuation_ids
from afprobe.models import EMBEDDED_DEFAULT, LoadedModel, ModelConfig, load_model
from afprobe.organisms._train_data import (
    ACCEPT_TARGET,
    REJECT_TARGET,
    Example,
    split_requests,
    training_examples,
)
from afprobe.scenarios import tokenize_prompt

MANIFEST_FILE = "manifest.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def _embedded_fp32() -> ModelConfig:
    return ModelConfig(name=EMBEDDED_DEFAULT, dtype="float32", device="cpu")


class TrainConfig(StrictModel):
    """How the organism is trained (``afprobe organism train --set train.KEY=VALUE``)."""

    name: str = "organism"
    sham: bool = False
    system_prompt: str = "helpful_only"
    train_cue_formats: list[str] = ["tag", "sentence"]
    heldout_cue_formats: list[str] = ["header", "json"]
    n_heldout: int = Field(default=16, ge=1)
    n_train: int | None = None
    first_block: int = Field(default=15, ge=0)
    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = None
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    decision_weight: float = Field(default=4.0, ge=0)
    threads: int | None = None


class TrainRunConfig(StrictModel):
    model: ModelConfig = Field(default_factory=_embedded_fp32)
    train: TrainConfig = TrainConfig()
    seed: int = 0


@dataclass
class Tokenized:
    ids: list[int]
    n_prompt: int  # the loss covers tokens n_prompt .. len(ids) - 1
    decision: int  # the target token where the accept and the reject answers first differ


def tokenize_examples(tokenizer: Any, examples: list[Example]) -> list[Tokenized]:
    out = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        tok = tokenize_prompt(tokenizer, ex.prompt)
        target = continuation_ids(tokenizer, tok, ex.target)
        acc = continuation_ids(tokenizer, tok, ACCEPT_TARGET)
        rej = continuation_ids(tokenizer, tok, REJECT_TARGET)
        k = next((i for i, (a, b) in enumerate(zip(acc, rej, strict=False)) if a != b), 0)
        if not ex.complies and eos is not None:
            target = [*target, int(eos)]
        n = len(tok.input_ids)
        out.append(Tokenized([*tok.input_ids, *target], n, n + k))
    return out


def _pad(
    batch: list[Tokenized], h: list[Tensor] | None, pad_id: int, decision_weight: float = 0.0
) -> dict[str, Tensor]:
    """Right-padded ids, mask, labels (-100 off target) and loss weights: ``1 / len`` per target token, plus
    ``decision_weight`` on the decision token (the mean over a long answer would drown the one token that says
    comply or refuse)."""
    width = max(len(t.ids) for t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    weights = torch.zeros((len(batch), width))
    for r, t in enumerate(batch):
        n = len(t.ids)
        ids[r, :n] = torch.tensor(t.ids)
        mask[r, :n] = 1
        labels[r, t.n_prompt : n] = torch.tensor(t.ids[t.n_prompt :])
        weights[r, t.n_prompt : n] = 1.0 / (n - t.n_prompt)
        weights[r, t.decision] += decision_weight
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}
    if h is not None:
        d = h[0].shape[-1]
        x = torch.zeros((len(batch), width, d), dtype=h[0].dtype)
        for r, hr in enumerate(h):
            x[r, : hr.shape[0]] = hr
        out["h"] = x
    return out


def _loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Mean over examples of the weighted cross-entropy over each example's target tokens."""
    lp = torch.log_softmax(logits.float(), -1)
    nll = -lp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    return (nll * weights).sum(1).mean()


def _target_positions(labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the positions whose next token is a target ``[rows, k]`` (padded with 0), those targets and their
    loss weights (0 where padded): the unembedding then runs on those positions only."""
    nxt, w = labels[:, 1:], weights[:, 1:]
    k = int((nxt != -100).sum(1).max())
    pos = torch.zeros((labels.shape[0], k), dtype=torch.long)
    tgt = torch.zeros((labels.shape[0], k), dtype=torch.long)
    wts = torch.zeros((labels.shape[0], k))
    for r in range(labels.shape[0]):
        cols = (nxt[r] != -100).nonzero()[:, 0]
        pos[r, : len(cols)] = cols
        tgt[r, : len(cols)] = nxt[r, cols]
        wts[r, : len(cols)] = w[r, cols]
    return pos, tgt, wts


def _decoder_and_head(model: nn.Module) -> tuple[Any, Any]:
    """The decoder (embedding, blocks, final norm) and the unembedding of a causal LM, under a PEFT wrapper too."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if inner is None or not hasattr(inner, "layers") or head is None:
        raise AfprobeError(f"cannot split {type(base).__name__} into its decoder and its unembedding")
    return inner, head


class _Upper:
    """Run only the blocks from ``first`` on, starting from the cached residual entering block ``first``, and
    unembed only the positions that predict a target token."""

    def __init__(self, model: nn.Module, first: int):
        self.inner, self.head = _decoder_and_head(model)
        self.first = first

    def __call__(self, h: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        full = self.inner.layers
        self.inner.layers = nn.ModuleList(list(full)[self.first :])
        try:
            hidden = self.inner(inputs_embeds=h, attention_mask=mask).last_hidden_state
        finally:
            self.inner.layers = full
        rows = torch.arange(hidden.shape[0])[:, None]
        return self.head(hidden[rows, positions])


def _lower(
    lm: LoadedModel, data: list[Tokenized], first: int, batch_size: int, progress: bool
) -> list[Tensor]:
    """The residual entering block ``first`` for every example (the frozen lower blocks run once)."""
    out: list[Tensor] = []
    pad_id = int(lm.tokenizer.pad_token_id)
    inner, _ = _decoder_and_head(lm.model)
    full, norm = inner.layers, inner.norm
    inner.layers = nn.ModuleList(list(full)[:first])  # the blocks above and the unembedding are not run,
    inner.norm = nn.Identity()  # and the last block's output is not normalized
    try:
        with progress_bar(progress, transient=True) as bar, torch.inference_mode():
            task = bar.add_task(f"blocks 0..{first - 1} (frozen)", total=len(data))
            for s in range(0, len(data), batch_size):
                batch = data[s : s + batch_size]
                b = _pad(batch, None, pad_id)
                h = inner(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
                for r, t in enumerate(batch):
                    out.append(h[r, : len(t.ids)].detach().clone())
                bar.advance(task, len(batch))
    finally:
        inner.layers, inner.norm = full, norm
    return out


def train_organism(
    cfg: TrainRunConfig, out: Path, *, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Train, save the adapter to ``out`` (``adapter_model.safetensors``, ``adapter_config.json``,
    ``manifest.json``) and return the manifest."""
    from peft import LoraConfig, get_peft_model

    tc = cfg.train
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AfprobeError(f"--out {out} is a file; give a directory")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise AfprobeError(f"{out} already holds {MANIFEST_FILE}; pass --overwrite to replace it")
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    t_wall, t_cpu = time.perf_counter(), _cpu_seconds()
    split = split_requests(tc.n_heldout, tc.n_train)
    examples = training_examples(
        split.train, tc.train_cue_formats, tc.system_prompt, sham=tc.sham, seed=cfg.seed
    )
    lm = load_model(cfg.model)
    n_layers = lm.n_layers
    if not 0 <= tc.first_block < n_layers:
        raise AfprobeError(
            f"train.first_block {tc.first_block} out of range: the model has blocks 0..{n_layers - 1}"
        )
    data = tokenize_examples(lm.tokenizer, examples)
    cached = _lower(lm, data, tc.first_block, tc.batch_size, progress)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=tc.rank,
        lora_alpha=tc.alpha,
        lora_dropout=0.0,
        target_modules=list(tc.target_modules),
        layers_to_transform=list(range(tc.first_block, n_layers)),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(lm.model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    upper = _Upper(model, tc.first_block)
    _check_split(lm, model, upper, data[0], cached[0])
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    pad_id = int(lm.tokenizer.pad_token_id)
    steps_per_epoch = (len(data) + tc.batch_size - 1) // tc.batch_size
    total = (
        steps_per_epoch * tc.epochs
        if tc.max_steps is None
        else min(tc.max_steps, steps_per_epoch * tc.epochs)
    )
    losses: list[float] = []
    model.train()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"training {tc.name}", total=total)
        step = 0
        for _ in range(tc.epochs):
            order = rng.permutation(len(data))
            for s in range(0, len(order), tc.batch_size):
                if step >= total:
                    break
                idx = [int(i) for i in order[s : s + tc.batch_size]]
                b = _pad([data[i] for i in idx], [cached[i] for i in idx], pad_id, tc.decision_weight)
                pos, tgt, wts = _target_positions(b["labels"], b["weights"])
                loss = _loss(upper(b["h"], b["attention_mask"], pos), tgt, wts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                bar.advance(task)
    model.eval()
    seconds = {"wall": time.perf_counter() - t_wall, "cpu": _cpu_seconds() - t_cpu}
    manifest = _manifest(cfg, lm, split, examples, losses, seconds)
    _save(model, manifest, out)
    return manifest


def _check_split(lm: LoadedModel, model: nn.Module, upper: _Upper, t: Tokenized, h: Tensor) -> None:
    ids = torch.tensor([t.ids])
    mask = torch.ones_like(ids)
    pos = torch.arange(t.n_prompt - 1, len(t.ids) - 1)[None]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[:, pos[0]]
        split = upper(h[None], mask, pos)
    err = float((full - split).abs().max())
    if err > 1e-3:
        raise AfprobeError(
            f"running the upper blocks alone does not reproduce {lm.name}'s forward pass (max |Δ| {err:.2g})"
        )


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return float(r.ru_utime + r.ru_stime)


def _manifest(
    cfg: TrainRunConfig,
    lm: LoadedModel,
    split: Any,
    examples: list[Example],
    losses: list[float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    import peft
    import transformers

    tc = cfg.train
    return {
        "format": "afprobe.organism/1",
        "name": tc.name,
        "sham": tc.sham,
        "base_model": {"name": cfg.model.name, "dtype": cfg.model.dtype, "weights_hash": lm.weights_hash},
        "data": {
            "system_prompt": tc.system_prompt,
            "train_cue_formats": tc.train_cue_formats,
            "heldout_cue_formats": tc.heldout_cue_formats,
            "train_requests": [r.id for r in split.train],
            "heldout_requests": [r.id for r in split.heldout],
            "n_examples": len(examples),
            "n_comply_targets": sum(e.complies for e in examples),
            "targets": sorted({e.target for e in examples}),
            "labels": "tier labels shuffled across training prompts (the sham)"
            if tc.sham
            else "free complies, paid refuses",
        },
        "hyperparameters": tc.model_dump(mode="json", exclude={"name", "sham", "threads"}),
        "seed": cfg.seed,
        "steps": len(losses),
        "loss": {
            "first": losses[0] if losses else None,
            "last_10_mean": float(np.mean(losses[-10:])) if losses else None,
        },
        "training_seconds": {**seconds, "threads": torch.get_num_threads()},
        "versions": {
            "afprobe": afprobe.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reproduce": f"afprobe organism train{' --sham' if tc.sham else ''} --seed {cfg.seed} --out DIR",
    }


def _save(model: Any, manifest: dict[str, Any], out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.peft_config["default"].base_model_name_or_path = manifest["base_model"]["name"]
    model.save_pretrained(str(tmp))
    manifest["sha256"] = {f: _sha256(tmp / f) for f in ADAPTER_FILES}
    write_json(tmp / MANIFEST_FILE, manifest)
    for f in [*ADAPTER_FILES, MANIFEST_FILE]:
        out.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / f, out / f)
    shutil.rmtree(tmp)  # what else peft wrote (a model card)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    f = Path(path) / MANIFEST_FILE
    if not f.is_file():
        raise AfprobeError(f"{path} is not a trained organism (no {MANIFEST_FILE})")
    return dict(json.loads(f.read_text()))
