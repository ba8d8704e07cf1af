"""One small interface over three ways of running a model: read, add to, or replace the residual stream.

Layer numbers follow the activation file: layer 0 is the embedding output (the input of block 0), layer ``l``
is the residual stream after block ``l`` (the output of ``blocks[l - 1]``), so ``l`` matches Hugging Face's
``hidden_states[l]`` for every layer but the last, which HF returns after the final norm.

- :class:`NNsightBackend` (default): nnsight traces; the same code will later run remotely on NDIF.
- :class:`TransformerLensBackend`: TransformerLens 4's ``TransformerBridge`` hooks (``blocks.i.hook_resid_*``).
- :class:`HooksBackend`: plain PyTorch forward hooks, the lightest path.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.models._load import LoadedModel, decoder_layers

EditOp = Literal["add", "set", "ablate"]


@dataclass(frozen=True)
class Edit:
    """A change to the residual stream at one layer.

    - ``add``: ``value`` is ``[d]``, ``[batch, d]`` (broadcast over the selected positions) or ``[batch, k, d]``
      (one vector per index in ``positions``).
    - ``set``: ``value`` is ``[batch, k, d]``, written at ``positions`` ``[batch, k]``.
    - ``ablate``: ``value`` is a direction ``[d]`` or ``[batch, d]``; its component is projected out.

    ``positions`` is ``None`` (every position), a long tensor ``[batch, k]`` of token indices, or a bool mask
    ``[batch, seq]``.
    """

    layer: int
    op: EditOp
    value: Tensor
    positions: Tensor | None = None


@dataclass
class RunOutput:
    logits: Tensor | None = None
    resid: dict[int, Tensor] = field(default_factory=dict)
    cache: Any = None  # the model's KV cache after this pass, when run with ``use_cache=True``


def gather_positions(
    h: Float[Tensor, "batch seq d"], positions: Int[Tensor, "batch k"]
) -> Float[Tensor, "batch k d"]:
    rows = torch.arange(h.shape[0], device=h.device)[:, None]
    return h[rows, positions.to(h.device)]


def apply_edit(h: Float[Tensor, "batch seq d"], edit: Edit) -> Float[Tensor, "batch seq d"]:
    """Return ``h`` with ``edit`` applied (out of place, so autograd and nnsight both see a new value)."""
    v = edit.value.to(device=h.device, dtype=h.dtype)
    pos = edit.positions
    if edit.op == "set" or (edit.op == "add" and v.ndim == 3):
        if pos is None or pos.dtype == torch.bool:
            raise ValueError(f"{edit.op} with per-position values needs index positions [batch, k]")
        rows = torch.arange(h.shape[0], device=h.device)[:, None].expand_as(pos)
        return h.index_put((rows, pos.to(h.device)), v, accumulate=edit.op == "add")
    mask = _position_mask(h, pos)
    if v.ndim == 1:
        v = v.expand(h.shape[0], -1)
    if edit.op == "add":
        return h + mask * v[:, None, :]
    if edit.op == "ablate":
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        coef = (h * unit[:, None, :]).sum(-1, keepdim=True)
        return h - mask * coef * unit[:, None, :]
    raise ValueError(f"unknown edit op {edit.op!r}")


def _position_mask(h: Tensor, pos: Tensor | None) -> Tensor:
    if pos is None:
        return torch.ones(h.shape[0], h.shape[1], 1, device=h.device, dtype=h.dtype)
    if pos.dtype == torch.bool:
        return pos.to(h.device, h.dtype)[..., None]
    mask = torch.zeros(h.shape[0], h.shape[1], device=h.device, dtype=h.dtype)
    mask.scatter_(1, pos.to(h.device), 1.0)
    return mask[..., None]


class Backend(ABC):
    """Run a batch; read the residual stream at given layers and positions; apply :class:`Edit` s on the way."""

    name: str = "abstract"

    def __init__(self, lm: LoadedModel):
        self.lm = lm

    @property
    def n_layers(self) -> int:
        """Number of blocks; valid residual layers are ``0..n_layers``."""
        return self.lm.n_layers

    supports_fan_out = False

    def check_layers(self, layers: Sequence[int]) -> None:
        for layer in layers:
            if not 0 <= layer <= self.n_layers:
                raise AfprobeError(
                    f"layer {layer} out of range: {self.lm.name} has layers 0..{self.n_layers}"
                )

    def run(
        self,
        input_ids: Int[Tensor, "batch seq"],
        attention_mask: Int[Tensor, "batch seq"] | None = None,
        *,
        read_layers: Sequence[int] = (),
        read_positions: Int[Tensor, "batch k"] | None = None,
        edits: Sequence[Edit] = (),
        logits: bool = True,
        cache: Any = None,
        use_cache: bool = False,
        logit_positions: Int[Tensor, "batch k"] | None = None,
        position_ids: Int[Tensor, "batch seq"] | None = None,
        fan_out: tuple[int, int] | None = None,
    ) -> RunOutput:
        """One forward pass. ``resid[l]`` is ``[batch, k, d]`` at ``read_positions`` (``[batch, seq, d]`` if None),
        read after this layer's edits. With ``logits=False`` the unembedding is skipped (and, where the backend
        can, every block after the last layer read).

        KV cache (hooks and nnsight backends): ``use_cache=True`` returns the model's cache in ``RunOutput.cache``;
        pass it back as ``cache`` to continue, with ``attention_mask`` covering the cached and the new tokens.
        Token indices in ``positions`` and ``read_positions`` then count from the first new token.

        ``logit_positions`` ``[batch, k]``: unembed only those tokens (``logits`` is then ``[batch, k, vocab]``),
        which saves the memory of a full ``[batch, seq, vocab]`` tensor. ``position_ids`` (hooks and nnsight
        backends) overrides the model's own token positions, e.g. to continue right-padded rows from a cache.

        ``fan_out=(layer, n)`` (backends with ``supports_fan_out``): the blocks before ``fan_out_start(layer)``
        (the block whose output is residual ``layer``) run once on the ``B`` input rows; from there every row is
        copied ``n`` times (copy-major: row ``c * B + b`` is copy ``c`` of row ``b``), so edits and reads at
        ``layer`` and above, logits and ``logit_positions`` see ``n * B`` rows. A ``cache`` passed in must hold
        ``B`` rows in those first blocks and ``n * B`` in the others; the returned one is the same. Several
        interventions at or above ``layer`` then share the blocks below."""
        if fan_out is not None and not self.supports_fan_out:
            raise ValueError(f"the {self.name} backend cannot fan out")
        layers = sorted(set(read_layers) | {e.layer for e in edits})
        self.check_layers(layers)
        device = self.lm.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra: dict[str, Any] = {}
        if cache is not None or use_cache:
            if not logits:
                raise ValueError("a KV-cache pass runs the whole model: use logits=True")
            extra = {"cache": cache}
        if logit_positions is not None and logits:
            extra["logit_positions"] = logit_positions.to(device)
        if position_ids is not None:
            extra["position_ids"] = position_ids.to(device)
        if fan_out is not None:
            extra["fan_out"] = fan_out
        return self._run(
            input_ids,
            attention_mask.to(device),
            sorted(set(read_layers)),
            read_positions,
            list(edits),
            logits,
            **extra,
        )

    @abstractmethod
    def _run(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        read_layers: list[int],
        read_positions: Tensor | None,
        edits: list[Edit],
        logits: bool,
    ) -> RunOutput: ...


def _edits_at(edits: list[Edit], layer: int) -> list[Edit]:
    return [e for e in edits if e.layer == layer]


def _read(h: Tensor, read_positions: Tensor | None) -> Tensor:
    return gather_positions(h, read_positions) if read_positions is not None else h


class _Stop(Exception):
    """Raised from a hook once every requested layer has been read and no logits are wanted."""


class HooksBackend(Backend):
    """Plain PyTorch forward hooks on the HF blocks."""

    name = "hooks"
    supports_fan_out = True

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        blocks = decoder_layers(self.lm.model)
        logit_positions = cache.pop("logit_positions", None)
        fan_out = cache.pop("fan_out", None)
        out = RunOutput()
        last_needed = max([*read_layers, *(e.layer for e in edits)], default=-1)
        # registered first, so the copies exist before this layer's edits and reads
        handles = _fan_out_hooks(blocks, fan_out[0], fan_out[1], int(input_ids.shape[0])) if fan_out else []

        def visit(layer: int, h: Tensor) -> Tensor:
            for e in _edits_at(edits, layer):
                h = apply_edit(h, e)
            if layer in read_layers:
                out.resid[layer] = _read(h, read_positions)
            return h

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if args:
                return (visit(0, args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = visit(0, kwargs["hidden_states"])
            return args, kwargs

        def post_hook(layer: int):
            def hook(mod: nn.Module, args: Any, output: Any) -> Any:
                h = output[0] if isinstance(output, tuple) else output
                new = visit(layer, h)
                if not logits and layer >= last_needed:
                    raise _Stop
                if new is h:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new

            return hook

        if 0 in read_layers or _edits_at(edits, 0):
            handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer in range(1, self.n_layers + 1):
            if layer in read_layers or _edits_at(edits, layer) or (not logits and layer == last_needed):
                handles.append(blocks[layer - 1].register_forward_hook(post_hook(layer)))
        if logit_positions is not None:
            handles.append(_gather_before_unembedding(self.lm.model, logit_positions))
        try:
            if logits:
                result = self.lm.model(
                    input_ids=input_ids, attention_mask=attention_mask, **cache_kwargs(self.lm.model, cache)
                )
                out.logits = result.logits
                out.cache = output_cache(result) if "cache" in cache else None
            elif last_needed >= 0:
                stop_early = last_needed == 0
                if stop_early:  # only the embedding output is wanted: stop inside block 0's pre-hook
                    handles.append(blocks[0].register_forward_hook(_raise_stop))
                _base_model(self.lm.model)(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                )
        except _Stop:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return out


def fan_out_start(layer: int) -> int:
    """The first block that runs on the copies of a pass fanned out at residual ``layer`` (``Backend.run``)."""
    return max(layer - 1, 0)


def _fan_out_hooks(
    blocks: Sequence[nn.Module], layer: int, n: int, rows: int, prepend: bool = False
) -> list[Any]:
    """Pre-hooks that copy every row ``n`` times at the input of block ``fan_out_start(layer)`` (so the edits at
    residual ``layer``, the output of that block, see the copies under every backend): the hidden state there,
    and the per-row arguments (attention mask, position ids and embeddings, ...) that the model hands every
    block from there on, which still have ``rows`` rows."""
    start = fan_out_start(layer)

    def widen(x: Any) -> Any:
        if isinstance(x, Tensor) and x.ndim >= 2 and x.shape[0] == rows:
            return x.repeat(n, *([1] * (x.ndim - 1)))
        if isinstance(x, tuple):
            return tuple(widen(t) for t in x)
        return x

    def widen_args(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        first = mod is blocks[start]  # the hidden state of later blocks comes widened from the block below
        if args:
            args = (widen(args[0]) if first else args[0], *(widen(a) for a in args[1:]))
        return args, {k: v if k == "hidden_states" and not first else widen(v) for k, v in kwargs.items()}

    return [
        blocks[i].register_forward_pre_hook(widen_args, with_kwargs=True, prepend=prepend)
        for i in range(start, len(blocks))
    ]


def _raise_stop(*_: Any) -> None:
    raise _Stop


def _unembedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise AfprobeError(f"cannot find the unembedding of {type(model).__name__} for logit_positions")
    return head


def _gather_before_unembedding(model: nn.Module, positions: Tensor) -> Any:
    """A pre-hook on the unembedding that keeps only ``positions`` ``[batch, k]`` of its input."""

    def pre_hook(mod: nn.Module, args: tuple) -> tuple:
        return (gather_positions(args[0], positions), *args[1:])

    return _unembedding(model).register_forward_pre_hook(pre_hook)


def cache_kwargs(model: nn.Module, cache: dict[str, Any]) -> dict[str, Any]:
    """Forward kwargs for a KV-cache pass (``cache`` holds the key ``"cache"``) or for none (``cache`` empty).

    transformers 5 names the argument ``cache`` (older releases ``past_key_values``). ``position_ids`` passes
    through."""
    out = {"position_ids": cache["position_ids"]} if "position_ids" in cache else {}
    if "cache" not in cache:
        return {**out, "use_cache": False}
    import inspect

    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    return {**out, "use_cache": True, key: cache["cache"]}


def output_cache(result: Any) -> Any:
    """The KV cache a model returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    found = getattr(result, "cache", None)
    return found if found is not None else getattr(result, "past_key_values", None)


