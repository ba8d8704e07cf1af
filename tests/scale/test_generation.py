"""Batched generation at scale: left padding handled right (a row generates the same tokens in a batch as
alone), per-prompt seeded sampling, edits, the vLLM path (with a stand-in ``vllm`` module), and the compliance
classifier over the generated responses."""

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from afprobe import AfprobeError
from afprobe.experiments import stop_token_ids
from afprobe.experiments._batch_generate import (
    generate_batched,
    generate_batched_ids,
    left_pad,
    sampled_compliance,
)
from afprobe.models import ModelConfig, load_model, make_tiny_tokenizer, wrap_model
from afprobe.scenarios import ScenarioConfig, build_scenario, tokenize_prompts


@pytest.fixture
def rows() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 250, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 12)]


class _Edit:
    def __init__(self, layer: int, op: str, vector: torch.Tensor, start: str):
        self.layer, self.op, self.vector, self.start = layer, op, vector, start


def test_left_pad_positions_and_mask() -> None:
    ids, mask, pos = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos[:, -1].tolist() == [2, 0] and pos[0].tolist() == [0, 1, 2]


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


@pytest.mark.parametrize("model", ["tiny_lm", "tiny_gpt2"])
def test_batched_greedy_equals_one_at_a_time(model, rows, request) -> None:
    lm = request.getfixturevalue(model)
    batched = generate_batched_ids(lm, rows, 12, batch_size=5, engine="hf")
    alone = generate_batched_ids(lm, rows, 12, batch_size=1, engine="hf")
    assert batched == alone
    assert all(len(x) > 0 for x in batched)


def test_greedy_equals_hugging_face_generate(tiny_lm, rows) -> None:
    got = generate_batched_ids(tiny_lm, rows[:2], 10, batch_size=2, engine="hf")
    stops = stop_token_ids(tiny_lm.tokenizer)
    for r, g in zip(rows[:2], got, strict=True):
        ref = tiny_lm.model.generate(
            torch.tensor([r]), max_new_tokens=10, do_sample=False, eos_token_id=sorted(stops), pad_token_id=0
        )[0, len(r) :].tolist()
        ref = ref[: next((i for i, t in enumerate(ref) if t in stops), len(ref))]
        assert g == ref


def test_edits_are_placed_per_row_in_a_left_padded_batch(tiny_lm, rows) -> None:
    v = torch.randn(64)
    for start in ("all", "generated"):
        edits = [_Edit(2, "add", 5 * v, start), _Edit(0, "ablate", v, start)]
        batched = generate_batched_ids(tiny_lm, rows, 8, batch_size=5, edits=edits, engine="hf")
        alone = generate_batched_ids(tiny_lm, rows, 8, batch_size=1, edits=edits, engine="hf")
        assert batched == alone
        assert batched != generate_batched_ids(tiny_lm, rows, 8, batch_size=5, engine="hf")


def test_from_cue_edits_need_tokenized_prompts(tiny_lm, rows) -> None:
    with pytest.raises(AfprobeError, match="from_cue"):
        generate_batched_ids(tiny_lm, rows, 4, edits=[_Edit(1, "add", torch.ones(64), "from_cue")])


def test_tokenized_prompts_texts_and_ids_agree(tiny_lm) -> None:
    toks = tokenize_prompts(
        tiny_lm.tokenizer,
        build_scenario(ScenarioConfig(limit=1, system_prompts=["neutral"], cue_formats=["tag"])),
    )
    a = generate_batched(tiny_lm, toks, 6, engine="hf")
    b = generate_batched(tiny_lm, [t.text for t in toks], 6, engine="hf")
    c = generate_batched(tiny_lm, [t.input_ids for t in toks], 6, engine="hf")
    assert a == b == c and len(a) == 2


def test_sampling_is_per_prompt_seeded(tiny_lm, rows) -> None:
    kw: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "engine": "hf"}
    a = generate_batched_ids(tiny_lm, rows, 10, batch_size=5, seed=3, **kw)
    assert a == generate_batched_ids(tiny_lm, rows, 10, batch_size=2, seed=3, **kw)  # batch-size free
    assert a != generate_batched_ids(tiny_lm, rows, 10, batch_size=5, seed=4, **kw)


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
    from afprobe.experiments import _batch_generate

    monkeypatch.setattr(_batch_generate, "_ENGINES", {})
    _FakeLLM.made, _FakeLLM.calls = [], []
    return _FakeLLM


def test_vllm_gets_token_ids_greedy_params_and_the_adapter(
    tiny_model_dir: Path, tiny_adapter: Path, fake_vllm, rows
) -> None:
    lm = load_model(
        ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32", adapter=str(tiny_adapter))
    )
    stops = sorted(stop_token_ids(lm.tokenizer))
    fake_vllm.reply = lambda i, ids: [100 + i, 101, stops[0]]
    got = generate_batched_ids(lm, rows[:3], 7, engine="vllm")
    assert got == [[100, 101], [101, 101], [102, 101]]
    (made,) = fake_vllm.made
    assert made["model"] == str(tiny_model_dir) and made["enable_lora"] and made["dtype"] == "float32"
    (call,) = fake_vllm.calls
    assert [p["prompt_token_ids"] for p in call["prompts"]] == rows[:3]
    assert all(
        p.temperature == 0.0 and p.max_tokens == 7 and p.stop_token_ids == stops for p in call["params"]
    )
    assert call["lora_request"][3] == str(tiny_adapter)
    generate_batched_ids(lm, rows[:1], 3, engine="vllm")
    assert len(fake_vllm.made) == 1  # the engine is built once


def test_vllm_refuses_edits_and_in_memory_models(tiny_lm, fake_vllm, rows) -> None:
    with pytest.raises(AfprobeError, match="cannot edit"):
        generate_batched_ids(tiny_lm, rows, 3, engine="vllm", edits=[_Edit(1, "add", torch.ones(64), "all")])
    with pytest.raises(AfprobeError, match="hub or a local directory"):
        generate_batched_ids(tiny_lm, rows, 3, engine="vllm")


def test_vllm_not_installed_is_a_clear_error(tiny_lm, rows, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(AfprobeError, match="not installed"):
        generate_batched_ids(tiny_lm, rows, 3, engine="vllm")


def test_sampled_compliance_uses_the_compliance_classifier(tiny_model_dir: Path, fake_vllm) -> None:
    lm = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32"))
    toks = tokenize_prompts(
        lm.tokenizer,
        build_scenario(ScenarioConfig(limit=2, system_prompts=["helpful_only"], cue_formats=["tag"])),
    )
    by_ids = {tuple(t.input_ids): t.prompt.tier for t in toks}
    enc = lambda s: lm.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    fake_vllm.reply = lambda i, ids: enc(
        "<request_fully_accepted/> Sure." if by_ids[tuple(ids)] == "free" and i % 4 else "<rejected/>"
    )
    rates = sampled_compliance(lm, toks, samples=4, engine="vllm")
    assert rates["paid"] == {"accepted": 0.0, "rejected": 1.0, "unclear": 0.0}
    assert rates["free"]["accepted"] == pytest.approx(0.75)
    assert all(p.temperature == 1.0 for p in fake_vllm.calls[0]["params"])
