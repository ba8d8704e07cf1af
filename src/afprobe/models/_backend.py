"""The backend interface: run a batch, read the residual stream at given layers and positions, apply
:class:`~afprobe.models.Edit` s on the way. Backends register by name (:func:`register_backend`); the local ones
live in ``_local`` and the remote one in ``_remote``, and this base knows nothing of either.

Layer numbers follow the activation file: layer 0 is the embedding output (the input of block 0), layer ``l``
is the residual stream after block ``l`` (the output of ``blocks[l - 1]``), so ``l`` matches Hugging Face's
``hidden_states[l]`` for every layer but the last, which HF returns after the final norm.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.models._attention import materialize_shared, takes_shared_prefix
from afprobe.models._edits import Edit, gather_positions
from afprobe.models._loaded import LoadedModel
from afprobe.models._registry import BACKENDS


@dataclass
class RunOutput:
    logits: Tensor | None = None
    resid: dict[int, Tensor] = field(default_factory=dict)
    cache: Any = None  # the model's KV cache after this pass, when run with ``use_cache=True``


class Backend(ABC):
    """Run a batch; read the residual stream at given layers and positions; apply :class:`Edit` s on the way."""

    name: str = "abstract"
    remote = False  # True: the passes run on another machine (the model config must say model.remote)
    supports_cache = False  # KV-cache passes and position_ids (generation, shared prefixes)

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


def edits_at(edits: list[Edit], layer: int) -> list[Edit]:
    return [e for e in edits if e.layer == layer]


def read_at(h: Tensor, read_positions: Tensor | None) -> Tensor:
    return gather_positions(h, read_positions) if read_positions is not None else h


class StopForward(Exception):
    """Raised from a hook once every requested layer has been read and no logits are wanted."""


def fan_out_start(layer: int) -> int:
    """The first block that runs on the copies of a pass fanned out at residual ``layer`` (``Backend.run``)."""
    return max(layer - 1, 0)


def fan_out_hooks(
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


def raise_stop(*_: Any) -> None:
    raise StopForward


def unembedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise AfprobeError(f"cannot find the unembedding of {type(model).__name__} for logit_positions")
    return head


def gather_before_unembedding(model: nn.Module, positions: Tensor) -> Any:
    """A pre-hook on the unembedding that keeps only ``positions`` ``[batch, k]`` of its input."""

    def pre_hook(mod: nn.Module, args: tuple) -> tuple:
        return (gather_positions(args[0], positions), *args[1:])

    return unembedding(model).register_forward_pre_hook(pre_hook)


def cache_kwargs(model: nn.Module, cache: dict[str, Any]) -> dict[str, Any]:
    """Forward kwargs for a KV-cache pass (``cache`` holds the key ``"cache"``) or for none (``cache`` empty).

    transformers 5 names the argument ``cache`` (older releases ``past_key_values``). ``position_ids`` passes
    through."""
    out = {"position_ids": cache["position_ids"]} if "position_ids" in cache else {}
    if "cache" not in cache:
        return {**out, "use_cache": False}
    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    kv = materialize_shared(cache["cache"], keep_on_cpu=takes_shared_prefix(model))
    return {**out, "use_cache": True, key: kv}


def output_cache(result: Any) -> Any:
    """The KV cache a model returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    found = getattr(result, "cache", None)
    return found if found is not None else getattr(result, "past_key_values", None)


def base_model(model: nn.Module) -> nn.Module:
    """The transformer without its unembedding (``model.model`` for Llama-style models)."""
    get = getattr(model, "get_decoder", None)
    base = get() if callable(get) else None
    return base if isinstance(base, nn.Module) else getattr(model, "model", model)


def module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise AfprobeError(f"cannot locate the transformer blocks inside {type(root).__name__}")


def envoy_at(envoy: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        envoy = getattr(envoy, part)
    return envoy


def make_backend(lm: LoadedModel, name: str | None = None) -> Backend:
    """Build the backend ``name`` (default: the model config's, see ``ModelConfig.backend_name``)."""
    key = name or lm.config.backend_name
    if key not in BACKENDS:
        raise AfprobeError(f"unknown backend {key!r} (known: {', '.join(BACKENDS)})")
    cls = BACKENDS[key]
    if bool(cls.remote) != lm.config.remote:
        where = "runs on NDIF (model.remote: true)" if cls.remote else "runs locally (model.remote: false)"
        raise AfprobeError(
            f"backend {key!r} {where}, but {lm.name} is loaded with model.remote={lm.config.remote}"
        )
    backend = cls(lm)
    assert isinstance(backend, Backend)
    return backend
