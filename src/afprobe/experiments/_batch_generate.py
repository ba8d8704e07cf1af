"""Generation at scale, for compliance rates over many samples: left-padded batches with a KV cache, or vLLM.

Left padding done right: each row's position ids count its own tokens only (``cumsum(mask) - 1``), pad tokens
are masked out of attention at every step, and edits are placed by each row's own token index, so a row
generates the same tokens in a batch as alone (greedy; tested). Prompts are batched by length to waste little
padding, and results come back in input order.

Sampling draws every row from its own generator, seeded by ``(seed, prompt index)``, so a sample does not
depend on the batch size or on which prompts share its batch.

A remote model (``model.remote``) generates on NDIF with Hugging Face ``generate``, one request per batch.
With ``engine="auto"``, vLLM generates when it is installed, a GPU is present, the model was loaded from the hub
or a local directory, and no edits are asked for (vLLM cannot edit the residual stream); the adapter
(``model.adapter``) then goes to vLLM as a LoRA request.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from afprobe._errors import AfprobeError
from afprobe.experiments._generate import stop_token_ids
from afprobe.models import Edit, LoadedModel, apply_edit, decoder_layers
from afprobe.scenarios import TokenizedPrompt

Engine = Literal["auto", "hf", "vllm"]


class ResidualEdit(Protocol):
    """What generation accepts as an edit (``afprobe.experiments.GenerationEdit`` is one): ``op`` ``add`` or
    ``ablate`` of ``vector`` at ``layer``, on tokens from ``start`` on: ``all``, ``from_cue`` (needs
    :class:`TokenizedPrompt` inputs) or ``generated`` (the last prompt token and every new one)."""

    layer: int
    op: Any
    vector: Tensor
    start: Any


def generate_batched(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[Sequence[int]] | Sequence[TokenizedPrompt],
    max_new_tokens: int = 64,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    edits: Sequence[ResidualEdit] = (),
    engine: Engine = "auto",
    vllm_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """The response to each prompt (decoded, cut before the first end-of-turn token).

    ``prompts``: chat-templated texts (tokenized without adding special tokens, so no doubled BOS), token id
    lists, or :class:`TokenizedPrompt` s."""
    new = generate_batched_ids(
        lm,
        prompts,
        max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        edits=edits,
        engine=engine,
        vllm_kwargs=vllm_kwargs,
    )
    return [lm.tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def generate_batched_ids(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[Sequence[int]] | Sequence[TokenizedPrompt],
    max_new_tokens: int = 64,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    edits: Sequence[ResidualEdit] = (),
    engine: Engine = "auto",
    vllm_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """:func:`generate_batched`, returning the new token ids (end-of-turn token excluded)."""
    if batch_size < 1 or max_new_tokens < 1:
        raise AfprobeError("batch_size and max_new_tokens must be at least 1")
    token_lists, cue = _as_token_lists(lm.tokenizer, prompts)
    if any(e.start == "from_cue" for e in edits) and cue is None:
        raise AfprobeError("an edit that starts from_cue needs TokenizedPrompt inputs (they know the cue)")
    if lm.config.remote:
        if edits:
            raise AfprobeError(
                "steered generation does not run on NDIF (it needs KV-cache passes with edits)"
            )
        return ndif_generate(lm, token_lists, max_new_tokens, do_sample, temperature, batch_size)
    if _use_vllm(lm, engine, edits):
        return vllm_generate(lm, token_lists, max_new_tokens, do_sample, temperature, seed, vllm_kwargs or {})
    stops = stop_token_ids(lm.tokenizer)
    order = _by_length(token_lists)
    out: list[list[int]] = [[] for _ in token_lists]
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            idx = order[b0 : b0 + batch_size]
            rows = [token_lists[i] for i in idx]
            starts = [
                [_start(e.start, len(r), cue[i] if cue else 0) for i, r in zip(idx, rows, strict=True)]
                for e in edits
            ]
            gens = [_row_generator(seed, i) for i in idx] if do_sample else None
            new = _hf_batch(
                lm, rows, max_new_tokens, temperature if do_sample else 0.0, gens, edits, starts, stops
            )
            for i, ids in zip(idx, new, strict=True):
                out[i] = ids
    return out


def _by_length(token_lists: list[list[int]]) -> list[int]:
    return sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    return ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))]


def _as_token_lists(tokenizer: Any, prompts: Sequence[Any]) -> tuple[list[list[int]], list[int] | None]:
    if not prompts:
        return [], None
    if all(isinstance(p, TokenizedPrompt) for p in prompts):
        return [list(p.input_ids) for p in prompts], [int(p.positions.get("cue", 0)) for p in prompts]
    if all(isinstance(p, str) for p in prompts):
        return [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts], None
    return [[int(t) for t in p] for p in prompts], None


def _start(mode: str, length: int, cue: int) -> int:
    """First prompt-token index (from the row's first real token) an edit applies to."""
    if mode == "all":
        return 0
    if mode == "from_cue":
        return cue
    if mode == "generated":
        return length - 1
    raise AfprobeError(f"unknown edit start {mode!r} (all, from_cue or generated)")


def _row_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """Left-padded ``input_ids``, ``attention_mask`` and the matching ``position_ids`` (0 at each first token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


@dataclass
class _EditHooks:
    """Forward hooks that apply ``edits`` where ``masks[k]`` ``[batch, seq]`` says, for the current step."""

    model: nn.Module
    edits: Sequence[ResidualEdit]
    masks: list[Tensor]

    def __enter__(self) -> _EditHooks:
        blocks = decoder_layers(self.model)
        self._handles = []
        for k, e in enumerate(self.edits):
            if e.layer == 0:
                self._handles.append(blocks[0].register_forward_pre_hook(self._pre(k), with_kwargs=True))
            else:
                self._handles.append(blocks[e.layer - 1].register_forward_hook(self._post(k)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _edit(self, k: int, h: Tensor) -> Tensor:
        e = self.edits[k]
        return apply_edit(h, Edit(e.layer, e.op, e.vector, self.masks[k].to(h.device)))

    def _pre(self, k: int) -> Any:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (self._edit(k, args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = self._edit(k, kwargs["hidden_states"])
            return args, kwargs

        return hook

    def _post(self, k: int) -> Any:
        def hook(mod: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self._edit(k, output[0]), *output[1:])
            return self._edit(k, output)

        return hook


def _cache_arg(model: nn.Module) -> str:
    """transformers 5 names the KV-cache argument ``cache``; earlier releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _hf_batch(
    lm: LoadedModel,
    rows: list[list[int]],
    max_new: int,
    temperature: float,
    gens: list[torch.Generator] | None,
    edits: Sequence[ResidualEdit],
    starts: list[list[int]],
    stops: set[int],
) -> list[list[int]]:
    from transformers import DynamicCache

    model = lm.model
    device = lm.device
    ids, mask, pos = left_pad(rows, int(lm.tokenizer.pad_token_id))
    n, width = ids.shape
    offset = width - torch.tensor([len(r) for r in rows])  # pad columns before each row
    # column c of the prompt is token c - offset of its row; an edit covers tokens >= its start
    token_index = torch.arange(width)[None, :] - offset[:, None]
    masks = [(token_index >= torch.tensor(s)[:, None]) & mask.bool() for s in starts]
    key = _cache_arg(model)
    kv: Any = DynamicCache(config=model.config)
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * n
    step_ids, step_pos = ids, pos
    with _EditHooks(model, edits, masks) as hooks:
        for t in range(max_new):
            out = model(
                input_ids=step_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=step_pos.to(device),
                use_cache=True,
                logits_to_keep=1,
                **{key: kv},
            )
            kv = getattr(out, key, None)
            if kv is None:
                kv = out.past_key_values
            chosen = _choose(out.logits[:, -1], temperature, gens)
            for i in range(n):
                if done[i]:
                    continue
                if int(chosen[i]) in stops:
                    done[i] = True
                else:
                    new[i].append(int(chosen[i]))
            if all(done) or t == max_new - 1:
                break
            step_ids = chosen[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
            hooks.masks = [
                torch.ones(n, 1, dtype=torch.bool) for _ in edits
            ]  # new tokens: every edit applies
    return new


def _choose(
    logits: Float[Tensor, "batch vocab"], temperature: float, gens: list[torch.Generator] | None
) -> Tensor:
    """The next token of each row: argmax, or a draw from each row's own generator."""
    if gens is None or temperature <= 0:
        return logits.argmax(-1).cpu()
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])


