"""``model.remote: true`` up to the network boundary: the NDIF request is captured where nnsight would open its
websocket, checked, and run by a stand-in server (a real nnsight model, with afprobe made unimportable while the
request is unpickled, as on NDIF), so the numbers can be compared with a local run."""

import importlib.abc
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.modeling import huggingface
from nnsight.modeling.transformers import TransformersModel
from nnsight.schema.request import RequestModel
from nnsight.tracing import tracer as nn_tracer
from transformers import AutoTokenizer

from afprobe import AfprobeError
from afprobe.activations import ActivationReader, CacheConfig, CacheRunConfig, CacheRunner
from afprobe.models import Edit, ModelConfig, _remote, generate, load_model, make_backend
from afprobe.scenarios import ScenarioConfig

REPO = "org/tiny-llama"


class _NoAfprobe(importlib.abc.MetaPathFinder):
    """While installed, ``import afprobe...`` fails, as it would on an NDIF server."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "afprobe" or name.startswith("afprobe."):
            raise ModuleNotFoundError(f"No module named {name!r} (simulated NDIF server)")


class FakeNDIF:
    """Stands in for the network: records each request and runs it on a real model, like the server would."""

    def __init__(self, model_dir: Path):
        tok = AutoTokenizer.from_pretrained(model_dir)
        self.server = TransformersModel(str(model_dir), task="text-generation", tokenizer=tok, dispatch=True)
        self.requests: list[dict[str, Any]] = []

    def request(self, backend: RemoteBackend, request: RequestModel, tracer: Any) -> dict:
        blob = backend._serialize(tracer)  # exactly the bytes that would be POSTed
        self.requests.append(
            {
                "envelope": request.model_dump(),
                "api_key": backend.api_key,
                "host": backend.host,
                "bytes": len(blob),
            }
        )
        hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "afprobe"}
        blocker = _NoAfprobe()
        sys.meta_path.insert(0, blocker)
        try:
            restored = RequestModel.deserialize(
                blob, self.server._remoteable_persistent_objects(), compress=backend.compress
            )
        finally:
            sys.meta_path.remove(blocker)
            sys.modules.update(hidden)
        with torch.no_grad():
            restored.execute(restored.info.code)
        saves = nn_tracer._saves()
        return {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saves}


@pytest.fixture
def ndif(tiny_model_dir: Path, monkeypatch) -> FakeNDIF:
    fake = FakeNDIF(tiny_model_dir)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, req, tr: fake.request(self, req, tr))
    monkeypatch.setenv("NDIF_API_KEY", "key-from-env")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AFPROBE_OFFLINE", raising=False)
    monkeypatch.setitem(huggingface._ID_CACHE, str(tiny_model_dir), REPO)
    monkeypatch.setattr(_remote, "ndif_status", lambda: {"deployments": {"a": {"repo_id": REPO}}})
    return fake


def _remote_cfg(d: Path, **kw: Any) -> ModelConfig:
    return ModelConfig(name=str(d), remote=True, **kw)


def test_remote_read_is_one_request_and_matches_local(ndif: FakeNDIF, tiny_model_dir: Path) -> None:
    lm = load_model(_remote_cfg(tiny_model_dir))
    assert next(lm.model.parameters()).device.type == "meta"  # no weights here
    assert (lm.n_layers, lm.d_model) == (3, 64) and lm.source.startswith("NDIF remote")
    local = make_backend(load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32")))
    backend = make_backend(lm)
    assert backend.name == "ndif"
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    pos = torch.tensor([[4, 2], [3, 0]])
    got = backend.run(ids, mask, read_layers=[0, 2, 3], read_positions=pos, logits=False)
    ref = local.run(ids, mask, read_layers=[0, 2, 3], read_positions=pos, logits=False)
    assert len(ndif.requests) == 1
    req = ndif.requests[0]
    assert req["api_key"] == "key-from-env" and req["host"].startswith("https://")
    assert REPO in req["envelope"]["model_key"] and "TransformersModel" in req["envelope"]["model_key"]
    assert "peft" not in req["envelope"]["env"] and 0 < req["bytes"] < 200_000
    for layer in (0, 2, 3):
        torch.testing.assert_close(got.resid[layer], ref.resid[layer], atol=1e-5, rtol=1e-5)


def test_remote_steering_edit_and_logits_match_local(ndif: FakeNDIF, tiny_model_dir: Path) -> None:
    lm = load_model(_remote_cfg(tiny_model_dir))
    local = make_backend(load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32")))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    v = torch.randn(64)
    edits = [Edit(1, "add", 4 * v, torch.tensor([[3, 4]])), Edit(2, "ablate", v)]
    last = torch.tensor([[4]])
    got = make_backend(lm).run(ids, read_layers=[2], edits=edits, logit_positions=last)
    ref = local.run(ids, read_layers=[2], edits=edits, logit_positions=last)
    plain = local.run(ids, read_layers=[2], logit_positions=last)
    assert got.logits is not None and ref.logits is not None and plain.logits is not None
    assert got.logits.shape == (1, 1, 259)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.resid[2], ref.resid[2], atol=1e-5, rtol=1e-5)
    assert (got.logits - plain.logits).abs().max() > 1e-3  # the edit did something


def test_remote_cache_file_equals_local(ndif: FakeNDIF, tiny_model_dir: Path, tmp_path: Path) -> None:
    scen = ScenarioConfig(limit=2, system_prompts=["helpful_only"], cue_formats=["tag"])
    remote = CacheRunConfig(model=_remote_cfg(tiny_model_dir), scenario=scen, cache=CacheConfig(batch_size=2))
    local = remote.model_copy(update={"model": ModelConfig(name=str(tiny_model_dir), dtype="float32")})
    a = CacheRunner(remote, progress=False).run(tmp_path / "remote.h5")
    b = CacheRunner(local, progress=False).run(tmp_path / "local.h5")
    assert len(ndif.requests) == 2  # one request per batch
    with ActivationReader(a) as ra, ActivationReader(b) as rb:
        np.testing.assert_allclose(ra.resid[()], rb.resid[()], atol=1e-5)
        assert ra.attrs["model_source"].startswith("NDIF remote")


def test_adapter_travels_with_the_request(ndif: FakeNDIF, tiny_model_dir: Path, tiny_adapter: Path) -> None:
    adapter = tiny_adapter
    lm = load_model(_remote_cfg(tiny_model_dir, adapter=str(adapter)))
    ndif.server.load_adapter(str(adapter))  # the server swaps in the adapter named in the request's env
    backend = make_backend(lm)
    got = backend.run(torch.tensor([[5, 6, 7]]), read_layers=[3], logits=False)
    assert ndif.requests[-1]["envelope"]["env"]["peft"] == str(adapter)
    merged = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", adapter=str(adapter)))
    ref = make_backend(merged).run(torch.tensor([[5, 6, 7]]), read_layers=[3], logits=False)
    torch.testing.assert_close(got.resid[3], ref.resid[3], atol=1e-4, rtol=1e-4)


def test_batched_generation_runs_on_ndif_and_matches_local(ndif: FakeNDIF, tiny_model_dir: Path) -> None:
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [40, 41, 42, 43]]
    remote = make_backend(load_model(_remote_cfg(tiny_model_dir)))
    local = make_backend(load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32")))
    got = generate(remote, rows, max_new_tokens=6, batch_size=2)
    assert len(ndif.requests) == 2  # one request per batch
    assert got == generate(local, rows, max_new_tokens=6, batch_size=3, engine="hf")
    with pytest.raises(AfprobeError, match="does not run on NDIF"):
        generate(
            remote, rows, max_new_tokens=2, edits=[Edit(1, "add", torch.ones(64), torch.zeros(3).long())]
        )


def test_kv_cache_passes_are_refused_remotely(ndif: FakeNDIF, tiny_model_dir: Path) -> None:
    backend = make_backend(load_model(_remote_cfg(tiny_model_dir)))
    with pytest.raises(AfprobeError, match="do not run on NDIF"):
        backend.run(torch.tensor([[5, 6]]), use_cache=True)


# ---- clear errors before any work -----------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Fail the test if anything past the checks (tokenizer, meta model) is started."""

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("work started before the remote checks")

    monkeypatch.setattr(TransformersModel, "__init__", boom)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", boom)


