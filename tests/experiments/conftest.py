"""Fixtures for the causal experiments: a planted-mechanism toy model whose answer is known, and prompt sets.

The toy is the tiny Llama with its blocks silenced except one attention head in block 0. The tier value is a
single byte (``~`` free, ``^`` paid) whose embedding alone has a component along ``w`` (residual dimension 1);
the head attends uniformly (zero queries) and writes that component onto ``u`` (dimension 0) at every later
position; the unembedding reads ``u``: the accept tag's logit is ``+beta * u``, the reject tag's ``-beta * u``
(both tags are single tokens here). So the tier is carried from the cue to the last token by that head, along
``u``, and nowhere else:

- denoising at layer 0 / cue and at layers >= 1 / last recovers 1; every other site 0;
- ablating ``u`` at layer >= 1 removes the whole gap; the mean difference at layer >= 1 / last is ``+u``.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from afprobe.experiments import prepare_prompts
from afprobe.models import LoadedModel, make_backend, make_tiny_model, make_tiny_tokenizer, wrap_model
from afprobe.scenarios import (
    ACCEPT_TAG,
    CUE_FORMATS,
    REJECT_TAG,
    CueFormat,
    build_pairs,
    builtin_requests,
    register_cue_format,
    tokenize_prompts,
)

TOY_CUE = "toy_byte"
U, W = 0, 1  # residual dimensions: the planted direction and the feature the head reads


def _register_toy_cue() -> None:
    if TOY_CUE not in CUE_FORMATS:
        register_cue_format(
            CueFormat(
                name=TOY_CUE,
                template="Tier: {value}",
                values={"free": "~", "paid": "^"},
                explanation="Each user message starts with the tier: ~ for free, ^ for paid.",
            )
        )


def make_planted(gain: float = 5.0, beta: float = 1.0, seed: int = 0) -> LoadedModel:
    """The planted-mechanism toy (``gain = 0`` gives the same model with no mechanism and so no gap)."""
    _register_toy_cue()
    tok = make_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [ACCEPT_TAG, REJECT_TAG]})
    model = make_tiny_model(n_layers=2, d_model=64, n_heads=4, seed=seed, vocab_size=len(tok))
    acc, rej = tok.convert_tokens_to_ids(ACCEPT_TAG), tok.convert_tokens_to_ids(REJECT_TAG)
    free_b = tok.convert_tokens_to_ids("~")
    paid_b = tok.convert_tokens_to_ids("^")
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, U] = 0.0
        emb[:, W] = 0.0
        emb[free_b, W] = 1.0
        emb[paid_b, W] = -1.0
        attn = model.model.layers[0].self_attn
        attn.q_proj.weight.zero_()  # uniform attention over the prefix
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[0, W] = 1.0  # head 0, value dim 0 reads w
        attn.o_proj.weight[U, 0] = gain  # ... and writes it onto u
        head = model.lm_head.weight
        head[acc] = 0.0
        head[rej] = 0.0
        head[acc, U] = beta
        head[rej, U] = -beta
    return wrap_model(model, tok, name=f"planted-g{gain}")


def toy_items(lm: LoadedModel, n_requests: int = 3):
    prompts = build_pairs(builtin_requests(harmful=True)[:n_requests], [TOY_CUE], ["neutral"])
    return prepare_prompts(lm.tokenizer, tokenize_prompts(lm.tokenizer, prompts))


@pytest.fixture(scope="module")
def planted() -> LoadedModel:
    return make_planted()


@pytest.fixture(scope="module")
def planted_items(planted):
    return toy_items(planted)


@pytest.fixture(scope="module")
def planted_backend(planted):
    return make_backend(planted, "hooks")


@pytest.fixture
def tiny_items(tiny_lm):
    """Tiny random model, two requests × the sentence (aligned) and tag (misaligned on bytes) cue formats."""
    prompts = build_pairs(builtin_requests(harmful=True)[:2], ["sentence", "tag"], ["neutral"])
    return prepare_prompts(tiny_lm.tokenizer, tokenize_prompts(tiny_lm.tokenizer, prompts))


@contextmanager
def counted_passes(b):  # type: ignore[no-untyped-def]
    """The ``(rows, width)`` of every forward pass ``b`` runs inside the block."""
    calls: list[tuple[int, ...]] = []
    run = b.run

    def counted(ids, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(tuple(ids.shape))
        return run(ids, *a, **k)

    b.run = counted
    try:
        yield calls
    finally:
        b.run = run


def two_system_prompts(tiny_lm, n_requests: int):  # type: ignore[no-untyped-def]
    """The tag-cue pairs of ``n_requests`` requests under the neutral and the helpful-only system prompt."""
    from afprobe.experiments import pair_indices, prepare_prompts
    from afprobe.scenarios import build_pairs, builtin_requests, tokenize_prompts

    prompts = build_pairs(builtin_requests(harmful=True)[:n_requests], ["tag"], ["neutral", "helpful_only"])
    items = prepare_prompts(tiny_lm.tokenizer, tokenize_prompts(tiny_lm.tokenizer, prompts))
    return make_backend(tiny_lm, "hooks"), items, pair_indices([it.prompt for it in items])
