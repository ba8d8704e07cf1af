"""What a run will cost before it runs (``afprobe run --dry-run``): per stage, the tokens, forward passes, disk
bytes and memory, from the config and the model's shape alone (no weights are loaded). This module holds the
shapes, the table and the disk check; what each stage computes is in :mod:`afprobe.pipeline._stage_costs`.

The shape comes from a loaded model when one is given, else from the model's ``config.json`` (a local directory,
or a hub id that ``transformers.AutoConfig`` finds offline), else from :data:`KNOWN_SHAPES` (the embedded model
and the shipped configs' models). Tokens are counted with the model's tokenizer when it loads offline (a local
directory or a loaded model), else estimated from characters (:data:`CHARS_PER_TOKEN`; marked ``approx``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError

CHARS_PER_TOKEN = 3.6  # English chat text under BPE vocabularies of 32k-150k tokens
# (n_layers, d_model, mlp width, vocab, kv_heads, heads) of models whose config.json may not be on this machine
KNOWN_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "smollm2-135m-instruct": (30, 576, 1536, 49152, 3, 9),
    "meta-llama/Llama-3.1-8B-Instruct": (32, 4096, 14336, 128256, 8, 32),
    "meta-llama/Llama-3.1-70B-Instruct": (80, 8192, 28672, 128256, 8, 64),
    "Qwen/Qwen2.5-7B-Instruct": (28, 3584, 18944, 152064, 4, 28),
}
KNOWN_SHAPES |= {
    "llama-3.1-8b-instruct": KNOWN_SHAPES["meta-llama/Llama-3.1-8B-Instruct"],
    "llama-3.1-70b-instruct": KNOWN_SHAPES["meta-llama/Llama-3.1-70B-Instruct"],
    "qwen2.5-7b-instruct": KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"],
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 4}


@dataclass
class ModelShape:
    name: str
    n_layers: int
    d_model: int
    mlp: int
    vocab: int
    kv_heads: int
    heads: int
    source: str

    @property
    def block_params(self) -> int:
        kv = self.d_model * self.d_model * self.kv_heads // max(1, self.heads)
        return 2 * self.d_model * self.d_model + 2 * kv + 3 * self.d_model * self.mlp

    @property
    def n_params(self) -> int:
        return self.n_layers * self.block_params + self.vocab * self.d_model


@dataclass
class StageCost:
    stage: str
    prompts: int = 0
    tokens: int = 0
    forward_passes: int = 0
    disk_bytes: int = 0
    memory_bytes: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class Estimate:
    model: ModelShape
    tokens_exact: bool
    rate: float  # the matrix-product FLOP/s the times assume (measured here, before EFFICIENCY)
    stages: list[StageCost] = field(default_factory=list)

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "disk_bytes": self.disk_bytes, "seconds": self.seconds}

    def table(self, measured: Mapping[str, float] | None = None) -> str:
        """The estimate as a table; ``measured`` (stage -> seconds, from a finished run's stamps) adds a column of
        what that run took beside the estimate."""
        took = dict(measured or {})
        extra = f" {'measured':>9s}" if took else ""
        head = f"{'stage':12s} {'prompts':>8s} {'tokens':>11s} {'forwards':>9s} {'disk':>10s} {'memory':>10s} {'time':>9s}"
        rows = [head + extra]
        for s in self.stages:
            seen = (f" {took[s.stage]:8.0f}s" if s.stage in took else f" {'-':>9s}") if took else ""
            rows.append(
                f"{s.stage:12s} {s.prompts:8d} {s.tokens:11d} {s.forward_passes:9d} {_size(s.disk_bytes):>10s} "
                f"{_size(s.memory_bytes):>10s} {s.seconds:8.0f}s{seen}" + (f"  {s.note}" if s.note else "")
            )
        total = f" {sum(took.get(s.stage, 0.0) for s in self.stages):8.0f}s" if took else ""
        rows.append(
            f"{'total':12s} {'':8s} {'':11s} {'':9s} {_size(self.disk_bytes):>10s} {'':10s} {self.seconds:8.0f}s"
            + total
        )
        m = self.model
        approx = "" if self.tokens_exact else f" (tokens estimated at {CHARS_PER_TOKEN} characters each)"
        rows.append(
            f"model {m.name}: {m.n_layers} layers, d_model {m.d_model}, ~{m.n_params / 1e6:.0f}M parameters "
            f"(shape from {m.source}){approx}; time: a FLOP model set on 2 CPU cores at {self.rate / 1e9:.0f} "
            "GFLOP/s, the matrix-product rate read just now (it moves with other work on the machine, and the "
            "times with it; whole runs within about 10% where it holds steady, single stages up to ~2x off: "
            "benchmarks/RESULTS.md)"
        )
        return "\n".join(rows)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def model_shape(name: str, lm: Any = None) -> ModelShape:
    """The shape of ``name`` (or of the loaded ``lm``) without loading weights."""
    if lm is not None:
        c = lm.model.config
        return _from_config(lm.name, c, "the loaded model")
    if name in KNOWN_SHAPES:
        return ModelShape(name, *KNOWN_SHAPES[name], source="afprobe's table of known models")
    path = Path(name)
    if (path / "config.json").is_file():
        data = json.loads((path / "config.json").read_text())
        return _from_config(name, _Obj(data), str(path / "config.json"))
    try:
        from transformers import AutoConfig

        return _from_config(name, AutoConfig.from_pretrained(name, local_files_only=True), "its hub config")
    except Exception:  # not cached here: the shape is unknown
        raise AfprobeError(
            f"cannot tell the shape of model {name!r} offline (no config.json here); fetch its config or "
            "give a local directory"
        ) from None


class _Obj:
    def __init__(self, data: dict[str, Any]):
        self.__dict__.update(data)


def _from_config(name: str, c: Any, source: str) -> ModelShape:
    d = int(c.hidden_size)
    heads = int(getattr(c, "num_attention_heads", 1))
    return ModelShape(
        name,
        int(c.num_hidden_layers),
        d,
        int(getattr(c, "intermediate_size", 4 * d)),
        int(getattr(c, "vocab_size", 32000)),
        int(getattr(c, "num_key_value_heads", heads) or heads),
        heads,
        source,
    )


def _token_counter(name: str, lm: Any) -> tuple[Callable[[str], int], bool]:
    """Tokens of a text: with the model's tokenizer when it is on this machine (a loaded model, a local
    directory, an embedded model already extracted), else from characters."""
    from afprobe.models import MODEL_ALIASES, embedded_gguf_path

    tok = getattr(lm, "tokenizer", None)
    where: dict[str, Any] | None = None
    if (Path(name) / "tokenizer.json").is_file():
        where = {"pretrained_model_name_or_path": name}
    elif name in MODEL_ALIASES and MODEL_ALIASES[name].gguf_member and embedded_gguf_path(name).is_file():
        gguf = embedded_gguf_path(name)
        where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    if tok is None and where is not None:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(**where, local_files_only=True)
        except Exception:  # fall back to characters
            tok = None
    if tok is not None:
        return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), True
    return (lambda text: round(len(text) / CHARS_PER_TOKEN)), False


def matmul_rate(seconds: float = 0.3, size: int = 1024) -> float:
    """Float32 matrix-product FLOP/s measured here (``size``-square products, best of a short loop)."""
    import torch

    a = torch.randn(size, size)
    a @ a
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / max(best, 1e-9)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_fits(est: Estimate, out: Path, free: Callable[[Path], int] | None = None) -> None:
    """Refuse (one line) a run whose outputs cannot fit on the disk of ``out`` (``free``: bytes free there)."""
    have = (free or free_bytes)(out)
    if est.disk_bytes > have:
        raise AfprobeError(
            f"the run needs about {_size(est.disk_bytes)} on disk and {out} has {_size(have)} free; "
            "free space, choose another --out, or cache fewer layers (cache.layers) or float16 (cache.dtype)"
        )