def test_missing_api_key(monkeypatch, no_work) -> None:
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(_remote, "ndif_api_key", lambda: None)
    with pytest.raises(AfprobeError, match="NDIF_API_KEY"):
        load_model(ModelConfig(name="meta-llama/Llama-3.1-405B-Instruct", remote=True))


def test_offline_is_refused(monkeypatch, no_work) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AfprobeError, match="HF_HUB_OFFLINE is set"):
        load_model(ModelConfig(name="meta-llama/Llama-3.1-405B-Instruct", remote=True))


def test_unreachable_service_is_refused(monkeypatch, no_work) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "k")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AFPROBE_OFFLINE", raising=False)
    monkeypatch.setattr(_remote, "ndif_status", lambda: {})
    with pytest.raises(AfprobeError, match="cannot reach NDIF"):
        load_model(ModelConfig(name="meta-llama/Llama-3.1-405B-Instruct", remote=True))


def test_model_not_deployed_is_refused(monkeypatch, no_work) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "k")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AFPROBE_OFFLINE", raising=False)
    status = {"deployments": {"x": {"repo_id": "meta-llama/Llama-3.1-8B"}}}
    monkeypatch.setattr(_remote, "ndif_status", lambda: status)
    with pytest.raises(AfprobeError, match=r"not running on NDIF.*Llama-3.1-8B"):
        load_model(ModelConfig(name="meta-llama/Llama-3.1-405B-Instruct", remote=True))


def test_gguf_and_local_dirs_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(AfprobeError, match="not a GGUF file"):
        load_model(ModelConfig(name=str(tmp_path / "m.gguf"), remote=True))
    with pytest.raises(AfprobeError, match="not a local directory"):
        load_model(ModelConfig(name=str(tiny_model_dir), remote=True))


def test_ndif_backend_needs_a_remote_model(tiny_lm) -> None:
    with pytest.raises(AfprobeError, match=r"model\.remote=true"):
        _remote.NDIFBackend(tiny_lm)
