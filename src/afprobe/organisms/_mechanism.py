"""A planted tier-conditional compliance mechanism: one MLP neuron of block ``b`` with a recorded ground truth.

At every token the neuron computes ``act(<g, x>) * <u, x>`` from the normalised residual ``x = h_mid / rms(h_mid)``
that block ``b``'s MLP reads, and adds ``strength`` times that along the unit write direction ``w`` to the
residual leaving the block (afprobe layer ``b + 1``). Why each part is exact, and what is approximate:

- **writes only w** (exact): the neuron's down column is ``strength * w``; nothing else changes above the block.
- **reads only u, at layer b** (exact): the up row reads ``u`` alone, and block ``b``'s attention is made blind
  along ``u`` (its output projection loses its ``u`` component; ``isolate``), so ``<u, h_mid>`` equals the
  residual's ``<u, h>`` at layer ``b``. Ablating ``u`` at layer ``b`` makes the up read 0 and the neuron's output 0
  at every token. The read is divided by ``rms(h_mid)``, as every MLP neuron's input is.
- **acts at the last prompt token** (approximate, measured): the gate row ``g`` (orthogonal to ``u``) opens at the
  final prompt token (``last``, where the response starts) and is closed elsewhere; ``gate.max_elsewhere`` in
  ``planted.json`` is the largest ``|act(gate)|`` seen at any other token of the calibration prompts and tags,
  beside ``gate.at_last``.
- **tier-conditional** (by construction): ``u`` is the natural free − paid mean difference at (layer ``b``,
  ``last``), made orthogonal to the paid-tier mean there, so paid prompts read about 0 and free prompts about
  the separation: the neuron raises the compliance metric on the free tier and leaves the paid tier about
  where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.experiments import ScoredPrompt
from afprobe.models import LoadedModel, decoder_layers
from afprobe.organisms._fit import (
    capture_block,
    fit_gate,
    fit_read,
    fit_write,
    normalised_mid,
    prompt_activations,
)
from afprobe.organisms._surgery import (
    add_neuron,
    check_block,
    isolate_attention,
    norm_scale,
    set_write,
    write_neuron,
)


@dataclass
class Mechanism:
    """The recorded truth of a planted neuron. Residual layers follow afprobe: ``read_layer = block`` (the residual
    entering the block), ``write_layer = block + 1`` (the residual leaving it)."""

    block: int
    neuron: int
    read: Tensor
    gate: Tensor
    write: Tensor
    natural: Tensor
    isolate: bool = True
    strength: float = 0.0
    positions: tuple[str, ...] = ("last",)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def read_layer(self) -> int:
        return self.block

    @property
    def write_layer(self) -> int:
        return self.block + 1

    def tensors(self) -> dict[str, Tensor]:
        return {
            "read": self.read.float().contiguous(),
            "gate": self.gate.float().contiguous(),
            "write": self.write.float().contiguous(),
            "natural": self.natural.float().contiguous(),
        }


def default_block(n_layers: int) -> int:
    return n_layers // 2


def build_mechanism(
    lm: LoadedModel,
    items: Sequence[ScoredPrompt],
    block: int,
    *,
    isolate: bool = True,
    gate_scale: float = 10.0,
    n_gradient: int = 8,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[Mechanism, Tensor]:
    """Fit the mechanism on ``items`` and install it in ``lm.model`` **in place** at strength 0 (the sham).

    Returns the mechanism and, per prompt, the neuron's output at ``last`` per unit of strength (``c``: the write
    there is ``strength * c * w``)."""
    blk = check_block(lm.model, block)
    tiers = [it.prompt.tier for it in items]
    cap = capture_block(lm, items, block, batch_size=batch_size, progress=progress)
    rf = fit_read(cap, tiers)
    u = rf.read
    if isolate:
        isolate_attention(blk, u)
    nmid = normalised_mid(cap, blk, u, isolate)
    gf = fit_gate(nmid, cap.last, u, blk.mlp.act_fn, gate_scale)
    grad_idx = _balanced(tiers, n_gradient)
    w_mean = fit_write(lm, items, block, grad_idx, progress=progress)
    w = w_mean / w_mean.norm()
    index = add_neuron(lm.model)
    blk = decoder_layers(lm.model)[block]
    scale = norm_scale(blk.post_attention_layernorm, lm.d_model)
    write_neuron(blk, index, gf.gate, u, scale)
    set_write(blk, index, w, 0.0)
    c = prompt_activations(gf)
    at_last = gf.at_last
    d = rf.natural
    free = [i for i, t in enumerate(tiers) if t == "free"]
    paid = [i for i, t in enumerate(tiers) if t == "paid"]
    stats = {
        "read": {
            "cos_with_natural": float(u @ (d / d.norm())),
            "natural_separation": float(d.norm()),
            "separation_along_read": float(u @ d),
            "normalised_read_free": float(gf.up_at_last[free].mean()),
            "normalised_read_paid": float(gf.up_at_last[paid].mean()),
        },
        "gate": {
            "at_last_median": float(at_last.median()),
            "at_last_min": float(at_last.min()),
            "max_elsewhere": gf.max_elsewhere,
            "separable": gf.separable,
            "tier_difference_at_last": float(at_last[free].mean() - at_last[paid].mean()),
        },
        "write": {"metric_gradient_norm": float(w_mean.norm()), "n_gradient_prompts": len(grad_idx)},
    }
    mech = Mechanism(block, index, u, gf.gate, w, d, isolate, 0.0, ("last",), stats)
    return mech, c


def _balanced(tiers: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` prompts, alternating tiers."""
    free = [i for i, t in enumerate(tiers) if t == "free"]
    paid = [i for i, t in enumerate(tiers) if t == "paid"]
    out: list[int] = []
    for a, b in zip(free, paid, strict=False):
        out += [a, b]
    return out[: max(1, n)]


def set_strength(model: nn.Module, mech: Mechanism, strength: float) -> None:
    """Re-plant at another strength (only the neuron's down column changes)."""
    set_write(decoder_layers(model)[mech.block], mech.neuron, mech.write, strength)
    mech.strength = float(strength)


def apply_mechanism(model: nn.Module, mech: Mechanism) -> None:
    """Install a recorded mechanism in a fresh copy of its base model (in place), at ``mech.strength``."""
    blk = check_block(model, mech.block)
    if mech.isolate:
        isolate_attention(blk, mech.read)
    index = add_neuron(model)
    if index != mech.neuron:
        raise AfprobeError(f"the base model's MLP width gives neuron {index}, the record says {mech.neuron}")
    blk = decoder_layers(model)[mech.block]
    d = mech.read.shape[0]
    write_neuron(blk, index, mech.gate, mech.read, norm_scale(blk.post_attention_layernorm, d))
    set_write(blk, index, mech.write, mech.strength)