def _base_model(model: nn.Module) -> nn.Module:
    """The transformer without its unembedding (``model.model`` for Llama-style models)."""
    get = getattr(model, "get_decoder", None)
    base = get() if callable(get) else None
    return base if isinstance(base, nn.Module) else getattr(model, "model", model)


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise AfprobeError(f"cannot locate the transformer blocks inside {type(root).__name__}")


def _envoy_at(envoy: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        envoy = getattr(envoy, part)
    return envoy


class NNsightBackend(Backend):
    """nnsight traces over the HF model (the default backend; the road to remote execution on NDIF)."""

    name = "nnsight"
    supports_fan_out = True

    def __init__(self, lm: LoadedModel):
        super().__init__(lm)
        from nnsight import NNsight

        blocks = decoder_layers(lm.model)
        base = _base_model(lm.model)
        self._full = NNsight(lm.model)
        self._base = NNsight(base)
        self._full_path = _module_path(lm.model, blocks)
        self._base_path = _module_path(base, blocks)

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        # plain PyTorch hooks, outside the trace: nnsight sees the gathered unembedding input, and the fanned-out
        # rows (placed before nnsight's own hooks, so its edits see the copies)
        handles = []
        logit_positions = cache.pop("logit_positions", None)
        if logit_positions is not None:
            handles.append(_gather_before_unembedding(self.lm.model, logit_positions))
        fan_out = cache.pop("fan_out", None)
        if fan_out is not None:
            blocks = decoder_layers(self.lm.model)
            handles += _fan_out_hooks(blocks, fan_out[0], fan_out[1], int(input_ids.shape[0]), prepend=True)
        try:
            return self._trace(input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache)
        finally:
            for hd in handles:
                hd.remove()

    def _trace(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        nm = self._full if logits else self._base
        blocks = _envoy_at(nm, self._full_path if logits else self._base_path)
        layers = sorted(set(read_layers) | {e.layer for e in edits})
        saved: dict[int, Any] = {}
        out = RunOutput()
        kwargs = cache_kwargs(self.lm.model, cache)
        saved_cache = None
        with nm.trace(input_ids=input_ids, attention_mask=attention_mask, **kwargs):
            for layer in layers:
                env = blocks[0] if layer == 0 else blocks[layer - 1]
                h = env.input if layer == 0 else env.output
                is_tuple = isinstance(h, tuple)
                hid = h[0] if is_tuple else h
                layer_edits = _edits_at(edits, layer)
                for e in layer_edits:
                    hid = apply_edit(hid, e)
                if layer_edits:
                    new = (hid, *h[1:]) if is_tuple else hid
                    if layer == 0:
                        env.input = new
                    else:
                        env.output = new
                if layer in read_layers:
                    saved[layer] = _read(hid, read_positions).save()
            if logits:
                out.logits = nm.output.logits.save()
                if "cache" in cache:
                    saved_cache = nm.output.save()
        out.resid = dict(saved)
        if saved_cache is not None:
            out.cache = output_cache(saved_cache)
        return out


class TransformerLensBackend(Backend):
    """TransformerLens 4 ``TransformerBridge`` over the same HF module (``boot_transformers(hf_model=...)``)."""

    name = "transformer_lens"

    def __init__(self, lm: LoadedModel):
        super().__init__(lm)
        from transformer_lens.model_bridge import TransformerBridge

        # afprobe passes token ids, never text, so TL's tokenizer set-up must not re-download one (it would, to
        # turn on add_bos_token): hand it a private copy that already says so.
        tok = copy.deepcopy(lm.tokenizer)
        tok.init_kwargs = {**tok.init_kwargs, "name_or_path": lm.model_id, "add_bos_token": True}
        self.bridge = TransformerBridge.boot_transformers(
            lm.model_id, hf_model=lm.model, tokenizer=tok, device=str(lm.device), dtype=lm.dtype
        )

    @staticmethod
    def hook_name(layer: int) -> str:
        return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        logit_positions = cache.pop("logit_positions", None)
        if cache:
            raise AfprobeError("transformer_lens backend: no KV cache or position_ids; use nnsight or hooks")
        out = RunOutput()
        hooks = []
        for layer in sorted(set(read_layers) | {e.layer for e in edits}):

            def fn(h: Tensor, hook: Any, layer: int = layer) -> Tensor:
                for e in _edits_at(edits, layer):
                    h = apply_edit(h, e)
                if layer in read_layers:
                    out.resid[layer] = _read(h, read_positions)
                return h

            hooks.append((self.hook_name(layer), fn))
        last = max([*read_layers, *(e.layer for e in edits)], default=0)
        result = self.bridge.run_with_hooks(
            input_ids,
            fwd_hooks=hooks,
            return_type="logits" if logits else None,
            stop_at_layer=None if logits else last + 1 if last < self.n_layers else None,
            attention_mask=attention_mask,
        )
        if logits:
            out.logits = result if logit_positions is None else gather_positions(result, logit_positions)
        return out


BACKENDS: dict[str, type[Backend]] = {
    "nnsight": NNsightBackend,
    "transformer_lens": TransformerLensBackend,
    "hooks": HooksBackend,
}


def make_backend(lm: LoadedModel, name: str | None = None) -> Backend:
    """Build the backend named in the model config (``nnsight`` unless told otherwise; ``ndif`` when remote)."""
    if lm.config.remote and name in (None, "nnsight", "ndif"):
        from afprobe.models._remote import NDIFBackend

        return NDIFBackend(lm)
    key = name or lm.config.backend
    if key not in BACKENDS:
        raise AfprobeError(f"unknown backend {key!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[key](lm)
