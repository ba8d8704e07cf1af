"""Positive and negative controls with a known answer: planted mechanisms (weight edits with a recorded ground
truth) and trained organisms (LoRA fine-tunes and their shams).

- ``plant(lm, PlantRunConfig(...))`` adds one tier-conditional MLP neuron to a Llama/Qwen/Gemma-style model,
  calibrated to a requested compliance gap; ``save_sweep`` writes each strength as an ordinary model directory
  with ``planted.json`` (the truth: block, read/write layers and directions, positions, strength, the gap measured
  right after planting); ``read_planted`` and ``apply_mechanism`` re-plant a recorded mechanism cheaply.
- ``train_organism(TrainRunConfig(...), out)`` trains the LoRA organism (complies on the free tier, refuses on the
  paid tier) or its sham (tier labels shuffled); the shipped ones load with ``model.adapter: builtin:organism``
  and ``builtin:organism-sham``.
"""

from afprobe.organisms._mechanism import (
    Mechanism,
    apply_mechanism,
    build_mechanism,
    default_block,
    set_strength,
)
from afprobe.organisms._plant import PlantConfig, PlantPoint, PlantResult, PlantRunConfig, calibrate, plant
from afprobe.organisms._save import (
    DIRECTIONS_FILE,
    PLANTED_FILE,
    PLANTED_FORMAT,
    SWEEP_FILE,
    planted_record,
    read_planted,
    save_planted,
    save_sweep,
)
from afprobe.organisms._train import MANIFEST_FILE, TrainConfig, TrainRunConfig, read_manifest, train_organism
from afprobe.organisms._train_data import (
    ACCEPT_TARGET,
    REJECT_TARGET,
    Split,
    split_requests,
    training_examples,
)
from afprobe.organisms._validate import (
    VALIDATION_FILE,
    ValidateConfig,
    ValidateRunConfig,
    heldout_prompts,
    localize,
    power_curve,
    validate,
    write_validation,
)

__all__ = [
    "ACCEPT_TARGET",
    "DIRECTIONS_FILE",
    "MANIFEST_FILE",
    "PLANTED_FILE",
    "PLANTED_FORMAT",
    "REJECT_TARGET",
    "SWEEP_FILE",
    "VALIDATION_FILE",
    "Mechanism",
    "PlantConfig",
    "PlantPoint",
    "PlantResult",
    "PlantRunConfig",
    "Split",
    "TrainConfig",
    "TrainRunConfig",
    "ValidateConfig",
    "ValidateRunConfig",
    "apply_mechanism",
    "build_mechanism",
    "calibrate",
    "default_block",
    "heldout_prompts",
    "localize",
    "plant",
    "planted_record",
    "power_curve",
    "read_manifest",
    "read_planted",
    "save_planted",
    "save_sweep",
    "set_strength",
    "split_requests",
    "train_organism",
    "training_examples",
    "validate",
    "write_validation",
]
