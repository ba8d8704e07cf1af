"""Fixtures for the scale tests: a tiny LoRA adapter for the tiny model."""

from pathlib import Path

import pytest
import torch

from afprobe.models import make_tiny_model


def make_adapter(out: Path, seed: int = 1) -> Path:
    """A LoRA adapter (rank 4, random non-zero weights) for ``make_tiny_model(n_layers=3, d_model=64)``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(make_tiny_model(n_layers=3, d_model=64), cfg).save_pretrained(out)
    return out


@pytest.fixture
def tiny_adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "adapter")
