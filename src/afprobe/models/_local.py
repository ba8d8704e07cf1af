"""The local backends, each registered by name:

- :class:`NNsightBackend` (``nnsight``, the default): nnsight traces over the HF model.
- :class:`TransformerLensBackend` (``transformer_lens``): TransformerLens 4's ``TransformerBridge`` hooks
  (``blocks.i.hook_resid_*``).
- :class:`HooksBackend` (``hooks``): plain PyTorch forward hooks, the lightest path.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.models._backend import (
    Backend,
    RunOutput,
    StopForward,
    base_model,
    cache_kwargs,
    edits_at,
    envoy_at,
    fan_out_hooks,
    gather_before_unembedding,
    module_path,
    output_cache,
    raise_stop,
    read_at,
)
from afprobe.models._edits import apply_edit, gather_positions
from afprobe.models._loaded import LoadedModel, decoder_layers
from afprobe.models._registry import register_backend


class HooksBackend(Backend):
    """Plain PyTorch forward hooks on the HF blocks."""

    name = "hooks"
    supports_fan_out = True
    supports_cache = True

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        blocks = decoder_layers(self.lm.model)
        logit_positions = cache.pop("logit_positions", None)
        fan_out = cache.pop("fan_out", None)
        out = RunOutput()
        last_needed = max([*read_layers, *(e.layer for e in edits)], default=-1)
        # registered first, so the copies exist before this layer's edits and reads
        handles = fan_out_hooks(blocks, fan_out[0], fan_out[1], int(input_ids.shape[0])) if fan_out else []

        def visit(layer: int, h: Tensor) -> Tensor:
            for e in edits_at(edits, layer):
                h = apply_edit(h, e)
            if layer in read_layers:
                out.resid[layer] = read_at(h, read_positions)
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
                    raise StopForward
                if new is h:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new

            return hook

        if 0 in read_layers or edits_at(edits, 0):
            handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer in range(1, self.n_layers + 1):
            if layer in read_layers or edits_at(edits, layer) or (not logits and layer == last_needed):
                handles.append(blocks[layer - 1].register_forward_hook(post_hook(layer)))
        if logit_positions is not None:
            handles.append(gather_before_unembedding(self.lm.model, logit_positions))
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
                    handles.append(blocks[0].register_forward_hook(raise_stop))
                base_model(self.lm.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return out


class NNsightBackend(Backend):
    """nnsight traces over the HF model (the default backend; the road to remote execution on NDIF)."""

    name = "nnsight"
    supports_fan_out = True
    supports_cache = True

    def __init__(self, lm: LoadedModel):
        super().__init__(lm)
        from nnsight import NNsight

        blocks = decoder_layers(lm.model)
        base = base_model(lm.model)
        self._full = NNsight(lm.model)
        self._base = NNsight(base)
        self._full_path = module_path(lm.model, blocks)
        self._base_path = module_path(base, blocks)

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        # plain PyTorch hooks, outside the trace: nnsight sees the gathered unembedding input, and the fanned-out
        # rows (placed before nnsight's own hooks, so its edits see the copies)
        handles = []
        logit_positions = cache.pop("logit_positions", None)
        if logit_positions is not None:
            handles.append(gather_before_unembedding(self.lm.model, logit_positions))
        fan_out = cache.pop("fan_out", None)
        if fan_out is not None:
            blocks = decoder_layers(self.lm.model)
            handles += fan_out_hooks(blocks, fan_out[0], fan_out[1], int(input_ids.shape[0]), prepend=True)
        try:
            return self._trace(input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache)
        finally:
            for hd in handles:
                hd.remove()

    def _trace(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        nm = self._full if logits else self._base
        blocks = envoy_at(nm, self._full_path if logits else self._base_path)
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
                layer_edits = edits_at(edits, layer)
                for e in layer_edits:
                    hid = apply_edit(hid, e)
                if layer_edits:
                    new = (hid, *h[1:]) if is_tuple else hid
                    if layer == 0:
                        env.input = new
                    else:
                        env.output = new
                if layer in read_layers:
                    saved[layer] = read_at(hid, read_positions).save()
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
                for e in edits_at(edits, layer):
                    h = apply_edit(h, e)
                if layer in read_layers:
                    out.resid[layer] = read_at(h, read_positions)
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


for _cls in (NNsightBackend, TransformerLensBackend, HooksBackend):
    register_backend(_cls.name, _cls)
