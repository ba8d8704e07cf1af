"""Generation with optional steering, with or without a KV cache, giving the same tokens either way.

Every row of a batch advances by one absolute token position per step: a row still inside its prompt is fed its
next prompt token, a row past it its newly chosen token. No row is ever padded, so positions (and therefore the
positions an edit applies to) are the same whether the past comes from a KV cache or is recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from afprobe._progress import progress_bar
from afprobe.experiments._scoring import PositionMode
from afprobe.models import Backend, Edit
from afprobe.scenarios import TokenizedPrompt


@dataclass(frozen=True)
class GenerationEdit:
    """An ``add`` (vector) or ``ablate`` (direction) edit at ``layer``, on every token from ``start`` on: ``all``
    tokens, ``from_cue``, or ``generated`` (the last prompt token, where the response starts, and every new one)."""

    layer: int
    op: Literal["add", "ablate"]
    vector: Tensor
    start: PositionMode = "all"


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-sequence and end-of-turn token ids."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {int(vocab[t]) for t in END_OF_TURN if t in vocab}
    return ids


def _start_col(tok: TokenizedPrompt, start: PositionMode) -> int:
    if start == "all":
        return 0
    if start == "from_cue":
        return tok.positions["cue"]
    return len(tok.input_ids) - 1


def _edits_for(edits: Sequence[GenerationEdit], starts: Tensor, col0: int, col1: int) -> list[Edit]:
    """Edits for a pass over absolute columns ``[col0, col1)``; ``starts`` is ``[n_edits, B]``."""
    cols = torch.arange(col0, col1)[None, :]
    return [Edit(e.layer, e.op, e.vector, cols >= starts[i][:, None]) for i, e in enumerate(edits)]


def generate(
    backend: Backend,
    toks: Sequence[TokenizedPrompt],
    *,
    max_new_tokens: int = 48,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    edits: Sequence[GenerationEdit] = (),
    use_cache: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[int]]:
    """New token ids for every prompt (up to ``max_new_tokens``, cut before the first end-of-turn token).

    Greedy unless ``sample`` (then seeded by ``seed``, at ``temperature``)."""
    tokenizer = backend.lm.tokenizer
    stops = stop_token_ids(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    results: list[list[int]] = [[] for _ in toks]
    # batches of similar length: every row walks from the batch's shortest prompt, one token per step
    order = sorted(range(len(toks)), key=lambda i: (len(toks[i].input_ids), i))
    with progress_bar(progress, transient=True) as bar, torch.inference_mode():
        task = bar.add_task("generating", total=len(toks))
        for b0 in range(0, len(toks), batch_size):
            chosen = order[b0 : b0 + batch_size]
            batch = [toks[i] for i in chosen]
            new = _generate_batch(
                backend, batch, max_new_tokens, sample, temperature, gen, edits, use_cache, stops
            )
            for i, ids in zip(chosen, new, strict=True):
                results[i] = ids
            bar.advance(task, len(batch))
    return results


def _generate_batch(
    backend: Backend,
    batch: list[TokenizedPrompt],
    max_new: int,
    sample: bool,
    temperature: float,
    gen: torch.Generator,
    edits: Sequence[GenerationEdit],
    use_cache: bool,
    stops: set[int],
) -> list[list[int]]:
    n = len(batch)
    lens = torch.tensor([len(t.input_ids) for t in batch])
    width = int(lens.max()) + max_new
    seq = torch.zeros((n, width), dtype=torch.long)
    for i, tp in enumerate(batch):
        seq[i, : len(tp.input_ids)] = torch.tensor(tp.input_ids)
    starts = torch.tensor([[_start_col(tp, e.start) for tp in batch] for e in edits], dtype=torch.long)
    m = int(lens.min())
    out = backend.run(
        seq[:, :m],
        torch.ones(n, m, dtype=torch.long),
        edits=_edits_for(edits, starts, 0, m),
        logit_positions=torch.full((n, 1), m - 1),
        use_cache=use_cache,
    )
    cache = out.cache
    assert out.logits is not None
    logits = out.logits[:, -1]
    new: list[list[int]] = [[] for _ in batch]
    done = [False] * n
    t = m
    while True:
        chosen = _choose(logits, sample, temperature, gen)
        for i in range(n):
            if t >= int(lens[i]):
                seq[i, t] = chosen[i]
                if not done[i]:
                    if int(chosen[i]) in stops:
                        done[i] = True
                    else:
                        new[i].append(int(chosen[i]))
        if all(done[i] or t >= int(lens[i]) + max_new - 1 for i in range(n)):
            return new
        if use_cache:
            out = backend.run(
                seq[:, t : t + 1],
                torch.ones(n, t + 1, dtype=torch.long),
                edits=_edits_for(edits, starts, t, t + 1),
                logit_positions=torch.zeros(n, 1, dtype=torch.long),
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
        else:
            out = backend.run(
                seq[:, : t + 1],
                torch.ones(n, t + 1, dtype=torch.long),
                edits=_edits_for(edits, starts, 0, t + 1),
                logit_positions=torch.full((n, 1), t),
            )
        assert out.logits is not None
        logits = out.logits[:, -1]
        t += 1


def _choose(logits: Tensor, sample: bool, temperature: float, gen: torch.Generator) -> Tensor:
    if not sample:
        return logits.argmax(-1).cpu()
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
