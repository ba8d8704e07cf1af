"""Activation patching between the free and paid twin of every pair.

- Denoising (free → paid): run the paid prompt with the free run's residual stream at one layer and site;
  noising (paid → free) the reverse. Both are normalized on one scale: 0 = the unpatched paid run, 1 = the free
  run, computed on the mean over pairs (per-pair values are kept raw).
- Sites: named positions (each twin's own token index, so misaligned pairs work), single tokens at offsets
  around the cue, and ``from_cue``: every prompt token from the first token of the tier value (which may span
  several tokens) to the last prompt token (token-aligned pairs only).
- Subspace patching moves only the component along the probe direction: the fraction of full patching it
  recovers is the direct test of whether that one direction carries the effect.

Patches are written as an ``add`` of (donor − recipient), exact because a patch at layer L leaves the
recipient's own layer-L activations untouched until the edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from afprobe.experiments._rows import RowBatch, make_row_batch
from afprobe.experiments._scoring import score_settings
from afprobe.experiments._subject import ScoredPrompt
from afprobe.models import Backend, Edit, PrefixStore, plan_prefixes, prefix_batches, prompt_keys

SPAN = "from_cue"
RESPONSE = "response"  # the accept / reject tag tokens after the prompt, where the metric is read


@dataclass
class PatchStore:
    """Residual-stream values the patches need, per prompt: named positions at every layer, the cue window
    (aligned pairs) and the cue-to-last span at the subspace layers (aligned pairs)."""

    layers: list[int]
    positions: list[str]
    window: int
    span_layers: list[int]
    partner: dict[int, int]
    aligned: set[int]
    named: dict[int, Tensor] = field(default_factory=dict)  # [L, Q, d]
    win: dict[int, Tensor] = field(default_factory=dict)  # [L, 2w+1, d]
    win_pos: dict[int, Tensor] = field(default_factory=dict)  # [2w+1] token index (clipped)
    win_ok: dict[int, Tensor] = field(default_factory=dict)  # [2w+1] bool
    span: dict[int, Tensor] = field(default_factory=dict)  # [Ls, n, d]
    span_start: dict[int, int] = field(default_factory=dict)
    resp: dict[int, tuple[Tensor, Tensor]] = field(
        default_factory=dict
    )  # accept, reject rows: [L, k, d] each
    items: list[ScoredPrompt] = field(default_factory=list)

    @property
    def offsets(self) -> list[int]:
        return list(range(-self.window, self.window + 1))

    def site(self, i: int, layer: int, site: str, row: int = 0) -> tuple[Tensor, Tensor]:
        """``(token indices [k], values [k, d])`` of prompt ``i`` at ``layer`` and ``site``; ``row`` 0 is the
        prompt followed by the accept tag, 1 by the reject tag (it matters only for the ``response`` site)."""
        li = self.layers.index(layer)
        if site == RESPONSE:
            v = self.resp[i][row][li]
            return self.items[i].length + torch.arange(v.shape[0]), v
        if site in self.positions:
            q = self.positions.index(site)
            return torch.tensor([self.items[i].tok.positions[site]]), self.named[i][li, q : q + 1]
        if site == SPAN:
            n = self.span[i].shape[1]
            return torch.arange(self.span_start[i], self.span_start[i] + n), self.span[i][
                self.span_layers.index(layer)
            ]
        o = self.offsets.index(int(site.removeprefix("cue")))
        return self.win_pos[i][o : o + 1], self.win[i][li, o : o + 1] * self.win_ok[i][o]


def collect(
    backend: Backend,
    items: Sequence[ScoredPrompt],
    pairs: Sequence[tuple[int, int]],
    layers: Sequence[int],
    positions: Sequence[str],
    window: int,
    span_layers: Sequence[int],
    *,
    batch_size: int = 4,
    prefixes: PrefixStore | None = None,
    share_prefix: bool = True,
) -> PatchStore:
    """One pass over every prompt of ``pairs``, keeping what the patches will need. Tokens before the first one
    kept (the system prompt, in practice) come from the stored KV cache of the prefix the prompts share
    (``prefixes``, or a store of this call's own): the same values as whole rows, up to float rounding."""
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    aligned = set()
    for a, b in pairs:
        ta, tb = items[a].tok, items[b].tok
        if len(ta.input_ids) == len(tb.input_ids) and ta.positions == tb.positions:
            aligned |= {a, b}
    store = PatchStore(
        list(layers), list(positions), window, list(span_layers), partner, aligned, items=list(items)
    )
    read = sorted(set(layers) | set(span_layers))
    pad_id = int(backend.lm.tokenizer.pad_token_id)
    prefixes = prefixes if prefixes is not None else PrefixStore(backend)
    order = sorted(partner)
    toks = [items[i].tok for i in order]
    plan = [0] * len(order)
    if share_prefix and prefixes.usable:
        limits = [_first_kept(store, items, i) for i in order]
        plan = plan_prefixes([t.input_ids for t in toks], prompt_keys(toks), limits)
    with torch.inference_mode():
        for cols in prefix_batches([t.input_ids for t in toks], plan, batch_size):
            chunk = [order[c] for c in cols]
            p = plan[cols[0]]  # columns [0, p) come from the stored prefix (one per batch)
            batch = make_row_batch(items, chunk, pad_id)
            if p == 0:
                out = backend.run(batch.input_ids, batch.attention_mask, read_layers=read, logits=False)
            else:
                n = batch.n_rows
                out = backend.run(
                    batch.input_ids[:, p:],
                    batch.attention_mask,
                    read_layers=read,
                    logit_positions=torch.zeros(n, 1, dtype=torch.long),
                    **prefixes.continue_from(items[chunk[0]].tok.input_ids[:p], n, batch.seq_len),
                )
            h = {layer: out.resid[layer].float().cpu() for layer in read}
            for r, i in enumerate(batch.indices):
                _keep(store, items, i, h, 2 * r, layers, positions, span_layers, p)
    return store


def _first_kept(store: PatchStore, items: Sequence[ScoredPrompt], i: int) -> int:
    """The first token of prompt ``i`` whose values ``collect`` keeps."""
    tp = items[i].tok
    first = min(tp.positions[q] for q in store.positions)
    if i in store.aligned:
        first = min(first, max(0, tp.positions["cue"] - store.window))
        if store.span_layers:
            first = min(first, _span_start(store, items, i))
    return first


def _span_start(store: PatchStore, items: Sequence[ScoredPrompt], i: int) -> int:
    """Where prompt ``i`` first differs from its twin: the start of the span the span sites patch."""
    tp = items[i].tok
    return first_difference(tp.input_ids, items[store.partner[i]].tok.input_ids, tp.positions["cue"])


def _keep(
    store: PatchStore,
    items: Sequence[ScoredPrompt],
    i: int,
    h: dict[int, Tensor],
    r: int,
    layers: Sequence[int],
    positions: Sequence[str],
    span_layers: Sequence[int],
    p: int = 0,
) -> None:
    """Keep prompt ``i``'s values from rows ``r`` (prompt + accept tag) and ``r + 1`` (prompt + reject tag), whose
    columns start at token ``p`` (the rows continued from a ``p``-token cache)."""
    tp, it = items[i].tok, items[i]
    n = len(tp.input_ids)
    idx = torch.tensor([tp.positions[q] for q in positions])
    store.named[i] = torch.stack([h[layer][r, idx - p] for layer in layers])
    store.resp[i] = tuple(  # type: ignore[assignment]
        torch.stack([h[layer][r + c, n - p : n - p + len(cont)] for layer in layers])
        for c, cont in enumerate((it.accept, it.reject))
    )
    if i not in store.aligned:
        return
    raw = torch.tensor([tp.positions["cue"] + o for o in store.offsets])
    store.win_ok[i] = (raw >= 0) & (raw < n)
    store.win_pos[i] = raw.clamp(0, n - 1)
    store.win[i] = torch.stack([h[layer][r, store.win_pos[i] - p] for layer in layers])
    if span_layers:
        start = _span_start(store, items, i)
        store.span_start[i] = start
        store.span[i] = torch.stack([h[layer][r, start - p : n - p] for layer in span_layers])


def first_difference(a: Sequence[int], b: Sequence[int], cue: int) -> int:
    """First token where two twins differ (the start of the tier value, which may span several tokens), at most
    the cue token."""
    return min(cue, next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), cue))


