"""Fitting a planted mechanism's directions from the model's own activations.

- read ``u``: the natural free − paid mean difference of the residual entering the block (afprobe layer ``b``) at
  the final prompt token (named position ``last``), made orthogonal to the paid-tier mean there, so that a
  paid prompt reads about 0 and a free one about the tier separation;
- gate ``g``: a direction that is large at ``last`` and negative at every other token (a linear discriminant
  between ``last`` and the other tokens, shifted by the residual's mean direction, which acts as a constant
  because the norm makes ``<mean, x>`` nearly the same at every token), orthogonal to ``u``;
- write ``w``: the mean gradient of the compliance metric with respect to the block's output (afprobe layer
  ``b + 1``) at ``last``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe._progress import progress_bar
from afprobe.experiments import ScoredPrompt
from afprobe.models import LoadedModel, decoder_layers
from afprobe.organisms._surgery import norm_scale


class _Stop(Exception):
    pass


@dataclass
class BlockCapture:
    """Per prompt: the residual entering the block ``[n, d]`` and the block's attention output ``[n, d]`` on the
    prompt followed by one answer tag (accept for even pairs, reject for odd), and the index of ``last``."""

    resid: list[Tensor]
    attn: list[Tensor]
    last: list[int]


def _rows(items: Sequence[ScoredPrompt], idx: Sequence[int], pad_id: int) -> tuple[Tensor, Tensor, list[int]]:
    # alternate the tag by pair, so that it is not tied to the tier
    seqs = [
        [*items[i].tok.input_ids, *(items[i].accept if (i // 2) % 2 == 0 else items[i].reject)] for i in idx
    ]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask, [len(s) for s in seqs]


def capture_block(
    lm: LoadedModel, items: Sequence[ScoredPrompt], block: int, *, batch_size: int = 8, progress: bool = False
) -> BlockCapture:
    """Run each prompt (plus an answer tag) up to block ``block``'s attention and keep what it reads and writes."""
    blk = decoder_layers(lm.model)[block]
    got: dict[str, Tensor] = {}

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        got["resid"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def post(mod: nn.Module, args: tuple, output: Any) -> None:
        got["attn"] = (output[0] if isinstance(output, tuple) else output).detach()
        raise _Stop

    handles = [
        blk.register_forward_pre_hook(pre, with_kwargs=True),
        blk.self_attn.register_forward_hook(post),
    ]
    out = BlockCapture([], [], [])
    pad_id = int(lm.tokenizer.pad_token_id)
    starts = list(range(0, len(items), batch_size))
    try:
        with progress_bar(progress, transient=True) as bar, torch.inference_mode():
            task = bar.add_task(f"reading block {block}", total=len(starts))
            for s in starts:
                idx = list(range(s, min(s + batch_size, len(items))))
                ids, mask, lengths = _rows(items, idx, pad_id)
                with contextlib.suppress(_Stop):
                    lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
                for r, i in enumerate(idx):
                    out.resid.append(got["resid"][r, : lengths[r]].float().cpu())
                    out.attn.append(got["attn"][r, : lengths[r]].float().cpu())
                    out.last.append(items[i].length - 1)
                bar.advance(task)
    finally:
        for h in handles:
            h.remove()
    return out


@dataclass
class ReadFit:
    natural: Tensor  # free − paid mean difference at (layer b, last), raw units
    read: Tensor  # unit read direction u
    paid_mean: Tensor


def fit_read(cap: BlockCapture, tiers: Sequence[str]) -> ReadFit:
    at_last = torch.stack([r[k] for r, k in zip(cap.resid, cap.last, strict=True)])
    free = at_last[[i for i, t in enumerate(tiers) if t == "free"]]
    paid = at_last[[i for i, t in enumerate(tiers) if t == "paid"]]
    if len(free) == 0 or len(paid) == 0:
        raise AfprobeError("planting needs prompts of both tiers")
    d = free.mean(0) - paid.mean(0)
    if float(d.norm()) == 0:
        raise AfprobeError(
            "free and paid prompts have the same residual at the planted block: nothing to read"
        )
    m = paid.mean(0)
    u = d / d.norm()
    u = u - (u @ m) / (m @ m) * m
    return ReadFit(natural=d, read=u / u.norm(), paid_mean=m)


@dataclass
class GateFit:
    gate: Tensor  # residual direction (with its scale) the gate row reads from the normalised residual
    at_last: Tensor  # act(gate pre-activation) at `last`, per prompt
    up_at_last: Tensor  # up pre-activation (<u, normalised residual>) at `last`, per prompt
    max_elsewhere: float  # max |act(gate)| over every other token
    separable: bool


def normalised_mid(cap: BlockCapture, blk: nn.Module, read: Tensor, isolate: bool = True) -> list[Tensor]:
    """``h_mid / rms(h_mid)`` as block ``blk``'s MLP sees it (with ``isolate``: once its attention no longer writes
    along ``read``)."""
    norm = blk.post_attention_layernorm
    p = next(norm.parameters())
    d = read.shape[0]
    s = norm_scale(norm, d)
    out = []
    with torch.no_grad():
        for h, a in zip(cap.resid, cap.attn, strict=True):
            mid = h + a - torch.outer(a @ read, read) if isolate else h + a
            x = norm(mid.to(p.device, p.dtype)).float().cpu()
            out.append(x / s)
    return out


def fit_gate(
    nmid: list[Tensor], last: Sequence[int], read: Tensor, act: object, gate_scale: float
) -> GateFit:
    at = torch.stack([x[k] for x, k in zip(nmid, last, strict=True)])
    other = torch.cat([torch.cat([x[:k], x[k + 1 :]]) for x, k in zip(nmid, last, strict=True)])
    allx = torch.cat([at, other])
    c = allx.mean(0)
    c = c / c.norm()
    kappa = float((allx @ c).mean())
    cov = torch.cov(other.T)
    cov = cov + 1e-2 * float(cov.diagonal().mean()) * torch.eye(cov.shape[0])
    e = torch.linalg.solve(cov, at.mean(0) - other.mean(0))
    e = e - (e @ read) * read
    e = e / e.norm()
    z_at, z_other = at @ e, other @ e
    separable = bool(z_other.max() < z_at.min())
    theta = (
        float((z_other.max() + z_at.min()) / 2) if separable else float((z_other.mean() + z_at.mean()) / 2)
    )
    g = e - (theta / kappa) * c
    g = g - (g @ read) * read
    median = float((at @ g).median())
    if median <= 0:
        raise AfprobeError("cannot build a gate that opens at the last prompt token in this block")
    g = g * (gate_scale / median)
    fn = act if callable(act) else torch.nn.functional.silu
    with torch.no_grad():
        gate_at = fn(at @ g)
        gate_other = fn(other @ g)
    return GateFit(
        gate=g,
        at_last=gate_at,
        up_at_last=at @ read,
        max_elsewhere=float(gate_other.abs().max()) if len(other) else 0.0,
        separable=separable,
    )


def fit_write(
    lm: LoadedModel,
    items: Sequence[ScoredPrompt],
    block: int,
    indices: Sequence[int],
    *,
    progress: bool = False,
) -> Tensor:
    """Mean over ``indices`` of d(metric)/d(block output at ``last``), summed over the accept and reject rows."""
    blk = decoder_layers(lm.model)[block]
    leaf: dict[str, Tensor] = {}

    def hook(mod: nn.Module, args: tuple, output: object) -> object:
        h = output[0] if isinstance(output, tuple) else output
        x = h.detach().requires_grad_(True)  # type: ignore[union-attr]
        leaf["h"] = x
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = blk.register_forward_hook(hook)
    pad_id = int(lm.tokenizer.pad_token_id)
    total = torch.zeros(lm.d_model)
    try:
        with progress_bar(progress, transient=True) as bar, torch.enable_grad():
            task = bar.add_task("write direction", total=len(indices))
            for i in indices:
                it = items[i]
                conts = [it.accept, it.reject]
                seqs = [[*it.tok.input_ids, *c] for c in conts]
                width = max(len(s) for s in seqs)
                ids = torch.full((2, width), pad_id, dtype=torch.long)
                mask = torch.zeros((2, width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
                n = it.length
                lp = []
                for r, c in enumerate(conts):
                    rows = torch.log_softmax(logits[r, n - 1 : n - 1 + len(c)].float(), -1)
                    lp.append(rows.gather(-1, torch.tensor(c, device=rows.device)[:, None]).sum())
                (lp[0] - lp[1]).backward()
                total += leaf["h"].grad[:, n - 1].sum(0).float().cpu()  # type: ignore[union-attr]
                bar.advance(task)
    finally:
        handle.remove()
    if float(total.norm()) == 0:
        raise AfprobeError(
            f"the compliance metric does not depend on block {block}'s output at the last token"
        )
    return total / len(indices)


def prompt_activations(gate: GateFit) -> Tensor:
    """``act(gate) * up`` at ``last`` per prompt: the neuron's output there, per unit of strength."""
    return gate.at_last * gate.up_at_last
