"""What a run will cost before it runs (``afprobe run --dry-run``): per stage, the tokens, forward passes, disk
bytes and memory, from the config and the model's shape alone (no weights are loaded).

The shape comes from a loaded model when one is given, else from the model's ``config.json`` (a local directory,
or a hub id that ``transformers.AutoConfig`` finds offline), else from :data:`KNOWN_SHAPES` (the embedded model
and the shipped configs' models). Tokens are counted with the model's tokenizer when it loads offline (a local
directory or a loaded model), else estimated from characters (:data:`CHARS_PER_TOKEN`; marked ``approx``).

What is counted: the cache file is ``prompts x layers x positions x d_model`` values plus the token ids, lengths
and per-prompt text (exactly as the writer stores them); the probes' outputs hold one direction per probe,
layer and position; the causal stages' forward passes follow their settings (steering: settings x both tiers x
pairs; patching: layers x sites x pairs plus the clean and corrupted runs). Memory is the weights plus the
largest batch's activations (cache, causal stages) or one layer's activations and the solver's work (probes).
Time is forward FLOPs (``2 x parameters x tokens``) over a rate measured on the spot (a float32 matrix product
on this machine) at :data:`EFFICIENCY` of it, plus a fixed cost per batch: a rough figure, stated as such.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afprobe._errors import AfprobeError
from afprobe.pipeline._config import RunConfig

CHARS_PER_TOKEN = 3.6  # English chat text under BPE vocabularies of 32k-150k tokens
EFFICIENCY = 0.35  # share of the measured matmul rate a transformer forward reaches on a CPU
BATCH_OVERHEAD_S = 0.02  # Python and kernel launch cost per forward batch
CHAT_OVERHEAD_TOKENS = 24  # chat template tokens around the system and user messages
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
    def n_params(self) -> int:
        kv = self.d_model * self.d_model * self.kv_heads // max(1, self.heads)
        block = 2 * self.d_model * self.d_model + 2 * kv + 3 * self.d_model * self.mlp
        return self.n_layers * block + self.vocab * self.d_model


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
    stages: list[StageCost] = field(default_factory=list)

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "disk_bytes": self.disk_bytes, "seconds": self.seconds}

    def table(self) -> str:
        head = f"{'stage':12s} {'prompts':>8s} {'tokens':>11s} {'forwards':>9s} {'disk':>10s} {'memory':>10s} {'time':>9s}"
        rows = [head]
        for s in self.stages:
            rows.append(
                f"{s.stage:12s} {s.prompts:8d} {s.tokens:11d} {s.forward_passes:9d} {_size(s.disk_bytes):>10s} "
                f"{_size(s.memory_bytes):>10s} {s.seconds:8.0f}s" + (f"  {s.note}" if s.note else "")
            )
        rows.append(
            f"{'total':12s} {'':8s} {'':11s} {'':9s} {_size(self.disk_bytes):>10s} {'':10s} {self.seconds:8.0f}s"
        )
        m = self.model
        approx = "" if self.tokens_exact else f" (tokens estimated at {CHARS_PER_TOKEN} characters each)"
        rows.append(
            f"model {m.name}: {m.n_layers} layers, d_model {m.d_model}, ~{m.n_params / 1e6:.0f}M parameters "
            f"(shape from {m.source}){approx}; the time column is not calibrated yet (it can be off several-fold)"
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
    tok = getattr(lm, "tokenizer", None)
    if tok is None and (Path(name) / "tokenizer.json").is_file():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
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


def estimate_run(cfg: RunConfig, *, lm: Any = None, rate: float | None = None) -> Estimate:
    """Per-stage cost of ``cfg`` (see the module docstring)."""
    from afprobe.scenarios import build_scenario

    shape = model_shape(cfg.model.name, lm)
    count, exact = _token_counter(cfg.model.name, lm)
    flops = (rate if rate is not None else matmul_rate()) * EFFICIENCY
    est = Estimate(shape, exact)
    prompts = build_scenario(cfg.scenario)
    lengths = np.array([count(p.system_text) + count(p.user_text) + CHAT_OVERHEAD_TOKENS for p in prompts])
    n, max_len = len(prompts), int(lengths.max()) if len(prompts) else 0
    n_cached = shape.n_layers + 1 if cfg.cache.layers == "all" else len(cfg.cache.layers)
    n_pos = len(cfg.cache.positions)
    item = DTYPE_BYTES[cfg.cache.dtype]
    weights = shape.n_params * DTYPE_BYTES.get(cfg.model.dtype, 4)
    text = sum(len(p.request.text.encode()) + 64 for p in prompts)

    trunk = shape.n_params - shape.vocab * shape.d_model  # the cache never runs the unembedding

    def secs(tokens: int, batches: int, logits: bool = True) -> float:
        params = shape.n_params if logits else trunk
        return 2.0 * params * tokens / flops + BATCH_OVERHEAD_S * batches

    stages = set(cfg.stages) | {"scenarios", "cache"}
    est.stages.append(StageCost("scenarios", n, int(lengths.sum()), disk_bytes=text))
    bs = cfg.cache.batch_size
    batches = -(-n // bs)
    resid = n * n_cached * n_pos * shape.d_model * item
    est.stages.append(
        StageCost(
            "cache",
            n,
            int(lengths.sum()),
            n,
            resid + n * max_len * 8 + n * (8 + 8 * n_pos) + text + n * 8 * 16 + 20 * 1024,
            weights + bs * max_len * shape.d_model * 4 * 6 + bs * n_cached * n_pos * shape.d_model * 4,
            secs(int(batches * bs * max_len), batches, logits=False),
        )
    )
    if "probes" in stages:
        p = cfg.probes
        layers = len(p.layers) if p.layers else n_cached
        positions = len(p.positions) if p.positions else n_pos
        x = n * positions * shape.d_model * 4
        est.stages.append(
            StageCost(
                "probes",
                n,
                disk_bytes=len(p.probes) * layers * positions * shape.d_model * 8 + 256 * 1024,
                memory_bytes=3 * x + 2 * min(n, shape.d_model) ** 2 * 8 * (p.folds + 1),
                note=f"{layers} layers x {positions} positions read one layer at a time",
            )
        )
    causal = build_scenario(cfg.resolved_causal_scenario)
    pairs = len(causal) // 2
    c_len = max((count(q.system_text) + count(q.user_text) + CHAT_OVERHEAD_TOKENS for q in causal), default=0)
    if "compliance" in stages:
        c = cfg.compliance
        new = c.max_new_tokens if c.generate else 1
        tokens = int(lengths.sum()) + n * new
        batches = -(-n // c.batch_size)
        est.stages.append(
            StageCost(
                "compliance",
                n,
                tokens,
                n * (1 + (new if c.generate else 0)),
                n * (new * 8 + 512),
                weights + c.batch_size * (max_len + new) * shape.d_model * 4 * 6,
                secs(tokens, batches * (1 + new)),
            )
        )
    if "steering" in stages:
        s = cfg.steering
        n_layers = s.n_auto_layers if s.layers == "auto" else len(s.layers)
        settings = (
            n_layers * len(s.alphas) * 2 + n_layers * s.n_random * 2 + (n_layers if s.ablate else 0) + 1
        )
        rows = settings * 2 * pairs
        est.stages.append(
            StageCost(
                "steering",
                2 * pairs,
                rows * c_len,
                rows,
                settings * 2 * pairs * 64,
                weights + s.batch_size * c_len * shape.d_model * 4 * 6,
                secs(rows * c_len, -(-rows // s.batch_size)),
                note=f"~{settings} settings x {2 * pairs} prompts",
            )
        )
    if "patching" in stages:
        pc = cfg.patching
        n_layers = shape.n_layers + 1 if pc.layers == "all" else len(pc.layers)
        sites = n_layers * (n_pos + 1)
        rows = (sites + 2) * pairs * (2 if pc.noising else 1) + (3 * pairs if pc.attribution else 0)
        est.stages.append(
            StageCost(
                "patching",
                2 * pairs,
                rows * c_len,
                rows,
                rows * 64,
                weights + pc.batch_size * c_len * shape.d_model * 4 * (6 + n_layers),
                secs(rows * c_len, -(-rows // pc.batch_size)),
                note=f"{sites} sites x {pairs} pairs",
            )
        )
    if "report" in stages:
        est.stages.append(StageCost("report", disk_bytes=2_000_000, memory_bytes=300_000_000, seconds=10.0))
    return est


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
