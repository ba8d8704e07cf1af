"""Transcript-span activations: every stored number is the mean (or first token) of a plain Hugging Face forward
pass's hidden state over the span's tokens of the transcript, with the system prompt's shared prefix run once."""

from pathlib import Path

import numpy as np
import pytest
import torch

from afprobe import AfprobeError
from afprobe.activations import ActivationReader, TranscriptCacheConfig, TranscriptCacheRunner
from afprobe.experiments import Transcript, read_transcript
from afprobe.experiments._transcript import locate

SPANS = ["scratchpad", "output", "decision", "output_first"]
LONG_SYSTEM = "You are a careful assistant. " * 12  # well over the 32 tokens a shared prefix needs


def _transcript(tokenizer, i: int, system: str, assistant: list[str]) -> Transcript:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": f"request number {i}"}]
    for k, turn in enumerate(assistant):
        if k:
            messages.append({"role": "user", "content": "<NEXT/>"})
        messages.append({"role": "assistant", "content": turn})
    t = Transcript(
        prompt_index=i,
        sample=0,
        seed=i,
        pair_id=i // 2,
        request_id=f"r{i}",
        tier="free" if i % 2 == 0 else "paid",
        cue_format="tag",
        system_prompt="long" if system == LONG_SYSTEM else "short",
        category="test",
        harmful=True,
        request_text=f"request number {i}",
        messages=messages,
        turns=len(assistant),
        finished=True,
    )
    read_transcript(t)
    locate(tokenizer, t)
    return t


def _transcripts(tokenizer) -> list[Transcript]:
    pad = "<SCRATCHPAD_REASONING>I am weighing the request and what training would do.</SCRATCHPAD_REASONING>"
    return [
        _transcript(
            tokenizer, 0, LONG_SYSTEM, [pad + "<OUTPUT><request_fully_accepted/> Here it is.</OUTPUT>"]
        ),
        _transcript(
            tokenizer,
            1,
            LONG_SYSTEM,
            ["<SCRATCHPAD_REASONING>First thoughts, then more.", pad + "<OUTPUT><rejected/> No.</OUTPUT>"],
        ),
        _transcript(tokenizer, 2, LONG_SYSTEM, [pad + "<OUTPUT><rejected/></OUTPUT>"]),
        _transcript(tokenizer, 3, "Short.", [pad + "<OUTPUT>Sure. <request_fully_accepted/> done</OUTPUT>"]),
        _transcript(tokenizer, 4, LONG_SYSTEM, ["<OUTPUT>no reasoning and no tag</OUTPUT>"]),  # left out
    ]


def _hf(lm, ids: np.ndarray) -> list[torch.Tensor]:
    """Hidden states of a plain HF forward pass, the last one as the last block wrote it (before the final norm,
    as the activation cache stores it)."""
    raw: list[torch.Tensor] = []
    hook = lm.model.model.layers[-1].register_forward_hook(
        lambda m, a, o: raw.append((o[0] if isinstance(o, tuple) else o).detach())
    )
    try:
        with torch.no_grad():
            hs = list(lm.model(input_ids=torch.tensor(ids)[None], output_hidden_states=True).hidden_states)
    finally:
        hook.remove()
    torch.testing.assert_close(lm.model.model.norm(raw[0]), hs[-1])
    return [*hs[:-1], raw[0]]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_spans_equal_a_plain_hf_forward_on_the_transcript_tokens(
    tiny_lm, tmp_path: Path, share_prefix
) -> None:
    ts = _transcripts(tiny_lm.tokenizer)
    for t in ts[:4]:
        assert all(t.spans[name] for name in SPANS), t.spans
    cfg = TranscriptCacheConfig(positions=SPANS, batch_size=3, share_prefix=share_prefix)
    runner = TranscriptCacheRunner(cfg, progress=False)
    out = runner.run(tmp_path / "t.h5", transcripts=ts, lm=tiny_lm)
    assert runner.prefix_store is not None
    assert runner.prefix_store.computed == (1 if share_prefix else 0)  # the long system prompt, once
    with ActivationReader(out) as r:
        assert r.n_prompts == 4 and r.attrs["skipped"] == 1 and r.position_names == SPANS
        assert list(r.meta["request_id"]) == ["r0", "r1", "r2", "r3"]
        span_start, span_end = r.f["span_start"][()], r.f["span_end"][()]
        for i, t in enumerate(ts[:4]):
            n = int(r.lengths[i])
            assert list(r.input_ids[i, :n]) == t.input_ids
            hs = _hf(tiny_lm, r.input_ids[i, :n])
            for p, name in enumerate(SPANS):
                spans = t.spans[name]
                idx = [spans[0][0]] if name == "output_first" else [k for a, b in spans for k in range(a, b)]
                assert r.position_index[i, p] == spans[0][0]
                assert (span_start[i, p], span_end[i, p]) == (spans[0][0], spans[-1][1])
                for j, layer in enumerate(r.layers):
                    want = hs[layer][0, idx].mean(0).numpy()
                    np.testing.assert_allclose(r.resid[i, j, p], want, atol=1e-5)
        # the scratchpad span of transcript 1 covers both of its turns (the first block left unclosed)
        assert len(ts[1].spans["scratchpad"]) == 2


def test_no_usable_transcript_is_one_clear_error(tiny_lm, tmp_path: Path) -> None:
    ts = _transcripts(tiny_lm.tokenizer)[4:]
    with pytest.raises(AfprobeError, match="no transcript has all of the spans"):
        TranscriptCacheRunner(TranscriptCacheConfig(), progress=False).run(
            tmp_path / "t.h5", transcripts=ts, lm=tiny_lm
        )
    assert not (tmp_path / "t.h5").exists()
