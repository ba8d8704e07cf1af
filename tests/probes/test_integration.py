"""The embedded model's cache gives a per-layer probe curve (integration: loads SmolLM2-135M once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import LoadedModel
from afprobe.probes import ProbeConfig, load_directions, run_probes
from afprobe.scenarios import ScenarioConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def probe_embedded_cache(embedded_lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six requests x 2 cue formats x 2 system prompts x 2 tiers = 48 prompts, every layer, every position."""
    cfg = CacheRunConfig(
        scenario=ScenarioConfig(limit=6, cue_formats=["tag", "sentence"]),
        cache=CacheConfig(batch_size=8),
    )
    out = tmp_path_factory.mktemp("probe_embedded") / "activations.h5"
    return CacheRunner(cfg, progress=False).run(out, lm=embedded_lm)


def test_embedded_cache_gives_a_per_layer_curve(
    probe_embedded_cache: Path, embedded_lm: LoadedModel, tmp_path: Path
) -> None:
    results = run_probes(
        probe_embedded_cache, tmp_path / "probes", ProbeConfig(folds=3, bootstrap=200, baseline_repeats=2)
    )
    with ActivationReader(probe_embedded_cache) as reader:
        layers = reader.layers
    assert layers == list(range(embedded_lm.n_layers + 1))
    for probe in ("torch_logistic", "mass_mean"):
        for pos in ("cue", "system_end", "user_end", "last"):
            curve = [r for r in results["per_layer"] if r["probe"] == probe and r["position"] == pos]
            assert [r["layer"] for r in curve] == layers
            assert all(0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["auroc"]) for r in curve)
    by = {(r["probe"], r["layer"], r["position"]): r for r in results["per_layer"]}
    # the cue token itself is readable right after the embedding; before the cue nothing differs by tier
    assert max(by["torch_logistic", layer, "cue"]["accuracy"] for layer in layers) > 0.95
    assert all(
        by["torch_logistic", layer, "system_end"]["accuracy"] == pytest.approx(0.5) for layer in layers
    )
    best = results["best"]
    assert best["position"] in ("user_end", "last") and best["layer"] in layers
    assert results["cue_trivial"]["trivial"] is True
    assert results["cross_format"]["formats"] == ["tag", "sentence"]
    dirs = load_directions(
        tmp_path / "probes",
        expect_model_id=embedded_lm.model_id,
        expect_weights_hash=embedded_lm.weights_hash,
        expect_d_model=embedded_lm.d_model,
    )
    v = dirs.direction(best["layer"], best["position"])
    assert v.shape == (embedded_lm.d_model,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert (tmp_path / "probes" / "plots" / "accuracy_by_layer.png").is_file()
