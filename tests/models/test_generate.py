"""The one generation stack: left padding done right (a row generates the same tokens in a batch as alone, also
for a model with absolute positions), the same tokens with and without the KV cache, edits placed per prompt
from the one edit-start rule, per-prompt seeded sampling, greedy equal to Hugging Face's, and the vLLM engine
(through a stand-in ``vllm`` module)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from afprobe import AfprobeError
from afprobe.models import (
    Edit,
    ModelConfig,
    generate,
    left_pad,
    load_model,
    make_backend,
    make_tiny_tokenizer,
    stop_token_ids,
    wrap_model,
)
from afprobe.models import _vllm as vllm_engine
from afprobe.scenarios import ScenarioConfig, build_scenario, edit_starts, tokenize_prompts


@pytest.fixture
def rows() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 250, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 12)]


@pytest.fixture
def toks(tiny_lm):
    """Prompts of different lengths (two cue formats, two system prompts)."""
    cfg = ScenarioConfig(limit=1, system_prompts=["neutral", "helpful_only"], cue_formats=["tag", "json"])
    return tokenize_prompts(tiny_lm.tokenizer, build_scenario(cfg))


@pytest.fixture
def tiny_gpt2():
    """Absolute position embeddings: wrong position ids under left padding change its tokens (RoPE would hide
    a constant shift)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=259, n_positions=256, n_embd=64, n_layer=2, n_head=4, eos_token_id=2)
    with torch.no_grad():
        model = GPT2LMHeadModel(cfg)
        model.transformer.wpe.weight.mul_(50)  # make positions matter a lot
    return wrap_model(model, make_tiny_tokenizer(), name="tiny-gpt2")


