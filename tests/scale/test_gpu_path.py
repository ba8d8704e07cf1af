"""The cache runner's accelerator path, exercised on CPU: sub-batch sizing, out-of-memory back-off, the overlapped
writer thread, flat memory over a long run, ``device_map``. Tests that need CUDA carry the ``gpu`` marker."""

import gc
import threading
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from afprobe import AfprobeError
from afprobe.activations import ActivationWriter, CacheConfig, CacheRunConfig, CacheRunner, _gpu, partial_path
from afprobe.activations import _runner as runner_mod
from afprobe.models import ModelConfig, load_model, make_tiny_model, make_tiny_tokenizer, wrap_model
from afprobe.scenarios import ScenarioConfig

SMALL = ScenarioConfig(limit=3, system_prompts=["helpful_only", "neutral"], cue_formats=["tag", "header"])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cfg(batch_size: int = 6, **scenario) -> CacheRunConfig:
    sc = SMALL.model_copy(update=scenario)
    # no shared system-prompt prefix: every forward is a batch of whole prompts, which the back-off counts
    return CacheRunConfig(scenario=sc, cache=CacheConfig(batch_size=batch_size, share_prefix=False))


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("resid", "input_ids", "lengths", "position_index")}


class _OOMAbove:
    """Wrap a backend so that any forward on more than ``max_rows`` prompts raises out-of-memory."""

    def __init__(self, backend, max_rows: int):
        self.backend, self.max_rows, self.rows_seen = backend, max_rows, []

    def __getattr__(self, name: str):  # everything but run is the wrapped backend's
        return getattr(self.backend, name)

    def run(self, ids, *args, **kwargs):
        self.rows_seen.append(len(ids))
        if len(ids) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.backend.run(ids, *args, **kwargs)


def _patch_oom(monkeypatch, max_rows: int) -> list[_OOMAbove]:
    made: list[_OOMAbove] = []
    real = runner_mod.make_backend

    def fake(lm):
        made.append(_OOMAbove(real(lm), max_rows))
        return made[-1]

    monkeypatch.setattr(runner_mod, "make_backend", fake)
    return made


# ---- sub-batching and out-of-memory back-off -------------------------------------------------------------


def test_sub_batcher_halves_on_oom_and_keeps_finished_rows() -> None:
    done: list[tuple[int, int]] = []

    def step(a: int, b: int) -> None:
        if b - a > 3:
            raise torch.OutOfMemoryError("simulated")
        done.append((a, b))

    sub = _gpu.SubBatcher(16)
    sub.run(16, step)
    assert sub.size == 2 and sub.shrinks == 3  # 16 -> 8 -> 4 -> 2
    rows = [r for a, b in done for r in range(a, b)]
    assert rows == list(range(16))  # every row exactly once, in order
    sub.run(5, step)  # the shrunk size carries over to the next batch
    assert sub.shrinks == 3 and done[-1] == (4, 5)


def test_sub_batcher_single_row_oom_is_a_clear_error() -> None:
    def step(a: int, b: int) -> None:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(AfprobeError, match="single prompt"):
        _gpu.SubBatcher(4).run(4, step)


def test_other_errors_are_not_swallowed() -> None:
    def step(a: int, b: int) -> None:
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        _gpu.SubBatcher(4).run(4, step)


def test_rows_that_fit_follows_free_memory(tiny_lm) -> None:
    m = tiny_lm.model
    per_prompt = _gpu.activation_bytes_per_token(m, 100) * 100
    assert _gpu.rows_that_fit(m, 100, 64, free=10 * per_prompt, safety=1.0) == 10
    assert _gpu.rows_that_fit(m, 100, 8, free=10 * per_prompt, safety=1.0) == 8  # capped by the batch
    assert _gpu.rows_that_fit(m, 100, 64, free=1, safety=1.0) == 1  # never below one prompt
    assert _gpu.rows_that_fit(m, 400, 64, free=10 * per_prompt, safety=1.0) < 10  # longer prompts, fewer rows
    assert _gpu.free_bytes([torch.device("cpu")]) is None  # CPU: the configured batch as is
    assert _gpu.rows_that_fit(m, 100, 64) == 64


