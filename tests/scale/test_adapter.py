"""``model.adapter``: a PEFT LoRA adapter on the base model for caching, steering and patching (the published
alignment-faking model organisms are LoRA adapters on Llama-3.3-70B); tested with a tiny adapter made here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from afprobe import AfprobeError
from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import Edit, ModelConfig, load_model, make_backend, make_tiny_tokenizer, wrap_model
from afprobe.scenarios import ScenarioConfig

SCEN = ScenarioConfig(limit=2, system_prompts=["helpful_only"], cue_formats=["tag", "header"])


def _cache(cfg: ModelConfig, out: Path, lm=None) -> np.ndarray:
    run = CacheRunConfig(model=cfg, scenario=SCEN, cache=CacheConfig(batch_size=4))
    path = CacheRunner(run, progress=False).run(out, lm=lm)
    with ActivationReader(path) as r:
        return r.resid[()]


def _merged_by_hand(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()


def test_cache_with_adapter_differs_from_base_and_equals_the_merged_model(
    tiny_model_dir: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    base_cfg = ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32")
    with_adapter = base_cfg.model_copy(update={"adapter": str(tiny_adapter)})
    base = _cache(base_cfg, tmp_path / "base.h5")
    adapted = _cache(with_adapter, tmp_path / "adapted.h5")
    merged_lm = wrap_model(
        _merged_by_hand(tiny_model_dir, tiny_adapter), make_tiny_tokenizer(), name="merged"
    )
    merged = _cache(base_cfg, tmp_path / "merged.h5", lm=merged_lm)
    np.testing.assert_array_equal(adapted[:, 0], base[:, 0])  # the embedding is not adapted
    assert np.abs(adapted[:, 1:] - base[:, 1:]).max() > 1e-3
    np.testing.assert_allclose(adapted, merged, atol=1e-6)
    with ActivationReader(tmp_path / "adapted.h5") as r:
        assert json.loads(r.attrs["config"])["model"]["adapter"] == str(tiny_adapter)


def test_merged_adapter_matches_the_unmerged_peft_forward(tiny_model_dir: Path, tiny_adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = load_model(
        ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32", adapter=str(tiny_adapter))
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tiny_adapter).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        ref = peft_model(input_ids=ids, output_hidden_states=True).hidden_states
    got = make_backend(lm, "hooks").run(ids, read_layers=[1, 2], logits=False)
    for layer in (1, 2):
        torch.testing.assert_close(got.resid[layer], ref[layer], atol=1e-5, rtol=1e-5)


def test_steering_and_patching_edits_run_on_the_adapted_model(
    tiny_model_dir: Path, tiny_adapter: Path
) -> None:
    base = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32"))
    lm = load_model(base.config.model_copy(update={"adapter": str(tiny_adapter)}))
    assert lm.weights_hash != base.weights_hash  # provenance tells the model organism from its base
    ids = torch.tensor([[5, 6, 7, 8]])
    b = make_backend(lm)
    clean = b.run(ids, read_layers=[2], logit_positions=torch.tensor([[3]]))
    v = torch.randn(64)
    steered = b.run(ids, read_layers=[2], edits=[Edit(1, "add", 3 * v)], logit_positions=torch.tensor([[3]]))
    patched = b.run(ids, read_layers=[2], edits=[Edit(2, "set", clean.resid[2][:, 1:2], torch.tensor([[1]]))])
    assert clean.logits is not None and steered.logits is not None
    assert (steered.logits - clean.logits).abs().max() > 1e-3
    torch.testing.assert_close(patched.resid[2], clean.resid[2])


def test_missing_adapter_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AfprobeError, match="could not load adapter"):
        load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "nope")))
