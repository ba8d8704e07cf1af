"""Growth curves: how each stage's time and peak memory grow with the work, at real model widths, in one run.

Each curve's exponent is the least-squares slope of log(time) on log(size) (1 = linear); the points go in the
``markdown`` table under RESULTS.md's summary. Everything runs on one CPU thread (torch and BLAS pinned) and
times are CPU seconds of this process, so a machine shared with other jobs bends the curves less; peak memory is
the resident high-water mark above the memory resident before the call (``benchmarks/_memory.py``).

- cache: :class:`~afprobe.activations.CacheRunner`'s loop (forward, gather, HDF5 write) on random-init Llamas built
  in code (no download) with Llama-3.1-8B's block (d_model 4,096, MLP 14,336, 32 heads, 8 KV heads) and, for one
  curve, Llama-3.1-70B's (8,192, 28,672, 64, 8), but few layers and a 32,000-token vocabulary (only the embedding
  lookup touches it) so that they fit in 24 GiB; 32-token prompts. Time vs prompts and vs layers.
- probes: the probe stage's work at one candidate (layer, position) (41 problems: 5 folds x 6 label sets, 10
  inner training sets, the full fit) on
  synthetic activations (``benchmarks/_synthetic.py``), vs prompts (d_model 1,024) and vs d_model (1,000 prompts),
  for afprobe's batched probe (solver chosen by shape, named per point) and scikit-learn's loop. scikit-learn fits
  a stratified subset of 7 problems (two of each kind: task, permutation, inner folds; the full fit), extrapolated to
  the 41 by kind (stated: fitting all 41 would take tens of minutes at the large sizes).
- steering and patching: on the embedded model (8 prompts of one request), a sweep's time vs its number of
  settings (layers x alphas, several settings per forward pass) and exact and attribution patching's time vs
  the number of (layer, position) sites (2 pairs).

    .venv/bin/python benchmarks/bench_growth.py [--quick]
    .venv/bin/python -m benchmarks --only growth
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmarks._memory import measure_cpu, slope

Point = dict[str, Any]


@contextmanager
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


def _curve(name: str, sizes: list[int], run: Callable[[int], Point], size_key: str) -> dict[str, Any]:
    """``run`` at every size, after one untimed run at the smallest (imports, first allocations)."""
    run(sizes[0])
    points = []
    for s in sizes:
        p = run(s)
        p[size_key] = s
        points.append(p)
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())
        print(f"  {name}: {shown}", flush=True)
    return {"size": size_key, "points": points}


# ---- cache ---------------------------------------------------------------------------------------------------


def _llama(width: str, n_layers: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from afprobe.models import make_tiny_tokenizer, wrap_model

    d, mlp, heads = {"8b": (4096, 14336, 32), "70b": (8192, 28672, 64), "tiny": (512, 1536, 8)}[width]
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=d,
        intermediate_size=mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tok = make_tiny_tokenizer()
    tok.chat_template = "{{ messages }}"  # no warning about the plain format; caching never applies it here
    return wrap_model(model, tok, name=f"random-init {width} x {n_layers} layers")


def _prompts(n: int, length: int = 32) -> list[Any]:
    from afprobe.scenarios import POSITION_NAMES, TokenizedPrompt

    rng = np.random.default_rng(0)
    at = dict(zip(POSITION_NAMES, (8, 16, 24, length - 1), strict=False))
    return [TokenizedPrompt(None, "", rng.integers(3, 32000, length).tolist(), at) for _ in range(n)]  # type: ignore[arg-type]


def _cache_point(lm: Any, n: int, tmp: Path) -> Point:
    from afprobe.activations import ActivationWriter, CacheConfig, CacheRunConfig, CacheRunner
    from afprobe.models import ModelConfig

    toks = _prompts(n)
    layers = list(range(lm.n_layers + 1))
    cfg = CacheRunConfig(model=ModelConfig(backend="hooks"), cache=CacheConfig(batch_size=8))
    out = tmp / f"c{time.monotonic_ns()}.h5"
    runner = CacheRunner(cfg, progress=False)
    meta = {
        "pair_id": list(range(n)),
        "harmful": [True] * n,
        **{
            c: ["x"] * n
            for c in ("request_id", "tier", "cue_format", "system_prompt", "category", "request_text")
        },
    }

    def run() -> None:
        writer = ActivationWriter(
            out,
            run_key="growth",
            n_prompts=n,
            layers=layers,
            position_names=cfg.cache.positions,
            d_model=lm.d_model,
            max_len=32,
            dtype="float32",
            batch_size=8,
            meta=meta,
            attrs={"pad_token_id": 0},
        )
        runner._fill(writer, lm, toks, layers)
        writer.finalize().unlink()

    cpu, wall, mib, _ = measure_cpu(run)
    return {"cpu_s": cpu, "wall_s": wall, "peak_mib": mib}


def _layer_curve(width: str, counts: list[int], tmp: Path) -> dict[str, Any]:
    """One model with the most layers, cut to the first ``k`` blocks for each point."""
    lm = _llama(width, max(counts))
    blocks = lm.model.model.layers

    def by_layers(k: int) -> Point:
        lm.model.model.layers = blocks[:k]
        lm.model.config.num_hidden_layers = k
        lm.n_layers = k
        return _cache_point(lm, 8, tmp)

    return _curve("cache", counts, by_layers, "layers")


def _prompt_curve(width: str, n_layers: int, sizes: list[int], tmp: Path) -> dict[str, Any]:
    lm = _llama(width, n_layers)
    return _curve(f"cache {width}", sizes, lambda n: _cache_point(lm, n, tmp), "prompts")


def cache_curves(quick: bool, tmp: Path) -> dict[str, Any]:
    width = "tiny" if quick else "8b"
    out = {
        f"cache_vs_prompts_{width} (2 layers)": _prompt_curve(
            width, 2, [4, 8, 16] if quick else [8, 16, 32], tmp
        ),
        f"cache_vs_layers_{width} (8 prompts)": _layer_curve(width, [1, 2, 4], tmp),
    }
    if not quick:
        out["cache_vs_prompts_70b (1 layer)"] = _prompt_curve("70b", 1, [2, 4, 8], tmp)
    return out


# ---- probes --------------------------------------------------------------------------------------------------


def _probe_point(n: int, d: int) -> Point:
    from afprobe.probes import ProbeConfig
    from afprobe.probes._evaluate import Problems, fit_problems, solver_for
    from benchmarks._synthetic import stage_problems, synthetic_activations

    cfg = ProbeConfig()
    X, y, groups = synthetic_activations(n, d)
    problems, kinds, _ = stage_problems(y, groups, cfg)
    cpu = torch.device("cpu")
    t_b, _, m_b, _ = measure_cpu(lambda: fit_problems("torch_logistic", X[None], problems, cfg, cpu))
    t_s, m_s = 0.0, 0.0
    for kind in ("task", "null", "inner", "full"):
        pick = [i for i, k in enumerate(kinds) if k == kind][:2]
        for i in pick:
            sub = Problems(problems.pos[[i]], problems.y[[i]], problems.train[[i]])
            t, _, m, _ = measure_cpu(lambda sub=sub: fit_problems("logistic", X[None], sub, cfg, cpu))
            t_s += t * kinds.count(kind) / len(pick)
            m_s = max(m_s, m or 0.0)
    return {
        "solver": solver_for(cfg, len(y), d, problems, cpu),
        "batched_cpu_s": t_b,
        "batched_peak_mib": m_b,
        "sklearn_cpu_s_extrapolated": t_s,
        "sklearn_peak_mib": m_s,
        "speedup": t_s / t_b,
    }


def probe_curves(quick: bool) -> dict[str, Any]:
    prompts = [100, 300, 1000] if quick else [100, 300, 1000, 3000, 10000, 20000]
    widths = [576, 1024, 2048] if quick else [576, 1024, 2048, 4096, 8192]
    return {
        "probes_vs_prompts (d_model 1024)": _curve(
            "probes", prompts, lambda n: _probe_point(n, 1024), "prompts"
        ),
        "probes_vs_d_model (1000 prompts)": _curve(
            "probes", widths, lambda d: _probe_point(1000, d), "d_model"
        ),
    }


# ---- steering and patching -----------------------------------------------------------------------------------


def causal_curves(quick: bool) -> dict[str, Any]:
    from afprobe.experiments import (
        PatchSetting,
        SteerSetting,
        attribution_patching,
        collect,
        exact_patching,
        median_norms,
        pair_indices,
        prepare_prompts,
        run_sweep,
    )
    from afprobe.models import ModelConfig, load_model, make_backend
    from afprobe.scenarios import POSITION_NAMES, ScenarioConfig, build_scenario, tokenize_prompts

    torch.manual_seed(0)
    lm = load_model(ModelConfig(dtype="float32", device="cpu"))
    backend = make_backend(lm, "hooks")
    prompts = build_scenario(ScenarioConfig(limit=1, system_prompts=["helpful_only"]))
    items = prepare_prompts(lm.tokenizer, tokenize_prompts(lm.tokenizer, prompts))
    gen = torch.Generator().manual_seed(0)
    all_layers = list(range(lm.n_layers + 1))
    norms = median_norms(backend, items, all_layers, "from_cue")
    dirs = {
        layer: torch.nn.functional.normalize(torch.randn(lm.d_model, generator=gen), dim=0)
        for layer in all_layers
    }
    steer_sizes = [2, 4, 8] if quick else [2, 4, 8, 16]

    def steer(k: int) -> Point:
        layers = all_layers[4 : 4 + max(1, k // 2)]
        alphas = np.linspace(-2.0, 2.0, max(1, k // len(layers))).tolist()
        settings = [SteerSetting("probe", la, a, 0, dirs[la], norms[la]) for la in layers for a in alphas][:k]
        cpu, wall, mib, _ = measure_cpu(
            lambda: run_sweep(backend, items, settings, batch_size=4, max_rows=64)
        )
        return {"cpu_s": cpu, "wall_s": wall, "peak_mib": mib}

    pairs = pair_indices([it.prompt for it in items])[:2]
    positions = list(POSITION_NAMES)
    site_sizes = [4, 8, 16] if quick else [4, 8, 16, 32]

    def patch(k: int) -> Point:
        layers = all_layers[: max(1, k // len(positions))]
        store = collect(backend, items, pairs, layers, positions, 0, [], batch_size=len(pairs))
        settings = [PatchSetting(store, la, q) for la in layers for q in positions][:k]
        cpu, _, mib, _ = measure_cpu(
            lambda: exact_patching(backend, store, pairs, settings, "denoise", batch_size=len(pairs))
        )
        cpu_a, _, mib_a, _ = measure_cpu(
            lambda: attribution_patching(backend, store, pairs, positions, "denoise", batch_size=len(pairs))
        )
        return {
            "exact_cpu_s": cpu,
            "exact_peak_mib": mib,
            "attribution_cpu_s": cpu_a,
            "attribution_peak_mib": mib_a,
        }

    return {
        "steering_vs_settings (embedded model)": _curve("steering", steer_sizes, steer, "settings"),
        "patching_vs_sites (embedded model)": _curve("patching", site_sizes, patch, "sites"),
    }


# ---- all -----------------------------------------------------------------------------------------------------


def exponents(curves: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, c in curves.items():
        sizes = [p[c["size"]] for p in c["points"]]
        for key in c["points"][0]:
            if key.endswith(("_s", "_mib", "_extrapolated")) and not key.startswith("wall"):
                values = [max(float(p[key] or 0.0), 1e-3 if key.endswith("_s") else 1.0) for p in c["points"]]
                out[f"{name.split(' (')[0]}: {key}"] = slope(sizes, values)
    return out


def markdown(curves: dict[str, Any], exps: dict[str, float]) -> str:
    lines = [
        "Growth exponents (log-log slope; 1 = linear):",
        "",
        "| curve: measure | exponent |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in exps.items()]
    for name, c in curves.items():
        keys = [c["size"], *[k for k in c["points"][0] if k != c["size"]]]
        lines += ["", f"{name}:", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for p in c["points"]:
            cells = [f"{p[k]:.3g}" if isinstance(p[k], float) else str(p[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(*, quick: bool = False, only: str | None = None) -> dict[str, Any]:
    parts = (only or "cache,probes,causal").split(",")
    curves: dict[str, Any] = {}
    t0 = time.perf_counter()
    with _one_thread(), tempfile.TemporaryDirectory() as tmp:
        if "cache" in parts:
            curves |= cache_curves(quick, Path(tmp))
        if "probes" in parts:
            curves |= probe_curves(quick)
        if "causal" in parts:
            curves |= causal_curves(quick)
    exps = exponents(curves)
    print("\ngrowth exponents (log-log slope of CPU seconds or peak MiB on size):")
    for k, v in exps.items():
        print(f"  {k:70s} {v:6.2f}")
    return {
        "exponent": exps,
        "curves": curves,
        "seconds": time.perf_counter() - t0,
        "note": "CPU seconds on 1 thread; scikit-learn extrapolated from 7 of 41 problems",
        "markdown": markdown(curves, exps),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated parts: cache, probes, causal (default all)")
    a = ap.parse_args()
    main(quick=a.quick, only=a.only)
