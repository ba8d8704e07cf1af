import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from afprobe import AfprobeError
from afprobe.activations import (
    ActivationReader,
    ActivationWriter,
    CacheConfig,
    CacheRunConfig,
    CacheRunner,
    partial_path,
)
from afprobe.cli import main
from afprobe.models import ModelConfig, load_model
from afprobe.scenarios import ScenarioConfig, get_cue_format

SMALL = ScenarioConfig(limit=3, system_prompts=["helpful_only", "neutral"], cue_formats=["tag", "header"])


def _cfg(**cache) -> CacheRunConfig:
    return CacheRunConfig(scenario=SMALL, cache=CacheConfig(batch_size=5, **cache))


def _recompute(lm, r: ActivationReader, i: int) -> list[torch.Tensor]:
    ids = torch.tensor(r.input_ids[i, : r.lengths[i]])[None]
    with torch.no_grad():
        return list(lm.model(input_ids=ids, output_hidden_states=True).hidden_states)


def test_file_layout_meta_and_provenance(tiny_lm, tmp_path: Path) -> None:
    out = CacheRunner(_cfg(), progress=False).run(tmp_path / "a.h5", lm=tiny_lm)
    with ActivationReader(out) as r:
        n = 3 * 2 * 2 * 2
        assert r.resid.shape == (n, tiny_lm.n_layers + 1, 4, 64)
        assert r.layers == [0, 1, 2, 3] and r.position_names == ["cue", "system_end", "user_end", "last"]
        assert r.input_ids.shape[0] == n and r.position_index.shape == (n, 4)
        assert list(r.meta["tier"][:2]) == ["free", "paid"] and r.meta["pair_id"][0] == r.meta["pair_id"][1]
        assert set(r.meta["cue_format"]) == {"tag", "header"}
        assert set(r.meta["system_prompt"]) == {"helpful_only", "neutral"}
        assert r.meta["harmful"].dtype == bool
        for key in (
            "model_id",
            "weights_hash",
            "dtype",
            "chat_template_hash",
            "afprobe_version",
            "config",
            "created",
        ):
            assert key in r.attrs
        assert r.config["cache"]["batch_size"] == 5 and r.attrs["weights_hash"] == tiny_lm.weights_hash
        assert r.resid.chunks[1:3] == (1, 1)  # one layer and position per chunk: streaming reads stay cheap
    assert not partial_path(out).exists()


def test_every_number_recomputes_with_a_plain_hf_forward(tiny_lm, tmp_path: Path) -> None:
    out = CacheRunner(_cfg(), progress=False).run(tmp_path / "a.h5", lm=tiny_lm)
    with ActivationReader(out) as r:
        for i in (0, 7, r.n_prompts - 1):
            hs = _recompute(tiny_lm, r, i)
            for p in range(len(r.position_names)):
                t = r.position_index[i, p]
                for layer in r.layers[:-1]:
                    np.testing.assert_allclose(r.resid[i, layer, p], hs[layer][0, t].numpy(), atol=1e-5)
            # the last layer is stored raw; HF returns it after the final norm
            last = torch.tensor(r.resid[i, -1, :])
            np.testing.assert_allclose(
                tiny_lm.model.model.norm(last).numpy(), hs[-1][0, r.position_index[i]].numpy(), atol=1e-5
            )


def test_chosen_layers_and_float16(tiny_lm, tmp_path: Path) -> None:
    out = CacheRunner(_cfg(layers=[3, 1], dtype="float16", positions=["last", "cue"]), progress=False).run(
        tmp_path / "b.h5", lm=tiny_lm
    )
    with ActivationReader(out) as r:
        assert r.layers == [1, 3] and r.position_names == ["last", "cue"] and r.resid.dtype == np.float16
        hs = _recompute(tiny_lm, r, 2)
        np.testing.assert_allclose(r.get(1, "cue")[2], hs[1][0, r.position_index[2, 1]].numpy(), atol=2e-2)