# ---- NDIF (model.remote) ---------------------------------------------------------------------------------------


def ndif_generate(
    lm: LoadedModel,
    token_lists: list[list[int]],
    max_new: int,
    do_sample: bool,
    temperature: float,
    batch_size: int,
) -> list[list[int]]:
    """Hugging Face ``generate`` on NDIF, one request per left-padded batch. Sampling there uses the server's
    random state: reproducible per prompt only when greedy."""
    from afprobe.models._remote import remote_generate

    stops = stop_token_ids(lm.tokenizer)
    pad = int(lm.tokenizer.pad_token_id)
    order = _by_length(token_lists)
    out: list[list[int]] = [[] for _ in token_lists]
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        ids, mask, _ = left_pad([token_lists[i] for i in idx], pad)
        kwargs: dict[str, Any] = {"do_sample": do_sample, "eos_token_id": sorted(stops), "pad_token_id": pad}
        if do_sample:
            kwargs["temperature"] = temperature
        full = remote_generate(lm, ids, mask, max_new, **kwargs)
        for i, row in zip(idx, full[:, ids.shape[1] :].tolist(), strict=True):
            out[i] = _cut_at_stop(row, stops)
    return out


# ---- vLLM ----------------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # an ImportError, or a broken install raising anything on import
        return False
    return True


