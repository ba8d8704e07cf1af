"""What each stage of a run computes, for ``afprobe run --dry-run`` (:func:`estimate_run`).

What is counted: the cache file is ``prompts x layers x positions x d_model`` values plus the token ids, lengths
and per-prompt text (exactly as the writer stores them); the probes' outputs hold one direction per probe,
layer and position; the causal stages' forward passes follow their settings (steering: settings x both tiers x
pairs; patching: layers x sites x pairs plus the clean and corrupted runs); the scratchpad stage samples every
turn to its token limit (an upper bound: turns end early) and the transcripts stage replays what it wrote.
Memory is the weights plus the largest batch's activations (cache, causal stages) or one layer's activations
and the solver's work (probes).
Time follows what each stage computes: every system prompt once and then each prompt's own tokens (the shared
prefix), both teacher-forced continuations, one-token decoding steps, steering and patching settings that run
the blocks below their edited layer once per pass; FLOPs through the blocks (attention over the context
included) and the unembedding, over a matrix-product rate measured on the spot at :data:`EFFICIENCY` of it
(attention over the context at :data:`ATTENTION_EFFICIENCY`), plus :data:`CALL_S_PER_BLOCK` per block per forward
call; probes: a fixed cost and ~100 solver iterations per fit. The constants were set from the organism and
default runs on 2 CPU cores (benchmarks/RESULTS.md, "The dry-run estimate", has the comparison per stage, the
paper config's included); on another machine or a GPU the rate is measured there, the constants are not
refitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from afprobe.pipeline._config import RunConfig
from afprobe.pipeline._estimate import (
    DTYPE_BYTES,
    Estimate,
    ModelShape,
    StageCost,
    _token_counter,
    matmul_rate,
    model_shape,
)

EFFICIENCY = 0.7  # share of the measured matmul rate a transformer forward reaches on a CPU
# share of the measured matmul rate attention over the context reaches: on CPU as much as the linear layers since
# attention over a stored prefix runs as one dense kernel call per layer (models/_attention.py); it was 0.3 when
# every row attended to its own copy of the prefix
ATTENTION_EFFICIENCY = 0.7
PROBE_S_PER_FIT = 0.0007  # fixed cost of one probe fit (a batched solver's share of Python and launches)
PROBE_FLOPS_PER_VALUE = 400.0  # FLOPs of one fit per activation value (n x d): ~100 solver iterations
CALL_S_PER_BLOCK = 0.001  # Python and kernel launch cost of one block in one forward call
CHAT_OVERHEAD_TOKENS = 24  # chat template tokens around the system and user messages
CHAT_SYSTEM_TOKENS = 8  # of which around the system message
NEXT_TOKENS = 16  # the <NEXT/> user turn between assistant turns, with its chat template tokens


@dataclass
class _Work:
    """What a stage computes, for its time: FLOPs through the blocks and the unembedding, and forward calls (each
    costs :data:`CALL_S_PER_BLOCK` per block on top of its FLOPs: kernel launches and Python, which dominate
    one-token decoding steps on a CPU)."""

    shape: ModelShape
    flops: float = 0.0
    attention: float = 0.0  # of which attention over the context (at ATTENTION_EFFICIENCY of the rate)
    calls: float = 0.0

    def blocks(
        self, tokens: float, ctx: float = 0.0, calls: float = 0.0, n_blocks: float | None = None
    ) -> None:
        """``tokens`` through ``n_blocks`` blocks (all by default), each token attending to ``ctx`` tokens on
        average, in ``calls`` calls."""
        m = self.shape
        depth = m.n_layers if n_blocks is None else n_blocks
        self.flops += tokens * depth * 2.0 * m.block_params
        self.attention += tokens * depth * 4.0 * m.d_model * ctx
        self.calls += calls

    def logits(self, positions: float) -> None:
        self.flops += positions * 2.0 * self.shape.vocab * self.shape.d_model

    def seconds(self, rate: float) -> float:
        """At ``rate`` FLOP/s for the matrix products (already scaled by :data:`EFFICIENCY`)."""
        compute = self.flops / rate + self.attention / (rate * ATTENTION_EFFICIENCY / EFFICIENCY)
        return compute + CALL_S_PER_BLOCK * self.calls * self.shape.n_layers


def estimate_run(cfg: RunConfig, *, lm: Any = None, rate: float | None = None) -> Estimate:
    """Per-stage cost of ``cfg`` (see the module docstring)."""
    from afprobe.scenarios import ACCEPT_TAG, REJECT_TAG, build_scenario

    shape = model_shape(cfg.model.name, lm)
    count, exact = _token_counter(cfg.model.name, lm)
    rate = rate if rate is not None else matmul_rate()
    flops = rate * EFFICIENCY
    est = Estimate(shape, exact, rate=rate)
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
        # every probe, layer and position is fitted on the full data, its folds (nested: one fit per pair of
        # outer folds, which serves both as each other's inner fold) and each permutation draw
        fits = (
            len(p.probes) * layers * positions * (1 + p.folds + p.folds * (p.folds - 1) // 2 + p.permutations)
        )
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
    c_sys = len({q.system_text for q in causal})

    def after_system(w: _Work, rows: float, passes: int, batch: int) -> None:
        """``passes`` reads of ``rows`` causal prompts, each system prompt once (stored), then each prompt's own
        tokens."""
        w.blocks(c_sys * sys_mean, sys_mean / 2, c_sys)
        w.blocks(passes * rows * c_user, sys_mean + c_user / 2, passes * -(-rows // batch))

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
    gen = 0.0  # tokens the scratchpad stage writes per transcript, at most
    if "scratchpad" in stages:
        sp = cfg.scratchpad
        rows = n * sp.samples
        turn = sp.max_new_tokens + NEXT_TOKENS
        gen = float(sp.max_turns * turn)
        batches = -(-rows // sp.batch_size)
        w = _Work(shape)
        w.blocks(n_sys * sys_mean, sys_mean / 2, n_sys)
        # each prompt's own tokens once per sample, then one token per row per step, every turn to its limit
        w.blocks(rows * float(user.mean()), sys_mean, batches)
        w.blocks(rows * gen, sys_mean + float(user.mean()) + gen / 2, batches * gen)
        w.logits(rows * gen)
        judged = ""
        if sp.judge.kind == "local":  # each vote reads the judge's prompt and the scratchpad, then answers
            from afprobe.experiments._judges import JUDGE_SYSTEM, judge_user_message

            votes = rows * sp.judge.n_votes
            j_len = count(JUDGE_SYSTEM + judge_user_message("")) + CHAT_OVERHEAD_TOKENS + gen
            j_batches = -(-votes // sp.judge.batch_size)
            w.blocks(votes * j_len, j_len / 2, j_batches)
            w.blocks(
                votes * sp.judge.max_tokens, j_len + sp.judge.max_tokens / 2, j_batches * sp.judge.max_tokens
            )
            w.logits(votes * sp.judge.max_tokens)
            judged = f", {votes} local judge votes"
        elif sp.judge.kind == "endpoint":
            judged = f", {rows * sp.judge.n_votes} judge votes on the endpoint (not counted)"
        est.stages.append(
            StageCost(
                "scratchpad",
                n,
                int(rows * (float(user.mean()) + sys_mean + gen)),
                rows * (1 + int(gen)),
                int(rows * (gen * 8 + 1024)),
                int(weights + sp.batch_size * (max_len + gen) * shape.d_model * 4 * 6),
                w.seconds(flops),
                note=f"{rows} transcripts, at most {sp.max_turns} turns of {sp.max_new_tokens} tokens{judged}",
            )
        )
    if "transcripts" in stages and "scratchpad" in stages:
        tc = cfg.transcripts
        rows = n * cfg.scratchpad.samples
        t_len = float(user.mean()) + gen
        w = _Work(shape)
        w.blocks(n_sys * sys_mean, sys_mean / 2, n_sys)
        w.blocks(rows * t_len, sys_mean + t_len / 2, -(-rows // tc.batch_size))
        t_layers = shape.n_layers + 1 if tc.layers == "all" else len(tc.layers)
        est.stages.append(
            StageCost(
                "transcripts",
                rows,
                int(rows * (sys_mean + t_len)),
                rows,
                rows * t_layers * len(tc.positions) * shape.d_model * DTYPE_BYTES[tc.dtype] + 20 * 1024,
                int(weights + tc.batch_size * (max_len + gen) * shape.d_model * 4 * 6),
                w.seconds(flops),
                note=f"{rows} transcripts replayed, {len(tc.positions)} spans",
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
        # the reads (the probe's position, the mean projections, the norms for residual_norm): after the
        # stored system prompt, or whole rows where the steered tokens start at token 0
        n_reads = 2 + (s.scale == "residual_norm")
        from_start = n_reads - 1 if s.edit_start == "all" else 0
        after_system(w, 2 * pairs, n_reads - from_start, cfg.compliance.batch_size)
        w.blocks(
            from_start * 2 * pairs * c_len, c_len / 2, from_start * -(-2 * pairs // cfg.compliance.batch_size)
        )
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
        # the stored values (after the stored system prompt), the clean metric, then the patches
        after_system(w, 2 * pairs, 1, pc.batch_size)
        scored(w, 2 * pairs, c_user, [None], pc.batch_size)
        scored(w, pairs, c_user, patches, pc.batch_size, max(1, pc.max_rows // (2 * pc.batch_size)))
        if pc.attribution:  # a forward and a backward pass (~2 forwards) of both tiers, both directions
            scored(w, 2 * pairs, c_user, [None] * 6, pc.batch_size)  # after the stored system prompt
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
    """The layers ``steering.layers: auto`` picks when every layer past the embedding has a direction, the
    probes' best layer (not known before the run) taken to be the middle one: it replaces the nearest pick, as in
    :func:`afprobe.experiments.choose_layers` (with one layer to steer, it is the only one, and where it sits
    sets how many blocks each setting runs)."""
    from afprobe.experiments import evenly_spaced

    picks = set(evenly_spaced(list(range(1, n_layers + 1)), n_auto))
    mid = (n_layers + 1) // 2
    if picks and mid not in picks:
        picks.remove(min(picks, key=lambda x: abs(x - mid)))
        picks.add(mid)
    return sorted(picks)
