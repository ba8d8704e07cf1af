"""``ProbeRunner(cfg).run(activations, out_dir)``: an activation file -> probe accuracy by layer and position,
baselines, the tested headline, generalization, directions and plots in one directory (``afprobe probe``)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch

import afprobe
from afprobe._device import resolve_device
from afprobe._progress import progress_bar
from afprobe.activations import ActivationReader
from afprobe.probes._config import ProbeConfig, ProbeRunConfig
from afprobe.probes._directions import (
    ProbeDirections,
    cosine_between_layers,
    cosine_between_probes,
    unit_rows,
)
from afprobe.probes._evaluate import cross_validate_layer, transfer_matrix
from afprobe.probes._headline import LayerScores, best_block, curve_point, pick_best
from afprobe.probes._labels import LabelSets
from afprobe.probes._metrics import RequestBootstrap
from afprobe.probes._outputs import check_output_dir, read_probe_results
from afprobe.probes._plan import Plan, check_finite, label_sets, make_plan
from afprobe.probes._power import auroc_power
from afprobe.probes._report import write_outputs
from afprobe.probes._selection import (
    MIN_NESTED_FOLDS,
    Family,
    nested_selection,
    permutation_test,
    set_metrics,
    stability,
)
from afprobe.probes._surface import surface_baseline

CUE_NOTE = (
    "the cue position reads the tier token itself, so a probe there is trivially accurate; it is reported "
    "but excluded from `best`, which comes from the positions after the cue"
)


class ProbeRunner:
    """Fit every probe type at every (layer, position) with request-grouped cross-validation, test the headline
    (nested selection, max-statistic permutation test, surface baseline, power), and write ``out``."""

    def __init__(self, cfg: ProbeRunConfig | None = None, *, progress: bool = True, overwrite: bool = False):
        run = cfg or ProbeRunConfig()
        self.cfg = run.probes
        self.seed = run.seed
        self.overwrite = overwrite
        self.progress = progress

    def run(self, out: str | Path, *, activations: str | Path) -> Path:
        """Probe ``activations`` (an ``afprobe cache`` file) into the directory ``out``; return ``out``."""
        out = Path(out)
        t0 = time.perf_counter()
        with ActivationReader(activations) as reader:
            plan = make_plan(reader, self.cfg, self.seed)
            check_output_dir(out, self.overwrite)
            check_finite(reader, plan)
            device = resolve_device(self.cfg.device)
            labels = label_sets(plan, self.cfg, self.seed)
            layer_fits = self._fit_layers(reader, plan, labels, device)
            t_fit = time.perf_counter()
            results, tables, extra = self._summarize(reader, plan, labels, layer_fits, device)
            results["provenance"]["timings"] = {
                "fit_s": round(t_fit - t0, 3),
                "total_s": round(time.perf_counter() - t0, 3),
            }
            write_outputs(out, self.overwrite, results, tables, extra, self.cfg.plots)
        return out

    def _fit_layers(
        self, reader: ActivationReader, plan: Plan, labels: LabelSets, device: torch.device
    ) -> dict[str, list[LayerScores]]:
        cfg = self.cfg
        cand = [plan.positions.index(p) for p in plan.candidates]
        nested = labels.n_folds >= MIN_NESTED_FOLDS and bool(cand)
        y_sets = np.vstack([labels.y[None, :], labels.null])
        fits: dict[str, list[LayerScores]] = {p: [] for p in cfg.probes}
        with progress_bar(self.progress, "probing ") as bar:
            task = bar.add_task(
                f"{len(plan.layers)} layers x {len(plan.positions)} positions, {labels.n_test} permutations",
                total=len(plan.layers),
            )
            for layer in plan.layers:
                X = reader.layer(layer)[:, plan.columns, :].transpose(1, 0, 2)  # [position, prompt, d_model]
                for probe in cfg.probes:
                    fit = cross_validate_layer(
                        probe, X, labels, cand, cfg, device, nested=nested and probe == cfg.headline
                    )
                    auc, acc = set_metrics(y_sets, fit.oof)
                    fits[probe].append(LayerScores(auc, acc, fit.oof[0], fit.inner, fit.coef, fit.warnings))
                bar.advance(task)
        return fits

    def _summarize(
        self,
        reader: ActivationReader,
        plan: Plan,
        labels: LabelSets,
        fits: dict[str, list[LayerScores]],
        device: torch.device,
    ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[str, Any]]:
        cfg = self.cfg
        boot = RequestBootstrap(plan.groups, cfg.bootstrap, self.seed + 3, cfg.ci)
        y = plan.y
        surface = surface_baseline(reader, y, plan.folds, cfg.headline, cfg, device, boot)
        cand = [plan.positions.index(p) for p in plan.candidates]
        test = permutation_test(
            Family(
                list(cfg.probes),
                plan.layers,
                plan.candidates,
                np.array([[f.auroc[0, cand] for f in fits[p]] for p in cfg.probes]),
                np.array(
                    [[f.auroc[1 : 1 + labels.n_test, cand] for f in fits[p]] for p in cfg.probes]
                ).transpose(2, 0, 1, 3),
            ),
            cfg.alpha,
            labels.null_kind,
        )
        site_p = test.pop("site_p")
        per_layer = []
        for qi, (probe, layer_fits) in enumerate(fits.items()):
            for li, layer in enumerate(plan.layers):
                for pi, pos in enumerate(plan.positions):
                    row = curve_point(
                        probe,
                        layer,
                        pi,
                        pos,
                        plan.relation[pos],
                        layer_fits[li],
                        y,
                        boot,
                        labels.n_curve,
                        surface,
                    )
                    if site_p is not None and pos in plan.candidates:
                        row["p_adjusted"] = float(site_p[qi, li, plan.candidates.index(pos)])
                    per_layer.append(row)
        full = pick_best(per_layer, cfg.headline, plan.candidates)
        best = nested = stab = power = None
        if full is not None:
            head = fits[cfg.headline]
            if head[0].inner is not None:
                nested = nested_selection(
                    np.stack([f.oof[cand] for f in head]),
                    np.stack([f.inner[:, cand] for f in head if f.inner is not None]),
                    y,
                    plan.folds,
                    plan.layers,
                    plan.candidates,
                    boot,
                )
                nested.pop("scores", None)
                stab = stability(nested["folds"], full["layer"], full["position"])
            best = best_block(full, nested, stab, test, surface, labels.n_folds, plan.candidates)
            crit = test.get("critical_auroc")
            Xb = reader.get(full["layer"], full["position"])
            power = auroc_power(
                Xb, y, plan.pairs, plan.folds, cfg.headline, crit, cfg, device, seed=self.seed, power=0.8
            )
        cue_rows = [r for r in per_layer if r["position"] == "cue" and r["probe"] == cfg.headline]
        cue_best = max(cue_rows, key=lambda r: (r["auroc"], r["accuracy"]), default=None)
        cue_trivial = (
            None
            if cue_best is None
            else {
                "position": "cue",
                "trivial": True,
                "note": CUE_NOTE,
                "best_layer": cue_best["layer"],
                "accuracy": cue_best["accuracy"],
                "auroc": cue_best["auroc"],
            }
        )
        dirs = ProbeDirections(
            vectors={
                (probe, pos): unit_rows(np.stack([f.coef[pi] for f in fits[probe]]))
                for probe in cfg.probes
                for pi, pos in enumerate(plan.positions)
            },
            layers=plan.layers,
            model_id=reader.model_id,
            weights_hash=str(reader.attrs.get("weights_hash", "")),
            d_model=reader.d_model,
            seed=self.seed,
            default_probe=cfg.headline,
            extra={"source": str(reader.path.resolve())},
        )
        cos_probes, cos_layers = cosine_between_probes(dirs), cosine_between_layers(dirs)
        tables: dict[str, list[dict[str, Any]]] = {}
        generalization, pca = self._generalization(reader, plan, best, device, tables)
        tables.update({"per_layer": per_layer, "cosine_probes": cos_probes, "cosine_layers": cos_layers})
        results = {
            "schema": "afprobe.probe_results/2",
            "model_id": reader.model_id,
            "n_prompts": len(plan.y),
            "n_requests": len(np.unique(plan.groups)),
            "n_pairs": len(np.unique(plan.pairs)),
            "layers": plan.layers,
            "positions": plan.positions,
            "position_relation": plan.relation,
            "probes": list(cfg.probes),
            "headline_probe": cfg.headline,
            "chance": 0.5,
            "per_layer": per_layer,
            "best": best,
            "permutation_test": test,
            "surface_baseline": surface,
            "power": power,
            "cue_trivial": cue_trivial,
            **generalization,
            "cosine": {"between_probes": cos_probes, "between_layers": cos_layers},
            "convergence_warnings": {p: int(sum(f.warnings for f in fs)) for p, fs in fits.items()},
            "provenance": self._provenance(reader, device),
        }
        return results, tables, {"directions": dirs, "pca": pca}

    def _generalization(
        self,
        reader: ActivationReader,
        plan: Plan,
        best: dict[str, Any] | None,
        device: torch.device,
        tables: dict[str, list[dict[str, Any]]],
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Cross-format and cross-system-prompt transfer and the PCA, at the best site (None without one)."""
        cfg = self.cfg
        if best is None:
            return {"cross_format": None, "cross_system_prompt": None}, None
        Xb = reader.get(best["layer"], best["position"])
        meta = reader.meta
        fmt = transfer_matrix(cfg.headline, Xb, plan.y, plan.folds, meta["cue_format"], cfg, device)
        sp = transfer_matrix(cfg.headline, Xb, plan.y, plan.folds, meta["system_prompt"], cfg, device)
        where = {"layer": best["layer"], "position": best["position"], "probe": cfg.headline}
        cross_format = {
            **where,
            "formats": fmt.conditions,
            "matrix": fmt.accuracy,
            "auroc_matrix": fmt.auroc,
            "n_test": fmt.n_test,
        }
        cross_sp = {
            **{f"{a}->{b}": acc for a, b, acc in _off_diagonal(sp.conditions, sp.accuracy)},
            "within": {c: sp.accuracy[i, i] for i, c in enumerate(sp.conditions)},
            **where,
        }
        tables["cross_format"] = _matrix_rows(fmt, "train_format", "test_format")
        tables["cross_system_prompt"] = _matrix_rows(sp, "train_system_prompt", "test_system_prompt")
        pca = _pca(Xb, meta)
        tables["pca"] = pca["rows"]
        return {"cross_format": cross_format, "cross_system_prompt": cross_sp}, pca

    def _provenance(self, reader: ActivationReader, device: torch.device) -> dict[str, Any]:
        attrs = reader.attrs
        return {
            "activations": str(reader.path.resolve()),
            "model_id": reader.model_id,
            "weights_hash": attrs.get("weights_hash"),
            "d_model": reader.d_model,
            "n_layers": attrs.get("n_layers"),
            "activations_created": attrs.get("created"),
            "activations_run_key": attrs.get("run_key"),
            "config": self.cfg.model_dump(),
            "seed": self.seed,
            "device": str(device),
            "afprobe_version": afprobe.__version__,
            "torch_version": torch.__version__,
            "sklearn_version": sklearn.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _off_diagonal(conds: list[str], m: np.ndarray) -> list[tuple[str, str, float]]:
    return [(a, b, float(m[i, j])) for i, a in enumerate(conds) for j, b in enumerate(conds) if i != j]


def _matrix_rows(t: Any, train_key: str, test_key: str) -> list[dict[str, Any]]:
    return [
        {
            train_key: a,
            test_key: b,
            "accuracy": t.accuracy[i, j],
            "auroc": t.auroc[i, j],
            "n_test": int(t.n_test[i, j]),
        }
        for i, a in enumerate(t.conditions)
        for j, b in enumerate(t.conditions)
    ]


def _pca(X: np.ndarray, meta: dict[str, np.ndarray]) -> dict[str, Any]:
    Xc = X.astype(np.float64) - X.mean(0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    coords = Xc @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    explained = (s**2 / max(float((s**2).sum()), 1e-30))[:2]
    rows = [
        {"pc1": float(a), "pc2": float(b), "tier": t, "cue_format": f, "request_id": r}
        for a, b, t, f, r in zip(
            coords[:, 0], coords[:, 1], meta["tier"], meta["cue_format"], meta["request_id"], strict=True
        )
    ]
    return {
        "coords": coords,
        "explained": explained.tolist(),
        "tier": meta["tier"],
        "cue_format": meta["cue_format"],
        "rows": rows,
    }


def run_probes(
    activations: str | Path,
    out_dir: str | Path,
    cfg: ProbeConfig | None = None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run :class:`ProbeRunner` and return the written ``probe_results.json`` as a dict."""
    run = ProbeRunConfig(probes=cfg or ProbeConfig(), seed=seed)
    out = ProbeRunner(run, overwrite=overwrite, progress=progress).run(out_dir, activations=activations)
    return read_probe_results(out)
