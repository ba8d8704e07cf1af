"""``afprobe run paper`` end to end through the CLI on a random-init Llama of a real layout built in code
(grouped-query attention 4:1, SwiGLU, RMSNorm, rope theta 500k, tied embeddings; 2 layers, d=128), with the
byte-level test tokenizer, so the short built-in system prompts stand in for the long ones (a 3.4k-token prompt
is ~15k bytes), at test sizes; and on the embedded model (integration, scratchpad turns kept short)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afprobe.cli import main
from afprobe.experiments import read_transcripts
from afprobe.models import make_tiny_tokenizer


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("llama-shape")
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


SMALL = [
    "scenario.limit=4",
    "scenario.system_prompts=[helpful_only,neutral]",
    "causal_scenario.limit=5",
    "cache.batch_size=16",
    "probes.bootstrap=100",
    "scratchpad.max_new_tokens=6",
    "scratchpad.samples=2",
    "scratchpad.n_bootstrap=100",
    "steering.n_random=8",
    "patching.layers=[0,1,2]",
    "report.dpi=50",
]


def _sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def test_run_paper_on_a_random_llama(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["run", "paper", "--out", str(out), "--set", f"model.name={llama_dir}", *_sets(SMALL)])
    assert code == 0
    s = json.loads((out / "scratchpad" / "scratchpad.json").read_text())
    assert s["n_transcripts"] == 32  # 4 requests x 2 tiers x 2 system prompts, 2 samples each
    assert set(s["system_prompts"]) == {"helpful_only", "neutral"}
    ts = read_transcripts(out / "scratchpad" / "transcripts.jsonl")
    assert all(t.messages[2]["content"].startswith("<") for t in ts)  # the prefill
    assert json.loads((out / "transcripts" / "transcripts.json").read_text())["n_transcripts"] == len(ts)
    for stage in ("cache", "probes", "compliance", "steering", "patching"):
        assert (out / stage / ".stamp.json").exists() or any((out / stage).iterdir())
    assert (out / "summary.json").is_file()
