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
Time follows what each stage computes: every system prompt once and then each prompt's own tokens (the shared
prefix), both teacher-forced continuations, one-token decoding steps, steering and patching settings that run
the blocks below their edited layer once per pass; FLOPs through the blocks (attention over the context
included) and the unembedding, over a matrix-product rate measured on the spot at :data:`EFFICIENCY` of it, plus
:data:`CALL_S_PER_BLOCK` per block per forward call; probes: a fixed cost and ~100 solver iterations per fit.
The constants were set from the organism and default runs on 2 CPU cores (benchmarks/RESULTS.md, "The dry-run
estimate", has the comparison per stage); on another machine or a GPU the rate is measured there, the constants
are not refitted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afprobe._errors import AfprobeError
from afprobe.pipeline._config import RunConfig

CHARS_PER_TOKEN = 3.6  # English chat text under BPE vocabularies of 32k-150k tokens
EFFICIENCY = 0.7  # share of the measured matmul rate a transformer forward reaches on a CPU
PROBE_S_PER_FIT = 0.0007  # fixed cost of one probe fit (a batched solver's share of Python and launches)
PROBE_FLOPS_PER_VALUE = 400.0  # FLOPs of one fit per activation value (n x d): ~100 solver iterations
CALL_S_PER_BLOCK = 0.001  # Python and kernel launch cost of one block in one forward call
CHAT_OVERHEAD_TOKENS = 24  # chat template tokens around the system and user messages
CHAT_SYSTEM_TOKENS = 8  # of which around the system message
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
            f"(shape from {m.source}){approx}; time: a FLOP model set on 2 CPU cores (per stage within about ±50%, see benchmarks/RESULTS.md)"
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


@dataclass
class _Work:
    """What a stage computes, for its time: FLOPs through the blocks and the unembedding, and forward calls (each
    costs :data:`CALL_S_PER_BLOCK` per block on top of its FLOPs: kernel launches and Python, which dominate
    one-token decoding steps on a CPU)."""

    shape: ModelShape
    flops: float = 0.0
    calls: float = 0.0

    def blocks(
        self, tokens: float, ctx: float = 0.0, calls: float = 0.0, n_blocks: float | None = None
    ) -> None:
        """``tokens`` through ``n_blocks`` blocks (all by default), each token attending to ``ctx`` tokens on
        average, in ``calls`` calls."""
        m = self.shape
        depth = m.n_layers if n_blocks is None else n_blocks
        self.flops += tokens * depth * (2.0 * m.block_params + 4.0 * m.d_model * ctx)
        self.calls += calls

    def logits(self, positions: float) -> None:
        self.flops += positions * 2.0 * self.shape.vocab * self.shape.d_model

    def seconds(self, rate: float) -> float:
        return self.flops / rate + CALL_S_PER_BLOCK * self.calls * self.shape.n_layers


def estimate_run(cfg: RunConfig, *, lm: Any = None, rate: float | None = None) -> Estimate:
    """Per-stage cost of ``cfg`` (see the module docstring)."""
    from afprobe.scenarios import ACCEPT_TAG, REJECT_TAG, build_scenario

    shape = model_shape(cfg.model.name, lm)
    count, exact = _token_counter(cfg.model.name, lm)
    flops = (rate if rate is not None else matmul_rate()) * EFFICIENCY
    est = Estimate(shape, exact)
    prompts = build_scenario(cfg.scenario)
    sys_len = {p.system_text: count(p.system_text) + CHAT_SYSTEM_TOKENS for p in prompts}
    user = np.array([count(p.user_text) + CHAT_OVERHEAD_TOKENS - CHAT_SYSTEM_TOKENS for p in prompts])
    lengths = np.array([sys_len[p.system_text] for p in prompts]) + user
    n, max_len = len(prompts), int(lengths.max()) if len(prompts) else 0
    n_sys, sys_mean = len(sys_len), float(np.mean(list(sys_len.values()))) if sys_len else 0.0
    k = count(ACCEPT_TAG) + count(REJECT_TAG)  # both continuations' tokens, teacher-forced
    n_cached = shape.n_layers + 1 if cfg.cache.layers == "all" else len(cfg.cache.layers)
    n_pos = len(cfg.cache.positions)
    item = DTYPE_BYTES[cfg.cache.dtype]
    weights = shape.n_params * DTYPE_BYTES.get(cfg.model.dtype, 4)
    text = sum(len(p.request.text.encode()) + 64 for p in prompts)

    def scored(
        w: _Work, rows: float, tail: float, edits: Sequence[int | None], batch: int, per_pass: int = 1
    ) -> None:
        """One teacher-forced scoring of ``rows`` prompts (``tail`` tokens each after what is shared, then both
        continuations) per setting, a setting's edit starting at the layer in ``edits`` (None: unedited),
        ``batch`` prompts and ``per_pass`` settings to a forward pass (two calls). In a pass, the blocks below
        the edited layer run once for all its settings."""
        ctx = sys_mean + tail / 2
        tokens = rows * (tail + k)
        for layer in sorted(set(edits), key=lambda x: -1 if x is None else x):
            n = sum(e == layer for e in edits)
            below = 0 if layer is None else min(layer, shape.n_layers)
            passes = -(-n // per_pass)
            w.blocks(n * tokens, ctx, 2 * passes * -(-rows // batch), shape.n_layers - below)
            w.blocks(passes * tokens, ctx, 0, below)
            w.logits(n * rows * (k + 1))

    stages = set(cfg.stages) | {"scenarios", "cache"}
    est.stages.append(StageCost("scenarios", n, int(lengths.sum()), disk_bytes=text))
    bs = cfg.cache.batch_size
    resid = n * n_cached * n_pos * shape.d_model * item
    w = _Work(shape)
    w.blocks(n_sys * sys_mean, sys_mean / 2, n_sys)  # each system prompt once, then what follows it
    w.blocks(float(user.sum()), sys_mean + float(user.mean()) / 2, -(-n // bs))
    est.stages.append(
        StageCost(
            "cache",
            n,
            int(lengths.sum()),
            n,
            resid + n * max_len * 8 + n * (8 + 8 * n_pos) + text + n * 8 * 16 + 20 * 1024,
            weights + bs * max_len * shape.d_model * 4 * 6 + bs * n_cached * n_pos * shape.d_model * 4,
            w.seconds(flops),
        )
    )
    if "probes" in stages:
        p = cfg.probes
        layers = len(p.layers) if p.layers else n_cached
        positions = len(p.positions) if p.positions else n_pos
        x = n * positions * shape.d_model * 4
        # every probe, layer and position is fitted on the full data, its folds (nested: outer x inner) and each
        # permutation draw
        fits = len(p.probes) * layers * positions * (1 + p.folds * (p.folds + 1) + p.permutations)
        est.stages.append(
            StageCost(
                "probes",
                n,
                disk_bytes=len(p.probes) * layers * positions * shape.d_model * 8 + 256 * 1024,
                memory_bytes=3 * x + 2 * min(n, shape.d_model) ** 2 * 8 * (p.folds + 1),
                seconds=fits * (PROBE_S_PER_FIT + PROBE_FLOPS_PER_VALUE * n * shape.d_model / flops),
                note=f"{layers} layers x {positions} positions read one layer at a time",
            )
        )
    causal = build_scenario(cfg.resolved_causal_scenario)
    pairs = len(causal) // 2
    c_user = float(np.mean([count(q.user_text) for q in causal])) + CHAT_OVERHEAD_TOKENS if causal else 0.0
    c_len = int(sys_mean + c_user)
    if "compliance" in stages:
        c = cfg.compliance
        new = c.max_new_tokens if c.generate else 0
        batches = -(-n // c.batch_size)
        w = _Work(shape)
        w.blocks(n_sys * sys_mean, sys_mean / 2, n_sys)
        scored(w, n, float(user.mean()), [None], c.batch_size)
        if new:  # prefill, then one token per row per step
            w.blocks(float(user.sum()), sys_mean, batches)
            w.blocks(n * new, sys_mean + float(user.mean()) + new / 2, batches * new)
            w.logits(n * new)
        est.stages.append(
            StageCost(
                "compliance",
                n,
                int(lengths.sum()) + n * (new + k),
                n * (1 + new),
                n * (new * 8 + 512),
                weights + c.batch_size * (max_len + new) * shape.d_model * 4 * 6,
                w.seconds(flops),
            )
        )
    if "steering" in stages:
        s = cfg.steering
        steered = (
            _auto_layers(shape.n_layers, s.n_auto_layers) if s.layers == "auto" else sorted(set(s.layers))
        )
        heads = any(a > 0 for a in s.alphas) + any(a < 0 for a in s.alphas)  # the random bands' alphas
        per_layer = len(s.alphas) + heads * 2 * s.n_random + ((1 + 2 * s.n_random) if s.ablate else 0)
        edits = [None, *[layer for layer in steered for _ in range(per_layer)]]
        settings = len(edits)
        w = _Work(shape)
        w.blocks(2 * pairs * c_len, c_len / 2, 3 * -(-2 * pairs // s.batch_size))  # the reads: 3 passes
        scored(w, 2 * pairs, c_user, [None], s.batch_size)  # the unsteered metric
        scored(w, 2 * pairs, c_user, edits, s.batch_size, max(1, s.max_rows // (2 * s.batch_size)))
        est.stages.append(
            StageCost(
                "steering",
                2 * pairs,
                int(2 * pairs * settings * (c_user + k)),
                settings * 2 * pairs,
                settings * 2 * pairs * 64,
                weights + s.batch_size * c_len * shape.d_model * 4 * 6,
                w.seconds(flops),
                note=f"{settings} settings x {2 * pairs} prompts",
            )
        )
    if "patching" in stages:
        pc = cfg.patching
        patched = list(range(shape.n_layers + 1)) if pc.layers == "all" else sorted(set(pc.layers))
        per_layer = (len(pc.positions) + pc.response) * (2 if pc.subspace else 1) + 2 * pc.window + 1
        per_layer += 2 if pc.subspace else 1  # the span, and its subspace
        patches: list[int | None] = [
            la for la in patched for _ in range(per_layer * (2 if pc.noising else 1))
        ]
        settings = len(patches)
        w = _Work(shape)
        # the clean metric and the stored values, then the patches
        w.blocks(2 * pairs * c_len, c_len / 2, 2 * -(-2 * pairs // pc.batch_size))
        scored(w, 2 * pairs, c_user, [None], pc.batch_size)
        scored(w, pairs, c_user, patches, pc.batch_size, max(1, pc.max_rows // (2 * pc.batch_size)))
        if pc.attribution:  # a forward and a backward pass (~2 forwards) of both tiers, both directions
            scored(w, 2 * pairs, c_len, [None] * 6, pc.batch_size)
        est.stages.append(
            StageCost(
                "patching",
                2 * pairs,
                int(settings * pairs * (c_user + k)),
                settings * pairs,
                settings * pairs * 64,
                weights + pc.batch_size * c_len * shape.d_model * 4 * (6 + len(patched)),
                w.seconds(flops),
                note=f"{settings} settings x {pairs} pairs",
            )
        )
    if "report" in stages:
        est.stages.append(StageCost("report", disk_bytes=2_000_000, memory_bytes=300_000_000, seconds=10.0))
    return est


def _auto_layers(n_layers: int, n_auto: int) -> list[int]:
    """The layers ``steering.layers: auto`` picks when every layer past the embedding has a direction (the
    probes' best layer may replace the nearest of them; that moves the cost little)."""
    from afprobe.experiments import evenly_spaced

    return evenly_spaced(list(range(1, n_layers + 1)), n_auto)


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
