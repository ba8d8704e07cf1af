"""``model.remote: true``: the same reads and edits, run by nnsight on NDIF (https://ndif.us) instead of locally.

The model is built here on the meta device from its config (no weights are downloaded); every
:meth:`Backend.run` becomes one NDIF request that carries the token ids, the edits and the trace body, and brings
back only what was read. A LoRA adapter (``model.adapter``) travels with each request and the server applies it.

The API key comes from the environment (``NDIF_API_KEY``, or nnsight's own config file). Before any work,
:func:`check_remote_ready` refuses with one clear line when there is no key, when the process is told to stay
offline (``HF_HUB_OFFLINE``/``AFPROBE_OFFLINE``), when NDIF cannot be reached, or when the model is not running
there.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.models._backend import Backend, RunOutput
from afprobe.models._config import DTYPES, ModelConfig
from afprobe.models._edits import apply_edit, gather_positions
from afprobe.models._loaded import LoadedModel, decoder_layers
from afprobe.models._registry import register_backend
from afprobe.models._sources import resolve_source

API_KEY_ENV = "NDIF_API_KEY"
OFFLINE_ENVS = ("AFPROBE_OFFLINE", "HF_HUB_OFFLINE")

# nnsight model (meta weights) behind each remote LoadedModel.model
_NNSIGHT: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def ndif_api_key() -> str | None:
    """``$NDIF_API_KEY``, else the key in nnsight's config file (``~/.config/nnsight/config.yaml``)."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        return key
    from nnsight.schema.config import CONFIG

    return CONFIG.API.APIKEY or None


def ndif_host() -> str:
    from nnsight.schema.config import CONFIG

    return str(CONFIG.API.HOST)


def ndif_status() -> dict[str, Any]:
    """NDIF's ``/status`` (deployed models); empty when the service cannot be reached."""
    from nnsight import ndif

    result = ndif.status(raw=True)
    return result if isinstance(result, dict) else {}


def check_remote_ready(repo_id: str) -> str:
    """Everything a remote run needs, checked before any work: return the API key or raise one clear line."""
    key = ndif_api_key()
    if not key:
        raise AfprobeError(
            f"model.remote needs an NDIF API key: set {API_KEY_ENV} (get one at https://login.ndif.us)"
        )
    for env in OFFLINE_ENVS:
        if os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on"):
            raise AfprobeError(
                f"model.remote runs on NDIF ({ndif_host()}), but {env} is set: it needs the network"
            )
    status = ndif_status()
    deployments = status.get("deployments") if isinstance(status, dict) else None
    if not deployments:
        raise AfprobeError(f"cannot reach NDIF at {ndif_host()} (offline, or the service is down)")
    running = sorted({str(d.get("repo_id")) for d in deployments.values() if isinstance(d, dict)})
    if repo_id.lower() not in {r.lower() for r in running}:
        raise AfprobeError(
            f"{repo_id} is not running on NDIF right now; running: {', '.join(running) or 'none'}"
        )
    return key