def test_left_pad_positions_and_mask() -> None:
    ids, mask, pos = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos[:, -1].tolist() == [2, 0] and pos[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("model", ["tiny_lm", "tiny_gpt2"])
@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_batched_greedy_equals_one_at_a_time(model, backend, rows, request) -> None:
    b = make_backend(request.getfixturevalue(model), backend)
    batched = generate(b, rows, max_new_tokens=12, batch_size=5)
    assert batched == generate(b, rows, max_new_tokens=12, batch_size=1)
    assert all(len(x) > 0 for x in batched)


def test_greedy_equals_hugging_face_generate(tiny_lm, rows) -> None:
    got = generate(make_backend(tiny_lm, "hooks"), rows[:2], max_new_tokens=10, batch_size=2)
    stops = stop_token_ids(tiny_lm.tokenizer)
    for r, g in zip(rows[:2], got, strict=True):
        ref = tiny_lm.model.generate(
            torch.tensor([r]), max_new_tokens=10, do_sample=False, eos_token_id=sorted(stops), pad_token_id=0
        )[0, len(r) :].tolist()
        assert g == ref[: next((i for i, t in enumerate(ref) if t in stops), len(ref))]


@pytest.mark.parametrize("backend", ["hooks", "nnsight", "transformer_lens"])
@pytest.mark.parametrize("start", ["all", "from_cue", "generated"])
def test_steered_generation_is_batch_and_cache_independent(tiny_lm, toks, backend, start) -> None:
    b = make_backend(tiny_lm, backend)
    v = torch.randn(tiny_lm.d_model, generator=torch.Generator().manual_seed(0))
    starts = torch.tensor(edit_starts(toks, start))
    edits = [Edit(2, "add", 5 * v, starts), Edit(1, "ablate", v, starts)]
    kw: dict[str, Any] = {"max_new_tokens": 8, "edits": edits}
    batched = generate(b, toks, batch_size=4, **kw)
    assert batched == generate(b, toks, batch_size=1, **kw)
    assert batched == generate(b, toks, batch_size=4, use_cache=False, **kw)
    assert batched != generate(b, toks, max_new_tokens=8, batch_size=4)  # the steering is applied


def test_an_edit_from_the_last_prompt_token_changes_only_the_response(tiny_lm, toks) -> None:
    """Steering that starts at the response must not touch what the prompt tokens see: an edit on the generated
    tokens only (after the first one) leaves the first generated token unchanged."""
    b = make_backend(tiny_lm, "hooks")
    v = torch.randn(tiny_lm.d_model, generator=torch.Generator().manual_seed(1))
    after = torch.tensor([len(t.input_ids) for t in toks])  # first generated token on
    plain = generate(b, toks, max_new_tokens=6, batch_size=4)
    steered = generate(b, toks, max_new_tokens=6, batch_size=4, edits=[Edit(1, "add", 50 * v, after)])
    assert [s[0] for s in steered] == [p[0] for p in plain] and steered != plain


def test_generation_edits_need_one_start_per_prompt(tiny_lm, rows) -> None:
    b = make_backend(tiny_lm, "hooks")
    with pytest.raises(AfprobeError, match="one start index per prompt"):
        generate(b, rows, max_new_tokens=2, edits=[Edit(1, "add", torch.ones(64), torch.zeros(2, 1).long())])


def test_sampling_is_per_prompt_seeded(tiny_lm, rows) -> None:
    b = make_backend(tiny_lm, "hooks")
    kw: dict[str, Any] = {"max_new_tokens": 10, "sample": True, "temperature": 1.0}
    a = generate(b, rows, batch_size=5, seed=3, **kw)
    assert a == generate(b, rows, batch_size=2, seed=3, **kw)  # batch-size free
    assert a == generate(b, rows, batch_size=5, seed=3, use_cache=False, **kw)
    assert a != generate(b, rows, batch_size=5, seed=4, **kw)


# ---- vLLM, through a stand-in module ---------------------------------------------------------------------


class _FakeLLM:
    made: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reply: Any = None

    def __init__(self, **kwargs: Any):
        _FakeLLM.made.append(kwargs)

    def generate(self, prompts: list[dict], params: list, use_tqdm: bool = True, **kw: Any) -> list:
        _FakeLLM.calls.append({"prompts": prompts, "params": params, **kw})
        out = []
        for i, p in enumerate(prompts):
            ids = _FakeLLM.reply(i, p["prompt_token_ids"])
            out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
        return out


class _Params:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = _Params  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, i, path: ("lora", name, i, path)  # type: ignore[attr-defined]
    for name, mod in {
        "vllm": vllm,
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.request": lora,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(vllm_engine, "_ENGINES", {})
    _FakeLLM.made, _FakeLLM.calls = [], []
    return _FakeLLM


def test_vllm_gets_token_ids_greedy_params_and_the_adapter(
    tiny_model_dir: Path, tiny_adapter: Path, fake_vllm, rows
) -> None:
    lm = load_model(
        ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32", adapter=str(tiny_adapter))
    )
    b = make_backend(lm, "hooks")
    stops = sorted(stop_token_ids(lm.tokenizer))
    fake_vllm.reply = lambda i, ids: [100 + i, 101, stops[0]]
    got = generate(b, rows[:3], max_new_tokens=7, engine="vllm")
    assert got == [[100, 101], [101, 101], [102, 101]]
    (made,) = fake_vllm.made
    assert made["model"] == str(tiny_model_dir) and made["enable_lora"] and made["dtype"] == "float32"
    (call,) = fake_vllm.calls
    assert [p["prompt_token_ids"] for p in call["prompts"]] == rows[:3]
    assert all(
        p.temperature == 0.0 and p.max_tokens == 7 and p.stop_token_ids == stops for p in call["params"]
    )
    assert call["lora_request"][3] == str(tiny_adapter)
    generate(b, rows[:1], max_new_tokens=3, engine="vllm")
    assert len(fake_vllm.made) == 1  # the engine is built once


def test_vllm_refuses_edits_and_in_memory_models(tiny_lm, fake_vllm, rows) -> None:
    b = make_backend(tiny_lm, "hooks")
    starts = torch.zeros(len(rows), dtype=torch.long)
    with pytest.raises(AfprobeError, match="cannot edit"):
        generate(b, rows, max_new_tokens=3, engine="vllm", edits=[Edit(1, "add", torch.ones(64), starts)])
    with pytest.raises(AfprobeError, match="hub or a local directory"):
        generate(b, rows, max_new_tokens=3, engine="vllm")


def test_vllm_not_installed_is_a_clear_error(tiny_lm, rows, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(AfprobeError, match="not installed"):
        generate(make_backend(tiny_lm, "hooks"), rows, max_new_tokens=3, engine="vllm")


def test_decoding_writes_into_reserved_room_not_new_copies(tiny_lm) -> None:
    """After the prompt, each layer's keys and values sit in buffers with room for the new tokens: a step
    writes its token there (same tensors, no concatenation of everything cached), with the same logits as a
    plain dynamic cache; a reordered layer, or one past its room, concatenates again."""
    from afprobe.models._generate import _Reserved, reserve

    backend = make_backend(tiny_lm)
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    last = torch.full((2, 1), 11)

    def prompt_cache():  # type: ignore[no-untyped-def]
        return backend.run(ids, mask, logit_positions=last, use_cache=True).cache

    plain, reserved = prompt_cache(), reserve(prompt_cache(), 2)
    assert all(isinstance(layer, _Reserved) for layer in reserved.layers)
    buffers = [layer.keys.data_ptr() for layer in reserved.layers]
    nxt = torch.tensor([[5], [7]])
    for step in range(3):  # two steps fit the room, the third concatenates
        m = torch.ones(2, 13 + step, dtype=torch.long)
        kw = {"logit_positions": torch.zeros(2, 1, dtype=torch.long), "use_cache": True}
        pos = torch.full((2, 1), 12 + step)
        a = backend.run(nxt, m, cache=plain, position_ids=pos, **kw)
        b = backend.run(nxt, m, cache=reserved, position_ids=pos, **kw)
        plain, reserved = a.cache, b.cache
        assert torch.allclose(a.logits, b.logits, atol=1e-6)
        same = [layer.keys.data_ptr() for layer in reserved.layers] == buffers
        assert same == (step < 2) and reserved.layers[0].keys.shape[-2] == 13 + step