def test_cache_with_oom_back_off_gives_bit_identical_arrays(tiny_lm, tmp_path: Path, monkeypatch) -> None:
    ref = CacheRunner(_cfg(), progress=False).run(tmp_path / "ref.h5", lm=tiny_lm)
    made = _patch_oom(monkeypatch, max_rows=2)
    runner = CacheRunner(_cfg(), progress=False)
    with pytest.warns(UserWarning, match="sub-batches shrink to"):
        out = runner.run(tmp_path / "oom.h5", lm=tiny_lm)
    assert made[0].rows_seen[:3] == [6, 3, 1] and max(made[0].rows_seen[3:]) <= 2
    assert runner.forward_batch_size == 1
    a, b = _arrays(ref), _arrays(out)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_oom_inside_the_model_is_caught_through_each_backend(
    tiny_model_dir: Path, tmp_path: Path, backend
) -> None:
    lm = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32", backend=backend))
    ref = CacheRunner(_cfg(), progress=False).run(tmp_path / "ref.h5", lm=lm)

    def oom_on_big_batches(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated inside block 1)")

    handle = lm.model.model.layers[1].register_forward_pre_hook(oom_on_big_batches, with_kwargs=True)
    try:
        with pytest.warns(UserWarning, match="shrink to 3"):
            out = CacheRunner(_cfg(), progress=False).run(tmp_path / "oom.h5", lm=lm)
    finally:
        handle.remove()
    a, b = _arrays(ref), _arrays(out)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_crash_then_resume_with_smaller_sub_batches_is_identical(
    tiny_lm, tmp_path: Path, monkeypatch
) -> None:
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
    with pytest.raises(KeyboardInterrupt):  # raised on the writer thread, re-raised in the caller
        CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    with h5py.File(partial_path(out)) as f:
        assert f.attrs["n_done"] == 12  # two whole batches; nothing after the failed one
    monkeypatch.setattr(ActivationWriter, "write_batch", real_write)
    _patch_oom(monkeypatch, max_rows=4)  # the resumed run has less memory: sub-batches of 3
    with pytest.warns(UserWarning):
        CacheRunner(_cfg(), progress=False).run(out, lm=tiny_lm)
    a, b = _arrays(ref), _arrays(out)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# ---- the overlapped writer -------------------------------------------------------------------------------


def _fill(pipe: _gpu.OverlappedWriter, n: int) -> None:
    for i in range(n):
        host = pipe.buffer()
        pipe.copy_into(host[:, :2], torch.full((2, 2, 3), float(i)))
        pipe.submit(2, i)


def test_writer_thread_writes_in_order_off_the_main_thread() -> None:
    got: list[tuple[int, np.ndarray, str]] = []

    def sink(arr: np.ndarray, payload: int) -> None:
        got.append((payload, arr.copy(), threading.current_thread().name))

    with _gpu.OverlappedWriter(sink, (2, 4, 3), torch.float16) as pipe:
        _fill(pipe, 7)
    assert [g[0] for g in got] == list(range(7))
    assert all(g[1].shape == (2, 2, 3) and g[1].dtype == np.float16 for g in got)
    assert all((g[1] == g[0]).all() for g in got)
    assert {g[2] for g in got} == {"afprobe-writer"}


def test_writer_error_reaches_the_caller_and_stops_later_writes() -> None:
    written: list[int] = []

    def sink(arr: np.ndarray, payload: int) -> None:
        if payload == 2:
            raise KeyboardInterrupt
        written.append(payload)

    with pytest.raises(KeyboardInterrupt), _gpu.OverlappedWriter(sink, (2, 4, 3), torch.float32) as pipe:
        _fill(pipe, 10)
    assert written == [0, 1]


