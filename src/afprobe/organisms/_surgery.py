"""Weight surgery for a planted mechanism: one extra MLP neuron, and block ``b``'s attention made blind along the
read direction.

Supported blocks are the pre-norm layout of Llama, Mistral, Qwen2/Qwen3 and Gemma (1): ``h_mid = h + attn(...)``,
``h_out = h_mid + mlp(post_attention_layernorm(h_mid))`` with a gated MLP ``down(act(gate(x)) * up(x))``. Blocks
that normalise the MLP's output (Gemma 2/3, OLMo 2: ``post_feedforward_layernorm``) are refused: there a new
neuron's write would be rescaled together with every other neuron's, so it would not be a write along one
direction.

The extra neuron is added to *every* block (the config has one ``intermediate_size``); outside the planted block
its weights are zero, and ``act(0) * 0 = 0`` adds nothing (up to the order in which the matrix product sums).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.models import decoder_layers

REFUSED_NORMS = ("post_feedforward_layernorm", "pre_feedforward_layernorm")


def check_block(model: nn.Module, block: int) -> nn.Module:
    """The block, if afprobe can plant in it exactly; an :class:`AfprobeError` naming the reason otherwise."""
    blocks = decoder_layers(model)
    if not 0 <= block < len(blocks):
        raise AfprobeError(f"block {block} out of range: the model has blocks 0..{len(blocks) - 1}")
    blk = blocks[block]
    kind = type(model).__name__
    for name in REFUSED_NORMS:
        if hasattr(blk, name):
            raise AfprobeError(
                f"cannot plant exactly in {kind}: its blocks apply {name} around the MLP, so a new neuron's write "
                "would be rescaled with every other neuron's"
            )
    mlp = getattr(blk, "mlp", None)
    attn = getattr(blk, "self_attn", None)
    missing = [
        n
        for n, ok in (
            ("mlp.gate_proj/up_proj/down_proj", mlp is not None and all(hasattr(mlp, p) for p in _MLP)),
            ("self_attn.o_proj", attn is not None and hasattr(attn, "o_proj")),
            ("post_attention_layernorm", hasattr(blk, "post_attention_layernorm")),
        )
        if not ok
    ]
    if missing:
        raise AfprobeError(
            f"cannot plant in {kind}: its blocks have no {', '.join(missing)} (a Llama-style block)"
        )
    if getattr(getattr(mlp, "gate_proj", None), "bias", None) is not None:
        raise AfprobeError(
            f"cannot plant in {kind}: its MLP has biases (only bias-free gated MLPs are supported)"
        )
    return blk


_MLP = ("gate_proj", "up_proj", "down_proj")


def norm_scale(norm: nn.Module, d: int) -> Tensor:
    """The elementwise scale ``s`` of an RMSNorm (``weight`` for Llama, ``1 + weight`` for Gemma), measured by
    normalising a constant vector, so it holds whatever the norm's parametrisation."""
    p = next(norm.parameters())
    ones = torch.full((1, d), 1e3, dtype=torch.float32, device=p.device)
    with torch.no_grad():
        out = norm(ones.to(p.dtype)).float()[0].cpu()
    if out.abs().min() < 1e-6:
        raise AfprobeError("the MLP input norm has a zero weight: the planted neuron cannot read through it")
    return out


def mlp_act(blk: nn.Module) -> Any:
    return blk.mlp.act_fn


def isolate_attention(blk: nn.Module, direction: Tensor) -> None:
    """Project ``direction`` (unit) out of the attention output of ``blk`` (``o_proj`` rows and bias): afterwards
    the residual's component along ``direction`` is the same before and after the attention."""
    o = blk.self_attn.o_proj
    u = direction.to(o.weight.device, torch.float32)
    with torch.no_grad():
        w = o.weight.float()
        o.weight.copy_((w - torch.outer(u, u @ w)).to(o.weight.dtype))
        if o.bias is not None:
            b = o.bias.float()
            o.bias.copy_((b - u * (u @ b)).to(o.bias.dtype))


def add_neuron(model: nn.Module) -> int:
    """Give every block's MLP one more neuron with zero weights; returns its index."""
    blocks = decoder_layers(model)
    index = int(blocks[0].mlp.gate_proj.out_features)
    for blk in blocks:
        mlp = blk.mlp
        if int(mlp.gate_proj.out_features) != index:
            raise AfprobeError("the blocks' MLPs differ in width: cannot add a neuron to every block")
        mlp.gate_proj = _grow_rows(mlp.gate_proj)
        mlp.up_proj = _grow_rows(mlp.up_proj)
        mlp.down_proj = _grow_cols(mlp.down_proj)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = index + 1
    model.config.intermediate_size = index + 1
    return index


def _grow_rows(lin: nn.Linear) -> nn.Linear:
    new = nn.Linear(
        lin.in_features, lin.out_features + 1, bias=False, device=lin.weight.device, dtype=lin.weight.dtype
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: lin.out_features] = lin.weight
    new.requires_grad_(lin.weight.requires_grad)
    return new


def _grow_cols(lin: nn.Linear) -> nn.Linear:
    new = nn.Linear(
        lin.in_features + 1,
        lin.out_features,
        bias=lin.bias is not None,
        device=lin.weight.device,
        dtype=lin.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : lin.in_features] = lin.weight
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    new.requires_grad_(lin.weight.requires_grad)
    return new


def write_neuron(blk: nn.Module, index: int, gate: Tensor, up: Tensor, scale: Tensor) -> None:
    """Set the neuron's gate and up rows so that they read ``gate`` and ``up`` (residual directions) from the
    normalised residual: row = vector / s, since the MLP input is ``s * h / rms(h)``."""
    mlp = blk.mlp
    with torch.no_grad():
        for lin, vec in ((mlp.gate_proj, gate), (mlp.up_proj, up)):
            lin.weight[index] = (vec.float() / scale).to(lin.weight.device, lin.weight.dtype)


def set_write(blk: nn.Module, index: int, write: Tensor, strength: float) -> None:
    """The neuron's down column: ``strength`` times the unit write direction."""
    down = blk.mlp.down_proj
    with torch.no_grad():
        down.weight[:, index] = (float(strength) * write.float()).to(down.weight.device, down.weight.dtype)