def load_remote_model(cfg: ModelConfig) -> LoadedModel:
    """A :class:`LoadedModel` whose module lives on the meta device and whose forward passes run on NDIF."""
    src = resolve_source(cfg.name)
    where, source = src.where, src.description
    if src.gguf_file:
        raise AfprobeError(
            f"model.remote needs a Hugging Face hub id that NDIF serves, not a GGUF file ({cfg.name})"
        )
    repo_id = _canonical_repo_id(where)
    key = check_remote_ready(repo_id)
    from nnsight.schema.config import CONFIG

    CONFIG.API.APIKEY = key  # in memory only: nnsight's remote backend reads it from here
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            where, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        if cfg.dtype != "auto":
            kwargs["dtype"] = DTYPES[cfg.dtype]
        nm = TransformersModel(
            where,
            task="text-generation",
            tokenizer=tokenizer,
            revision=cfg.revision,
            peft=cfg.adapter,
            **kwargs,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AfprobeError(f"could not build remote model {cfg.name!r}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # afprobe pads itself; nnsight's left-padding default does not apply
    module = nm._module
    hf_cfg = module.config
    model_key = nm.to_model_key()
    fingerprint = hashlib.sha256(f"ndif|{model_key}|adapter={cfg.adapter}".encode()).hexdigest()
    lm = LoadedModel(
        model=module,
        tokenizer=tokenizer,
        name=cfg.name,
        model_id=repo_id,
        source=f"NDIF remote ({ndif_host()}); from {source}",
        weights_hash=fingerprint,
        dtype=next(module.parameters()).dtype,
        device=torch.device("cpu"),  # inputs are sent from here; results come back here
        n_layers=len(decoder_layers(module)),
        d_model=int(getattr(hf_cfg, "hidden_size", 0) or getattr(hf_cfg, "n_embd", 0)),
        config=cfg,
    )
    _NNSIGHT[module] = nm
    return lm


def _canonical_repo_id(where: str) -> str:
    """The hub's spelling of ``where`` (nnsight keys requests by it); what nnsight has cached when it can."""
    from nnsight.modeling import huggingface

    if where in huggingface._ID_CACHE:
        return huggingface._ID_CACHE[where]
    if os.path.isdir(where):
        raise AfprobeError(f"model.remote needs a hub id that NDIF serves, not a local directory ({where})")
    return where


class NDIFBackend(Backend):
    """Runs each pass remotely through nnsight (``remote=True``): the same reads and edits as ``nnsight``."""

    name = "ndif"
    remote = True

    def __init__(self, lm: LoadedModel):
        super().__init__(lm)
        nm = _NNSIGHT.get(lm.model)
        if nm is None:
            raise AfprobeError("the ndif backend needs a model loaded with model.remote=true")
        self.nm = nm
        blocks = decoder_layers(lm.model)
        path = next(name for name, mod in lm.model.named_modules() if mod is blocks)
        envoy = nm
        for part in path.split("."):
            envoy = getattr(envoy, part)
        self.blocks = envoy
        import nnsight

        from afprobe.models import _edits

        nnsight.register(_edits)  # the trace body calls apply_edit/gather_positions: ship their source

    def _run(self, input_ids, attention_mask, read_layers, read_positions, edits, logits, **cache):
        logit_positions = cache.pop("logit_positions", None)
        if cache:
            raise AfprobeError(
                "KV-cache passes (token-by-token generation) do not run on NDIF through afprobe"
            )
        saved = remote_pass(
            self.nm,
            self.blocks,
            input_ids.cpu(),
            attention_mask.cpu(),
            sorted(set(read_layers) | {e.layer for e in edits}),
            read_layers,
            None if read_positions is None else read_positions.cpu(),
            [_portable(e) for e in edits],
            logits,
            None if logit_positions is None else logit_positions.cpu(),
        )
        out = RunOutput()
        out.logits = saved.pop("logits", None)
        out.resid = {int(k): v for k, v in saved.items()}
        return out


register_backend(NDIFBackend.name, NDIFBackend)


def _portable(edit: Any) -> Any:
    """Edit tensors on the CPU, so the request unpickles on any server."""
    value = edit.value.detach().cpu()
    pos = None if edit.positions is None else edit.positions.detach().cpu()
    return type(edit)(edit.layer, edit.op, value, pos)


def remote_pass(
    nm: Any,
    blocks: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    layers: list[int],
    read_layers: list[int],
    read_positions: Tensor | None,
    edits: list[Any],
    logits: bool,
    logit_positions: Tensor | None,
) -> dict[Any, Tensor]:
    """One traced forward pass sent to NDIF; returns ``{layer: resid, "logits": ...}``.

    The ``with`` body is what travels (as source, with the values it names): it references no afprobe object
    except the edits and ``apply_edit``/``gather_positions``, which nnsight ships by value. Without logits the
    server stops after the last layer read."""
    import nnsight

    saved: dict[Any, Tensor] = {}
    with nm.trace(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, remote=True) as tracer:
        for layer in layers:
            env = blocks[0] if layer == 0 else blocks[layer - 1]
            h = env.input if layer == 0 else env.output
            is_tuple = isinstance(h, tuple)
            hid = h[0] if is_tuple else h
            layer_edits = [e for e in edits if e.layer == layer]
            for e in layer_edits:
                hid = apply_edit(hid, e)
            if layer_edits:
                new = (hid, *h[1:]) if is_tuple else hid
                if layer == 0:
                    env.input = new
                else:
                    env.output = new
            if layer in read_layers:
                saved[layer] = hid if read_positions is None else gather_positions(hid, read_positions)
        if logits:
            lg = nm.output.logits
            saved["logits"] = lg if logit_positions is None else gather_positions(lg, logit_positions)
        result = nnsight.save(saved)
        if not logits:
            tracer.stop()
    return result


def remote_generate(
    lm: LoadedModel, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, **generate_kwargs: Any
) -> Tensor:
    """Hugging Face ``generate`` on NDIF for a left-padded batch; returns prompt + new token ids ``[batch, seq]``.

    No edits: steered generation needs the KV-cache passes that do not run remotely."""
    import nnsight

    nm = _NNSIGHT.get(lm.model)
    if nm is None:
        raise AfprobeError("remote generation needs a model loaded with model.remote=true")
    with nm.generate(
        input_ids=input_ids.cpu(),
        attention_mask=attention_mask.cpu(),
        max_new_tokens=max_new_tokens,
        remote=True,
        **generate_kwargs,
    ) as tracer:
        ids = nnsight.save(tracer.result)
    return ids