def test_caller_error_still_writes_the_batches_already_computed() -> None:
    written: list[int] = []
    with (
        pytest.raises(ValueError),
        _gpu.OverlappedWriter(lambda a, p: written.append(p), (2, 4, 3), torch.float32) as pipe,
    ):
        _fill(pipe, 3)
        raise ValueError("forward failed")
    assert written == [0, 1, 2]


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_memory_stays_flat_over_a_long_cache_run(tiny_lm, tmp_path: Path, monkeypatch) -> None:
    """Live tensors and Python-side allocations after batch 5 and after batch 40 are the same."""
    cfg = _cfg(batch_size=1, cue_formats=["tag"], system_prompts=["helpful_only", "neutral"], limit=10)
    seen: list[tuple[int, int]] = []
    real_write = ActivationWriter.write_batch

    def watch(self, start, *args, **kwargs):
        real_write(self, start, *args, **kwargs)
        if start in (5, 39):
            seen.append((_live_tensors(), tracemalloc.get_traced_memory()[0]))

    monkeypatch.setattr(ActivationWriter, "write_batch", watch)
    tracemalloc.start()
    try:
        CacheRunner(cfg, progress=False).run(tmp_path / "long.h5", lm=tiny_lm)
    finally:
        tracemalloc.stop()
    (t5, m5), (t40, m40) = seen
    assert t40 <= t5
    assert m40 - m5 < 256 * 1024  # no per-batch growth (h5py and rich keep a little bookkeeping)


# ---- device_map ------------------------------------------------------------------------------------------


def test_device_map_auto_loads_and_caches_the_same(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32"))
    mapped = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", device_map="auto"))
    assert mapped.config.device_map == "auto" and _gpu.model_devices(mapped.model)  # placed by accelerate
    a = CacheRunner(_cfg(), progress=False).run(tmp_path / "a.h5", lm=plain)
    b = CacheRunner(_cfg(), progress=False).run(tmp_path / "b.h5", lm=mapped)
    np.testing.assert_allclose(_arrays(a)["resid"], _arrays(b)["resid"], atol=1e-6)


# ---- CUDA only -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_cache_matches_cpu_and_memory_is_flat(tmp_path: Path, monkeypatch) -> None:
    cpu = wrap_model(make_tiny_model(n_layers=3, d_model=64), make_tiny_tokenizer(), name="tiny")
    gpu = wrap_model(
        make_tiny_model(n_layers=3, d_model=64).to("cuda", torch.bfloat16), make_tiny_tokenizer(), name="tiny"
    )
    ref = CacheRunner(_cfg(), progress=False).run(tmp_path / "cpu.h5", lm=cpu)
    allocated: list[int] = []
    real_write = ActivationWriter.write_batch

    def watch(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        allocated.append(torch.cuda.memory_allocated())

    monkeypatch.setattr(ActivationWriter, "write_batch", watch)
    out = CacheRunner(_cfg(batch_size=2), progress=False).run(tmp_path / "gpu.h5", lm=gpu)
    np.testing.assert_allclose(_arrays(out)["resid"], _arrays(ref)["resid"], atol=0.1, rtol=0.05)
    assert max(allocated[2:]) <= allocated[1] + 1024 * 1024


@pytest.mark.gpu
@needs_cuda
def test_cuda_overlapped_copies_land_before_the_sink_reads_them() -> None:
    got: list[np.ndarray] = []
    big = torch.randn(4096, 4096, device="cuda")
    with _gpu.OverlappedWriter(
        lambda a, p: got.append(a.copy()), (1, 8, 1024), torch.float32, pin=True
    ) as pipe:
        for i in range(5):
            host = pipe.buffer()
            for _ in range(5):
                big = big @ big / 64  # queue work ahead of the copy
            pipe.copy_into(host[0, :8], torch.full((8, 1024), float(i), device="cuda"))
            pipe.submit(8, i)
    assert [float(g.mean()) for g in got] == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cache_across_two_gpus_equals_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    split = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": 1,
        "model.layers.2": 1,
        "model.norm": 1,
        "lm_head": 1,
    }
    one = load_model(ModelConfig(name=str(tiny_model_dir), device="cuda", dtype="float32"))
    two = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", device_map=split))
    assert {p.device.index for p in two.model.parameters()} == {0, 1}
    a = CacheRunner(_cfg(), progress=False).run(tmp_path / "one.h5", lm=one)
    b = CacheRunner(_cfg(), progress=False).run(tmp_path / "two.h5", lm=two)
    np.testing.assert_allclose(_arrays(a)["resid"], _arrays(b)["resid"], atol=1e-5)