def _use_vllm(lm: LoadedModel, engine: Engine, edits: Sequence[ResidualEdit]) -> bool:
    if engine == "hf":
        return False
    loadable = lm.source in ("Hugging Face hub", "local directory") and not lm.config.remote
    if engine == "vllm":
        if edits:
            raise AfprobeError("vLLM cannot edit the residual stream: use engine='hf' for steered generation")
        if not vllm_available():
            raise AfprobeError("engine='vllm' asked for, but vllm is not installed (pip install vllm)")
        if not loadable:
            raise AfprobeError(f"vLLM loads models from the hub or a local directory, not {lm.source}")
        return True
    return not edits and loadable and torch.cuda.is_available() and vllm_available()


_ENGINES: dict[tuple[str, str | None], Any] = {}


def vllm_generate(
    lm: LoadedModel,
    token_lists: list[list[int]],
    max_new: int,
    do_sample: bool,
    temperature: float,
    seed: int,
    engine_kwargs: dict[str, Any],
) -> list[list[int]]:
    """Generate with vLLM (the engine is built once per model and kept); the same stop tokens and seeding rule."""
    from vllm import LLM, SamplingParams

    adapter = lm.config.adapter
    key = (lm.model_id, adapter)
    if key not in _ENGINES:
        kwargs: dict[str, Any] = {
            "model": lm.model_id,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "seed": seed,
            "enable_lora": adapter is not None,
            **engine_kwargs,
        }
        if lm.config.revision:
            kwargs.setdefault("revision", lm.config.revision)
        _ENGINES[key] = LLM(**kwargs)
    llm = _ENGINES[key]
    stops = sorted(stop_token_ids(lm.tokenizer))
    params = [
        SamplingParams(
            max_tokens=max_new,
            temperature=temperature if do_sample else 0.0,
            seed=seed * 1_000_003 + i,
            stop_token_ids=stops,
        )
        for i in range(len(token_lists))
    ]
    request: dict[str, Any] = {}
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        request["lora_request"] = LoRARequest("adapter", 1, adapter)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in token_lists], params, use_tqdm=False, **request)
    stop_set = set(stops)
    return [_cut_at_stop([int(t) for t in o.outputs[0].token_ids], stop_set) for o in outs]


# ---- compliance over many samples ------------------------------------------------------------------------------


def classify_responses(responses: Sequence[str], classifier: Any = "prefix") -> list[str]:
    """``accepted`` / ``rejected`` / ``unclear`` for each response, by the compliance classifier (the same
    registry as the causal tests: ``afprobe.experiments.get_classifier``)."""
    from afprobe.experiments._compliance import get_classifier

    clf = get_classifier(classifier)
    return [clf(r) for r in responses]


def sampled_compliance(
    lm: LoadedModel,
    toks: Sequence[TokenizedPrompt],
    *,
    samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    classifier: Any = "prefix",
    engine: Engine = "auto",
) -> dict[str, dict[str, float]]:
    """Per tier, the share of ``accepted`` / ``rejected`` / ``unclear`` over ``samples`` sampled responses to
    every prompt (greedy when ``samples == 1``)."""
    reps = [t for t in toks for _ in range(samples)]
    texts = generate_batched(
        lm,
        reps,
        max_new_tokens,
        do_sample=samples > 1,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        engine=engine,
    )
    verdicts = classify_responses(texts, classifier)
    rates: dict[str, dict[str, float]] = {}
    for tier in sorted({t.prompt.tier for t in toks}):
        got = [v for t, v in zip(reps, verdicts, strict=True) if t.prompt.tier == tier]
        rates[tier] = {k: got.count(k) / len(got) for k in ("accepted", "rejected", "unclear")}
    return rates
