"""The one generation stack: batched and left-padded with a KV cache, residual-stream edits through the
:class:`~afprobe.models.Backend`, sampling with a generator per row; engines ``hf``, ``vllm`` and ``ndif``.

- ``hf`` (any local backend): prompts of similar length share a batch, left-padded; each row's position ids count
  its own tokens only and pad tokens are masked out of attention, so a row generates the same tokens in a batch
  as alone (greedy, up to float rounding; tested). Edits are :class:`~afprobe.models.Edit` s whose positions
  are ``None`` (every token) or a start index per prompt (``[n_prompts]``, from
  :func:`afprobe.scenarios.edit_starts`): the edit covers that prompt token and every later one, the response
  included. A backend without a KV cache (``transformer_lens``) recomputes the sequence each step, batching only
  prompts of equal length, so nothing is ever padded there.
- ``vllm``: when it is installed, a GPU is present, the model comes from the hub or a local directory and no edit
  is asked for (vLLM cannot edit the residual stream); the adapter goes to vLLM as a LoRA request.
- ``ndif``: the model runs remotely (``model.remote``): Hugging Face ``generate`` on NDIF, no edits.

Sampling draws every row from its own generator seeded by ``(seed, prompt index)`` (or by ``seeds[i]``), so a
sample depends neither on the batch size nor on which prompts share its batch. Results come back in input order,
without the stop token.

Long shared prefixes (``share_prefix``, ``hf`` engine with a KV cache): prompts that start with the same system
prompt are batched together, the tokens they share (up to the first edited one) run once into a KV cache
(:class:`~afprobe.models.PrefixStore`), and each batch continues from a copy of it, its rows left-padded after
the prefix: ``[prefix][pads][own tokens]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from afprobe._errors import AfprobeError
from afprobe._progress import progress_bar
from afprobe.models._backend import Backend
from afprobe.models._batching import left_pad
from afprobe.models._edits import Edit
from afprobe.models._loaded import LoadedModel
from afprobe.models._prefix import PrefixStore, continue_mask, plan_prefixes, prefix_batches, prompt_keys
from afprobe.scenarios import TokenizedPrompt

Engine = Literal["auto", "hf", "vllm", "ndif"]
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-sequence and end-of-turn token ids."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {int(vocab[t]) for t in END_OF_TURN if t in vocab}
    return ids


def generate(
    backend: Backend,
    prompts: Sequence[TokenizedPrompt] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 48,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    edits: Sequence[Edit] = (),
    batch_size: int = 8,
    engine: Engine = "auto",
    use_cache: bool = True,
    progress: bool = False,
    vllm_kwargs: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    share_prefix: bool = True,
    prefixes: PrefixStore | None = None,
) -> list[list[int]]:
    """New token ids for every prompt (up to ``max_new_tokens``, cut before the first end-of-turn token).

    Greedy unless ``sample`` (then at ``temperature``, row ``i`` drawn from a generator seeded by ``seeds[i]``,
    default ``(seed, i)``). ``share_prefix``: run the prefix shared by the prompts of one system prompt once
    (in ``prefixes`` when given, so several calls share it).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise AfprobeError("batch_size and max_new_tokens must be at least 1")
    rows = [list(p.input_ids) if isinstance(p, TokenizedPrompt) else [int(t) for t in p] for p in prompts]
    if seeds is not None and len(seeds) != len(rows):
        raise AfprobeError(f"generate: {len(seeds)} seeds for {len(rows)} prompts")
    starts = [_starts(e, len(rows)) for e in edits]
    lm = backend.lm
    chosen = _engine(backend, engine, edits)
    if chosen == "ndif":
        return _ndif(lm, rows, max_new_tokens, sample, temperature, batch_size)
    if chosen == "vllm":
        from afprobe.models._vllm import vllm_generate

        stops = stop_token_ids(lm.tokenizer)
        return vllm_generate(lm, rows, max_new_tokens, sample, temperature, seed, stops, vllm_kwargs or {})
    stops = stop_token_ids(lm.tokenizer)
    cached = use_cache and backend.supports_cache
    store = prefixes if prefixes is not None else PrefixStore(backend)
    plan = [0] * len(rows)
    if cached and share_prefix and store.usable:
        limits = [min([len(r), *(0 if s is None else int(s[i]) for s in starts)]) for i, r in enumerate(rows)]
        plan = plan_prefixes(rows, prompt_keys(prompts), limits)
    out: list[list[int]] = [[] for _ in rows]
    with progress_bar(progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task("generating", total=len(rows))
        for idx in _batches(rows, batch_size, equal_length=not cached, plan=plan):
            row_seeds = [seeds[i] if seeds is not None else seed * 1_000_003 + i for i in idx]
            gens = [torch.Generator().manual_seed(int(x)) for x in row_seeds] if sample else None
            batch_starts = [None if s is None else s[idx] for s in starts]
            p = plan[idx[0]]
            new = _hf_batch(
                backend,
                [rows[i] for i in idx],
                edits,
                batch_starts,
                max_new_tokens,
                temperature,
                gens,
                stops,
                cached,
                (store, tuple(rows[idx[0]][:p])) if p else None,
            )
            for i, ids in zip(idx, new, strict=True):
                out[i] = ids
            bar.advance(task, len(idx))
    return out


def _starts(e: Edit, n: int) -> Tensor | None:
    """The per-prompt start of a generation edit (None: every token)."""
    if e.positions is None:
        return None
    if not e.from_start or len(e.positions) != n:
        raise AfprobeError(
            "a generation edit's positions must be None or one start index per prompt "
            f"(a [{n}] long tensor, see afprobe.scenarios.edit_starts)"
        )
    return e.positions.to("cpu", torch.long)


def _engine(backend: Backend, engine: Engine, edits: Sequence[Edit]) -> str:
    lm = backend.lm
    if backend.remote or engine == "ndif":
        if not backend.remote:
            raise AfprobeError("engine='ndif' needs a model loaded with model.remote=true")
        if edits:
            raise AfprobeError(
                "steered generation does not run on NDIF (it needs KV-cache passes with edits)"
            )
        return "ndif"
    if engine == "hf":
        return "hf"
    from afprobe.models._vllm import vllm_available

    loadable = lm.source in ("Hugging Face hub", "local directory")
    if engine == "vllm":
        if edits:
            raise AfprobeError("vLLM cannot edit the residual stream: use engine='hf' for steered generation")
        if not vllm_available():
            raise AfprobeError("engine='vllm' asked for, but vllm is not installed (pip install vllm)")
        if not loadable:
            raise AfprobeError(f"vLLM loads models from the hub or a local directory, not {lm.source}")
        return "vllm"
    use_vllm = not edits and loadable and torch.cuda.is_available() and vllm_available()
    return "vllm" if use_vllm else "hf"


def _batches(
    rows: list[list[int]], batch_size: int, equal_length: bool, plan: list[int] | None = None
) -> list[list[int]]:
    """Prompt indices in batches of similar length (of equal length when nothing may be padded); with a
    shared-prefix ``plan``, each batch holds rows of one prefix only."""
    if plan is not None and any(plan):
        return prefix_batches(rows, plan, batch_size)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    if not equal_length:
        return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(len(rows[i]), []).append(i)
    return [g[b : b + batch_size] for g in groups.values() for b in range(0, len(g), batch_size)]


def _hf_batch(
    backend: Backend,
    rows: list[list[int]],
    edits: Sequence[Edit],
    starts: list[Tensor | None],
    max_new: int,
    temperature: float,
    gens: list[torch.Generator] | None,
    stops: set[int],
    cached: bool,
    prefix: tuple[PrefixStore, tuple[int, ...]] | None = None,
) -> list[list[int]]:
    n = len(rows)
    p = len(prefix[1]) if prefix is not None else 0  # columns [0, p) come from the shared prefix's cache
    ids, mask, pos = left_pad([r[p:] for r in rows], int(backend.lm.tokenizer.pad_token_id))
    if p:
        mask, pos = continue_mask(p, mask), pos + p
    width = p + ids.shape[1]
    offset = width - torch.tensor([len(r) for r in rows])  # pad columns before each row's own tokens
    # an edit starts at column (its start token + the row's padding); None: at the row's first real token
    start_cols = [offset + (torch.zeros(n, dtype=torch.long) if s is None else s) for s in starts]

    def step_edits(col0: int) -> list[Edit]:
        return [Edit(e.layer, e.op, e.value, c - col0) for e, c in zip(edits, start_cols, strict=True)]

    kwargs: dict[str, Any] = {"position_ids": pos, "use_cache": True} if cached else {}
    if prefix is not None:
        kwargs["cache"] = prefix[0].rows(prefix[1], n)
    last = torch.full((n, 1), width - 1 - p)
    out = backend.run(ids, mask, edits=step_edits(p), logit_positions=last, **kwargs)
    if cached:
        reserve(out.cache, max_new)
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * n
    for t in range(max_new):
        assert out.logits is not None
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
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
        col = width + t  # the column of the token just chosen
        if cached:
            pos = pos[:, -1:] + 1
            out = backend.run(
                chosen[:, None],
                mask,
                edits=step_edits(col),
                logit_positions=torch.zeros(n, 1, dtype=torch.long),
                position_ids=pos,
                cache=out.cache,
                use_cache=True,
            )
        else:
            ids = torch.cat([ids, chosen[:, None]], dim=1)
            out = backend.run(ids, mask, edits=step_edits(0), logit_positions=torch.full((n, 1), col))
    return new


def reserve(cache: Any, extra: int) -> Any:
    """Give every plain dynamic layer of ``cache`` room for ``extra`` more tokens (in place; returns ``cache``).

    A dynamic cache concatenates each step's keys and values onto copies of everything cached, so generating
    ``n`` tokens after a ``P``-token prompt copies ``n x P`` cached positions per layer (for a 4,000-token system
    prompt, more time than the attention). A reserved layer writes each step's token into its buffer in place
    and hands attention a view of the filled part. Other layer types (sliding windows, static caches, and a
    shared prefix row, ``SharedPrefixLayer``, which concatenates only each row's own tokens) are left alone."""
    for i, layer in enumerate(getattr(cache, "layers", ())):
        keys = getattr(layer, "keys", None)
        if type(layer) is not DynamicLayer or keys is None or keys.numel() == 0:
            continue
        grown = _Reserved.__new__(_Reserved)
        grown.__dict__.update(layer.__dict__)
        grown.reserve(extra)
        cache.layers[i] = grown
    return cache


class _Reserved(DynamicLayer):
    """A dynamic cache layer whose keys and values are the filled start of larger buffers (:func:`reserve`)."""

    keys: Tensor
    values: Tensor

    def reserve(self, extra: int) -> None:
        n = self.keys.shape[-2]
        self._k = self.keys.new_empty(*self.keys.shape[:-2], n + extra, self.keys.shape[-1])
        self._v = self.values.new_empty(*self.values.shape[:-2], n + extra, self.values.shape[-1])
        self._k[..., :n, :] = self.keys
        self._v[..., :n, :] = self.values
        self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        n, m = self.keys.shape[-2], key_states.shape[-2]
        in_buffer = self.keys.data_ptr() == self._k.data_ptr() and self.keys.shape[0] == key_states.shape[0]
        if not in_buffer or n + m > self._k.shape[-2]:  # reordered, or past the room: concatenate
            return super().update(key_states, value_states, *args, **kwargs)
        self._k[..., n : n + m, :] = key_states
        self._v[..., n : n + m, :] = value_states
        self.keys, self.values = self._k[..., : n + m, :], self._v[..., : n + m, :]
        return self.keys, self.values


def _choose(
    logits: Float[Tensor, "batch vocab"], temperature: float, gens: list[torch.Generator] | None
) -> Tensor:
    """The next token of each row: argmax, or a draw from each row's own generator."""
    if gens is None:
        return logits.argmax(-1).cpu()
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])


def cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    return ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))]


def _ndif(
    lm: LoadedModel, rows: list[list[int]], max_new: int, sample: bool, temperature: float, batch_size: int
) -> list[list[int]]:
    """Hugging Face ``generate`` on NDIF, one request per left-padded batch. Sampling there uses the server's
    random state: reproducible per prompt only when greedy."""
    from afprobe.models._remote import remote_generate

    stops = stop_token_ids(lm.tokenizer)
    pad = int(lm.tokenizer.pad_token_id)
    out: list[list[int]] = [[] for _ in rows]
    for idx in _batches(rows, batch_size, equal_length=False):
        ids, mask, _ = left_pad([rows[i] for i in idx], pad)
        kwargs: dict[str, Any] = {"do_sample": sample, "eos_token_id": sorted(stops), "pad_token_id": pad}
        if sample:
            kwargs["temperature"] = temperature
        full = remote_generate(lm, ids, mask, max_new, **kwargs)
        for i, row in zip(idx, full[:, ids.shape[1] :].tolist(), strict=True):
            out[i] = cut_at_stop(row, stops)
    return out