def test_resume_after_a_crash_gives_identical_arrays(tiny_lm, tmp_path: Path, monkeypatch) -> None:
    ref = CacheRunner(_cfg(), progress=False).run(tmp_path / "ref.h5", lm=tiny_lm)
    out = tmp_path / "crash.h5"
    real_write = ActivationWriter.write_batch
    calls = {"n": 0}

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(ActivationWriter, "write_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out)) as f:
        assert f.attrs["n_done"] == 10 and not f.attrs["complete"]
    with pytest.raises(AfprobeError, match=r"not a finished|not found"):
        ActivationReader(out)
    monkeypatch.setattr(ActivationWriter, "write_batch", real_write)
    CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    _assert_same_arrays(ref, out)


def test_resume_with_another_config_or_model_is_refused(tiny_lm, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "c.h5"
    monkeypatch.setattr(ActivationWriter, "write_batch", _boom)
    with pytest.raises(RuntimeError):
        CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    with pytest.raises(AfprobeError, match="another model, config or prompt set"):
        CacheRunner(_cfg(dtype="float16"), progress=False).run(out, lm=tiny_lm)
    other = load_model(ModelConfig(name=str(_save_tiny(tmp_path, seed=5)), device="cpu", dtype="float32"))
    with pytest.raises(AfprobeError, match="another model"):
        CacheRunner(_cfg(), progress=False).run(out, lm=other)


def test_finished_file_needs_overwrite(tiny_lm, tmp_path: Path) -> None:
    out = CacheRunner(_cfg(), progress=False).run(tmp_path / "d.h5", lm=tiny_lm)
    with pytest.raises(AfprobeError, match="--overwrite"):
        CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    CacheRunner(_cfg(dtype="float16"), overwrite=True, progress=False).run(out, lm=tiny_lm)
    with ActivationReader(out) as r:
        assert r.resid.dtype == np.float16


def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path: Path) -> None:
    model_dir = _save_tiny(tmp_path, seed=0, n_layers=4)
    args = [
        "cache",
        "--model",
        str(model_dir),
        "--limit",
        "8",
        "--set",
        "cache.batch_size=2",
        "-q",
        "--set",
        "scenario.system_prompts=[helpful_only]",
        "--set",
        "scenario.cue_formats=[tag, sentence]",
    ]
    ref = tmp_path / "ref.h5"
    assert main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from afprobe.cli import main; sys.exit(main(sys.argv[1:]))",
        *args,
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not partial_path(out).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() or proc.returncode == 0  # a killed run never leaves a finished-looking file
    assert main([*args, "--out", str(out)]) == 0
    _assert_same_arrays(ref, out)


def test_float16_overflow_is_refused_not_written(tiny_lm, tmp_path: Path) -> None:
    with torch.no_grad():
        tiny_lm.model.model.embed_tokens.weight.mul_(1e8)
    with pytest.raises(AfprobeError, match="float16 range"):
        CacheRunner(_cfg(dtype="float16"), progress=False).run(tmp_path / "e.h5", lm=tiny_lm)
    assert not (tmp_path / "e.h5").exists()


@pytest.mark.integration
def test_embedded_cache_shapes_positions_and_hf_agreement(embedded_lm, tmp_path: Path) -> None:
    cfg = CacheRunConfig(
        scenario=ScenarioConfig(limit=2, cue_formats=["tag", "sentence"]), cache=CacheConfig()
    )
    out = CacheRunner(cfg, progress=False).run(tmp_path / "emb.h5", lm=embedded_lm)
    tok = embedded_lm.tokenizer
    with ActivationReader(out) as r:
        assert r.resid.shape == (2 * 2 * 2 * 2, 31, 4, 576)
        assert r.attrs["conversation_format"] == "chat_template"
        for i in range(r.n_prompts):
            ids = r.input_ids[i, : r.lengths[i]]
            cue = tok.decode([ids[r.position_index[i, 0]]]).strip()
            assert cue == get_cue_format(r.meta["cue_format"][i]).values[r.meta["tier"][i]]
            assert tok.decode([ids[r.position_index[i, 1]]]) == "."  # both messages end with a full stop
            assert tok.decode([ids[r.position_index[i, 2]]]).endswith(".")
            assert r.position_index[i, 3] == r.lengths[i] - 1
            assert (ids == tok.bos_token_id).sum() == 3  # one <|im_start|> per turn: no doubled BOS
        hs = _recompute(embedded_lm, r, 5)
        for layer in range(0, 30, 3):
            np.testing.assert_allclose(
                r.get(layer, "last")[5], hs[layer][0, r.position_index[5, 3]].numpy(), atol=1e-4
            )


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def _save_tiny(tmp_path: Path, seed: int, n_layers: int = 3) -> Path:
    from afprobe.models import make_tiny_model, make_tiny_tokenizer

    d = tmp_path / f"tiny-{seed}-{n_layers}"
    make_tiny_model(n_layers=n_layers, d_model=64, seed=seed).save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


def _assert_same_arrays(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in ("resid", "input_ids", "lengths", "position_index"):
            np.testing.assert_array_equal(fa[key][()], fb[key][()])
        for col in fa["meta"]:
            np.testing.assert_array_equal(fa["meta"][col][()], fb["meta"][col][()])