@dataclass(frozen=True)
class PatchSetting:
    """Patch each recipient prompt with its twin's activations at ``layer`` and ``site``; ``subspace`` moves only
    the component along ``direction``."""

    store: PatchStore
    layer: int
    site: str
    direction: Tensor | None = None

    @property
    def kind(self) -> str:
        return "subspace" if self.direction is not None else "full"

    def __call__(self, batch: RowBatch) -> list[Edit]:
        vals, poss = [], []
        for r in range(batch.n_rows):
            i = batch.indices[r // 2]
            pos, mine = self.store.site(i, self.layer, self.site, r % 2)
            _, theirs = self.store.site(self.store.partner[i], self.layer, self.site, r % 2)
            k = min(len(mine), len(theirs))
            delta = theirs[:k] - mine[:k]
            if self.direction is not None:
                u = self.direction.to(delta.dtype)
                delta = (delta @ u)[:, None] * u[None, :]
            vals.append(delta)
            poss.append(pos[:k])
        k = max(len(p) for p in poss)
        d = vals[0].shape[-1]
        v = torch.zeros(len(vals), k, d)
        p = torch.zeros(len(vals), k, dtype=torch.long)
        for r, (vv, pp) in enumerate(zip(vals, poss, strict=True)):
            v[r, : len(pp)], p[r, : len(pp)], p[r, len(pp) :] = vv, pp, pp[-1]
        return [Edit(self.layer, "add", v, p)]


Direction = Literal["denoise", "noise"]


@dataclass
class PatchGrid:
    """Exact patching results: ``metric[setting, pair]`` of the recipients, with the settings' labels."""

    direction: Direction
    settings: list[PatchSetting]
    pairs: list[tuple[int, int]]
    metric: np.ndarray

    def lookup(self, kind: str, layer: int, site: str) -> np.ndarray | None:
        for s, row in zip(self.settings, self.metric, strict=True):
            if s.kind == kind and s.layer == layer and s.site == site:
                return row
        return None


def exact_patching(
    backend: Backend,
    store: PatchStore,
    pairs: Sequence[tuple[int, int]],
    settings: Sequence[PatchSetting],
    direction: Direction,
    *,
    batch_size: int = 4,
    max_rows: int = 64,
    share_prefix: bool = True,
    progress: bool = False,
    prefixes: PrefixStore | None = None,
) -> PatchGrid:
    """Recipients' metric under each setting: paid prompts for ``denoise``, free prompts for ``noise``."""
    recipients = [b if direction == "denoise" else a for a, b in pairs]
    scores = score_settings(
        backend,
        store.items,
        list(settings),
        indices=recipients,
        batch_size=batch_size,
        max_rows=max_rows,
        share_prefix=share_prefix,
        progress=progress,
        description=f"patching ({direction})",
        prefixes=prefixes,
    )
    return PatchGrid(direction, list(settings), list(pairs), scores.metric)


def normalized(patched: np.ndarray, free: np.ndarray, paid: np.ndarray, min_gap: float) -> float | None:
    """``(mean patched − mean paid) / (mean free − mean paid)``; ``None`` when the gap is below ``min_gap``."""
    gap = float(free.mean() - paid.mean())
    if not np.isfinite(gap) or abs(gap) < max(min_gap, 1e-12):
        return None
    return float((patched.mean() - paid.mean()) / gap)


def grid_matrix(
    grid: PatchGrid,
    kind: str,
    layers: Sequence[int],
    sites: Sequence[str],
    clean: np.ndarray,
    min_gap: float,
    restrict: set[int] | None = None,
) -> tuple[list[list[float | None]], list[list[float]]]:
    """``[layer][site]`` normalized effects (``None`` when undefined) and raw mean shifts of the recipients."""
    free = np.array([clean[a] for a, _ in grid.pairs])
    paid = np.array([clean[b] for _, b in grid.pairs])
    keep = np.array([restrict is None or a in restrict for a, _ in grid.pairs])
    base = paid if grid.direction == "denoise" else free
    norm_m, raw_m = [], []
    for layer in layers:
        nrow: list[float | None] = []
        rrow: list[float] = []
        for site in sites:
            row = grid.lookup(kind, layer, site)
            if row is None or not keep.any():
                nrow.append(None)
                rrow.append(float("nan"))
                continue
            nrow.append(normalized(row[keep], free[keep], paid[keep], min_gap))
            rrow.append(float((row[keep] - base[keep]).mean()))
        norm_m.append(nrow)
        raw_m.append(rrow)
    return norm_m, raw_m


def pair_rows(grid: PatchGrid, clean: np.ndarray, items: Sequence[ScoredPrompt]) -> list[dict[str, Any]]:
    """Per-pair CSV rows (raw metrics: patched recipient, free run, paid run)."""
    rows = []
    for s, metric in zip(grid.settings, grid.metric, strict=True):
        for (a, b), v in zip(grid.pairs, metric, strict=True):
            per_token = s.site == SPAN or (s.site.startswith("cue") and s.site != "cue")
            if per_token and a not in s.store.aligned:
                continue
            p = items[a].prompt
            rows.append(
                {
                    "kind": s.kind,
                    "direction": grid.direction,
                    "layer": s.layer,
                    "site": s.site,
                    "pair_id": p.pair_id,
                    "request_id": p.request_id,
                    "system_prompt": p.system_prompt,
                    "cue_format": p.cue_format,
                    "patched": float(v),
                    "free": float(clean[a]),
                    "paid": float(clean[b]),
                }
            )
    return rows


def window_sites(window: int) -> list[str]:
    return [f"cue{o:+d}" for o in range(-window, window + 1)]


def run_exact(
    backend: Backend,
    store: PatchStore,
    pairs: Sequence[tuple[int, int]],
    layers: Sequence[int],
    directions: dict[int, Tensor],
    *,
    noising: bool,
    subspace: bool,
    response: bool = True,
    batch_size: int,
    max_rows: int,
    share_prefix: bool,
    progress: bool,
    prefixes: PrefixStore | None = None,
) -> dict[str, PatchGrid]:
    """Every exact patch: named sites (and, with ``response``, the tag tokens) on all pairs; window and span sites
    on aligned pairs. Response-site patches edit the continuation, so they are scored in passes of their own (the
    prompt-site ones keep sharing their unedited prefix)."""
    sites = named_sites(store, response)
    named = [PatchSetting(store, layer, q) for layer in layers for q in sites]
    if subspace:
        named += [
            PatchSetting(store, layer, q, directions[layer]) for layer in store.span_layers for q in sites
        ]
    aligned_pairs = [pq for pq in pairs if pq[0] in store.aligned]
    per_token = [PatchSetting(store, layer, s) for layer in layers for s in window_sites(store.window)]
    spans = [PatchSetting(store, layer, SPAN) for layer in store.span_layers]
    if subspace:
        spans += [PatchSetting(store, layer, SPAN, directions[layer]) for layer in store.span_layers]
    out: dict[str, PatchGrid] = {}
    kw = {
        "batch_size": batch_size,
        "max_rows": max_rows,
        "share_prefix": share_prefix,
        "progress": progress,
        "prefixes": prefixes if prefixes is not None else PrefixStore(backend),
    }
    for direction in ("denoise", "noise") if noising else ("denoise",):
        prompt_sites = [s for s in named if s.site != RESPONSE]
        grid = exact_patching(backend, store, pairs, prompt_sites, direction, **kw)  # type: ignore[arg-type]
        resp = [s for s in named if s.site == RESPONSE]
        if resp:
            more = exact_patching(backend, store, pairs, resp, direction, **kw)  # type: ignore[arg-type]
            grid = PatchGrid(
                grid.direction,
                grid.settings + more.settings,
                grid.pairs,
                np.vstack([grid.metric, more.metric]),
            )
        out[f"named_{direction}"] = grid
        if aligned_pairs:
            out[f"window_{direction}"] = exact_patching(
                backend,
                store,
                aligned_pairs,
                per_token + spans,
                direction,
                **kw,  # type: ignore[arg-type]
            )
    return out


def named_sites(store: PatchStore, response: bool = True) -> list[str]:
    """The named positions, then (``response``) the tag tokens."""
    return [*store.positions, *([RESPONSE] if response else [])]
