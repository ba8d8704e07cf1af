"""The accelerator path of the cache runner; the same code runs on CPU.

- :func:`rows_that_fit`: how many prompts one forward pass can take, from the free memory of the model's devices.
- :class:`SubBatcher`: run a batch as sub-batches of that size; on out-of-memory halve the size and retry the
  sub-batch that failed, keeping the rows already done (nothing is written until the whole batch is in).
- :class:`OverlappedWriter`: device-to-host copies into a small ring of (pinned) host buffers on a side stream,
  and a writer thread that waits for each copy and hands the batch to the HDF5 writer, in order, while the main
  thread runs the next forward pass. At most ``depth`` batches are in flight, so memory stays flat.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from afprobe._errors import AfprobeError

# ``torch.OutOfMemoryError`` (torch >= 2.5) is the same class as ``torch.cuda.OutOfMemoryError``.
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def model_devices(model: nn.Module) -> list[torch.device]:
    """Every device holding a parameter (several with ``device_map="auto"``), in first-use order."""
    seen: dict[str, torch.device] = {}
    for p in model.parameters():
        seen.setdefault(str(p.device), p.device)
    return list(seen.values())


def free_bytes(devices: Sequence[torch.device]) -> int | None:
    """Free memory of the tightest CUDA device (free plus what torch's caching allocator holds unused).

    ``None`` for CPU and other devices: there the configured batch is used as is (host memory is not sized
    here, and a CPU out-of-memory is not a catchable error)."""
    free: list[int] = []
    for dev in devices:
        if dev.type == "cuda":
            idle, _ = torch.cuda.mem_get_info(dev)
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            free.append(int(idle + cached))
    return min(free) if free else None


def activation_bytes_per_token(model: nn.Module, width: int) -> int:
    """A generous estimate of the transient memory one token costs in a no-grad forward pass: the residual
    stream and its norms, q/k/v/o, the MLP's hidden activations, and attention scores where they materialise."""
    cfg = model.config
    d = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    ff = int(getattr(cfg, "intermediate_size", 0) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    elem = next(model.parameters()).element_size()
    per = elem * (8 * d + 3 * ff)
    if getattr(cfg, "_attn_implementation", "eager") in (None, "eager"):
        per += 2 * 4 * heads * width  # fp32 scores and probabilities, one row per token
    return per


def rows_that_fit(
    model: nn.Module, width: int, limit: int, *, free: int | None = None, safety: float = 0.5
) -> int:
    """Prompts of ``width`` tokens one forward pass can take (between 1 and ``limit``)."""
    if free is None:
        free = free_bytes(model_devices(model))
    if free is None:
        return limit
    need = activation_bytes_per_token(model, width) * max(width, 1)
    return max(1, min(limit, int(safety * free) // max(need, 1)))


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class SubBatcher:
    """Run ``n_rows`` rows as sub-batches of ``size`` (which only ever shrinks: halved on each out-of-memory).

    ``step(a, b)`` runs rows ``a:b`` and keeps their results; a failed step is retried at the smaller size, so
    no finished row is recomputed or lost. ``shrinks`` counts the back-offs.
    """

    size: int
    shrinks: int = 0
    on_shrink: Callable[[int], None] | None = None

    def run(self, n_rows: int, step: Callable[[int, int], None]) -> None:
        a = 0
        while a < n_rows:
            b = min(a + self.size, n_rows)
            if self._try(step, a, b):
                a = b
                continue
            release_cached_memory()  # after the except block: the failed step's tensors are freed by now
            if b - a == 1:
                raise AfprobeError(
                    "out of GPU memory on a single prompt: use a smaller dtype (--dtype bfloat16), spread the "
                    "model over several GPUs (--set model.device_map=auto), or fewer layers (cache.layers)"
                )
            self.size = max(1, (b - a) // 2)
            self.shrinks += 1
            if self.on_shrink is not None:
                self.on_shrink(self.size)

    @staticmethod
    def _try(step: Callable[[int, int], None], a: int, b: int) -> bool:
        try:
            step(a, b)
        except OOM_ERRORS:
            return False
        return True


@dataclass
class _Job:
    slot: int
    rows: int
    events: list[Any]
    payload: Any


@dataclass
class OverlappedWriter:
    """Hand batches to ``sink(array, payload)`` on a writer thread, in submission order.

    Per batch: :meth:`buffer` gives a free host buffer ``[layer, rows, ...]``; :meth:`copy_into` starts a copy of a
    device tensor into a slice of it (asynchronous on a side stream for CUDA tensors, a plain copy on CPU);
    :meth:`submit` queues it. The thread waits only for that batch's copies (CUDA events), never for the forward
    pass queued after them. ``sink`` gets a ``[rows, layer, ...]`` numpy array.

    An error in ``sink`` (even ``KeyboardInterrupt``) stops the thread, drops the batches queued after it and is
    re-raised in the calling thread at the next :meth:`buffer` / :meth:`submit` or on exit. On exit without an
    error, or after an error in the calling thread, the batches already computed are written first.
    """

    sink: Callable[[np.ndarray, Any], None]
    shape: tuple[int, ...]  # (layers, max_rows, *per_row)
    dtype: torch.dtype
    pin: bool = False
    depth: int = 2
    _free: queue.Queue = field(init=False)
    _jobs: queue.Queue = field(init=False)
    _buffers: list[Tensor] = field(init=False)
    _streams: dict[torch.device, Any] = field(init=False, default_factory=dict)
    _pending: set[torch.device] = field(init=False, default_factory=set)
    _current: int | None = field(init=False, default=None)
    _error: BaseException | None = field(init=False, default=None)
    _abort: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._buffers = [
            torch.empty(self.shape, dtype=self.dtype, pin_memory=self.pin) for _ in range(self.depth + 1)
        ]
        self._free = queue.Queue()
        for i in range(len(self._buffers)):
            self._free.put(i)
        self._jobs = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="afprobe-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> OverlappedWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._jobs.put(None)
        while True:
            try:
                self._thread.join()
                break
            except KeyboardInterrupt:  # a second Ctrl-C: stop after the batch being written
                self._abort.set()
        if exc is None:
            self._raise_pending()

    def buffer(self) -> Float[Tensor, "layer rows ..."]:
        """A free host buffer (waits while ``depth`` batches are in flight)."""
        self._raise_pending()
        while True:
            try:
                self._current = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                self._raise_pending()
        return self._buffers[self._current]

    def copy_into(self, dst: Tensor, src: Tensor) -> None:
        """Copy ``src`` (any device) into ``dst``, a slice of the current buffer, converting the dtype."""
        if src.device.type != "cuda":
            dst.copy_(src)
            return
        src = src.to(dst.dtype)
        stream = self._streams.get(src.device)
        if stream is None:
            stream = self._streams[src.device] = torch.cuda.Stream(src.device)
        stream.wait_stream(torch.cuda.current_stream(src.device))
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
        src.record_stream(stream)  # the allocator must not reuse src until the copy is done
        self._pending.add(src.device)

    def submit(self, rows: int, payload: Any) -> None:
        """Queue the current buffer's first ``rows`` rows for ``sink``."""
        self._raise_pending()
        if self._current is None:
            raise RuntimeError("submit() without buffer()")
        events = []
        for dev in self._pending:
            ev = torch.cuda.Event()
            ev.record(self._streams[dev])
            events.append(ev)
        self._pending.clear()
        self._jobs.put(_Job(self._current, rows, events, payload))
        self._current = None

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _loop(self) -> None:
        failed = False
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if failed or self._abort.is_set():
                continue
            try:
                for ev in job.events:
                    ev.synchronize()
                host = self._buffers[job.slot][:, : job.rows].numpy()
                self.sink(np.ascontiguousarray(np.moveaxis(host, 0, 1)), job.payload)
            except BaseException as e:  # handed to the calling thread, KeyboardInterrupt included
                self._error = e
                failed = True
            finally:
                self._free.put(job.slot)
