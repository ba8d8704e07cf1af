"""``afprobe probe`` end to end on synthetic activation files with planted tier directions, and its bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from afprobe.activations import META_COLUMNS, ActivationWriter
from afprobe.cli import main
from afprobe.probes import (
    ProbeConfig,
    ProbeRunConfig,
    ProbeRunner,
    load_directions,
    read_probe_results,
    run_probes,
)
from afprobe.probes import _report as report_module

POSITIONS = ("cue", "system_end", "user_end", "last")
TOKEN_INDEX = {"system_end": 5, "cue": 10, "user_end": 20, "last": 25}


def write_activations(
    path: Path,
    *,
    n_requests: int = 10,
    cue_formats: tuple[str, ...] = ("tag", "sentence", "json"),
    system_prompts: tuple[str, ...] = ("helpful_only", "neutral"),
    layers: tuple[int, ...] = (0, 1, 2, 3),
    d: int = 24,
    planted: dict[int, float] | None = None,
    format_specific: str | None = None,
    tiers: tuple[str, ...] = ("free", "paid"),
    content_scale: float = 1.0,
    model_id: str = "synthetic/model",
    seed: int = 0,
) -> tuple[Path, dict[int, np.ndarray]]:
    """A finished activation file in afprobe's schema. Each request has its own offset vector (content); at the
    ``cue`` position every layer carries the tier strongly (the token itself); at ``user_end`` and ``last`` the
    layers in ``planted`` carry it along a random unit direction per layer with that strength; ``system_end``
    (before the cue) carries none. A ``format_specific`` cue format uses its own direction instead."""
    planted = {2: 1.5} if planted is None else planted
    rng = np.random.default_rng(seed)
    dirs = {layer: _unit(rng.normal(size=d)) for layer in layers}
    other = {layer: _unit(rng.normal(size=d)) for layer in layers}
    content = rng.normal(scale=content_scale, size=(n_requests, d))
    rows = []
    for r in range(n_requests):
        for sp in system_prompts:
            for cf in cue_formats:
                rows += [(r, sp, cf, tier, len(rows) // len(tiers)) for tier in tiers]
    n = len(rows)
    resid = rng.normal(scale=0.7, size=(n, len(layers), len(POSITIONS), d))
    for i, (r, _sp, cf, tier, _pair) in enumerate(rows):
        sign = 1.0 if tier == "free" else -1.0
        resid[i] += content[r]
        resid[i, :, 0] += sign * 3.0 * np.ones(d) / np.sqrt(d)  # the cue token itself
        for li, layer in enumerate(layers):
            u = other[layer] if cf == format_specific else dirs[layer]
            for p in (2, 3):
                resid[i, li, p] += sign * planted.get(layer, 0.0) * u
    meta = {
        "pair_id": [row[4] for row in rows],
        "request_id": [f"req{row[0]:02d}" for row in rows],
        "tier": [row[3] for row in rows],
        "cue_format": [row[2] for row in rows],
        "system_prompt": [row[1] for row in rows],
        "category": ["test"] * n,
        "harmful": [True] * n,
        "request_text": [f"request {row[0]}" for row in rows],
    }
    assert set(meta) == set(META_COLUMNS)
    attrs = {
        "model_id": model_id,
        "weights_hash": "f" * 64,
        "d_model": d,
        "n_layers": max(layers),
        "pad_token_id": 0,
        "created": "2026-01-01T00:00:00+00:00",
    }
    w = ActivationWriter(
        path,
        run_key="synthetic",
        n_prompts=n,
        layers=list(layers),
        position_names=POSITIONS,
        d_model=d,
        max_len=30,
        dtype="float32",
        batch_size=n,
        meta=meta,
        attrs=attrs,
    )
    pos_index = np.tile([TOKEN_INDEX[p] for p in POSITIONS], (n, 1))
    w.write_batch(0, resid.astype(np.float32), np.ones((n, 30), dtype=np.int64), np.full(n, 30), pos_index)
    return w.finalize(), dirs


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


FAST = ProbeConfig(
    bootstrap=100,
    baseline_repeats=1,
    permutations=19,
    power_sims=4,
    positions=["cue", "user_end", "last"],
    plots=False,
)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, dict[int, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("planted")
    # Nuisance variance nearly isotropic (small per-request content), so the logistic probes' optimal
    # direction (the within-class covariance's inverse times the mean difference) is the planted one too.
    path, dirs = write_activations(
        tmp / "acts.h5", n_requests=40, d=12, planted={2: 1.0, 3: 0.5}, content_scale=0.2
    )
    cfg = ProbeConfig(
        probes=["torch_logistic", "mass_mean", "logistic"],
        positions=["cue", "system_end", "last"],
        bootstrap=200,
        baseline_repeats=2,
        permutations=19,  # p-values can reach 1/20: the scikit-learn probe refits on every draw (slow)
        power_sims=8,
    )
    results = run_probes(path, tmp / "probes", cfg)
    return results, tmp / "probes", dirs


def test_planted_directions_are_recovered(planted_run) -> None:
    results, out, planted = planted_run
    dirs = load_directions(out, expect_model_id="synthetic/model", expect_d_model=12)
    for probe in ("torch_logistic", "mass_mean", "logistic"):
        assert float(dirs.direction(2, "last", probe=probe) @ planted[2]) > 0.95, probe
    assert float(dirs.direction(0, "last") @ planted[0]) < 0.6  # nothing planted there
    best = results["best"]
    assert (
        best["layer"] == 2 and best["position"] in ("user_end", "last") and best["probe"] == "torch_logistic"
    )
    assert best["auroc"] > 0.9 and best["selectivity"] > 0.3
    assert best["nested"] and "nested cross-validation" in best["selection"]
    assert best["stability"]["layer_agreement"] == 1.0  # every outer fold chose the planted layer
    assert best["p_value"] == pytest.approx(1 / 20) and best["n_permutations"] == 19
    test = results["permutation_test"]
    assert test["n_probes"] == 3 * 4 * 1  # probe types x layers x positions after the cue
    assert test["layer_p"]["2"] == pytest.approx(1 / 20) and test["layer_p"]["0"] > 0.2
    assert 2 in test["decodable_layers"] and 0 not in test["decodable_layers"]


def test_surface_baseline_and_power(planted_run) -> None:
    results, _, _ = planted_run
    surface = results["surface_baseline"]
    assert abs(surface["auroc"] - 0.5) < 0.1  # the synthetic prompts all have one length: nothing to read
    assert {"length", "cue_format=tag"} <= set(surface["features"]) or "cue_format=tag" in surface["features"]
    power = results["power"]
    curve = [r["power"] for r in power["curve"]]
    assert curve[0] < 0.5 and curve[-1] == 1.0
    assert power["critical_auroc"] < power["min_detectable_auroc"] < 1.0
    rows = [r for r in results["per_layer"] if r["position"] == "last"]
    assert all(r["surface_auroc"] == surface["auroc"] for r in rows)  # drawn beside every curve


def test_curves_controls_and_cue(planted_run) -> None:
    results, _, _ = planted_run
    rows = {(r["probe"], r["layer"], r["position"]): r for r in results["per_layer"]}
    assert len(rows) == 3 * 4 * 3
    for probe in ("torch_logistic", "mass_mean", "logistic"):
        curve = [rows[probe, layer, "last"]["accuracy"] for layer in (0, 1, 2, 3)]
        assert curve[2] > 0.85 and curve[3] > 0.65 and max(curve[0], curve[1]) < 0.65, (probe, curve)
        for layer in (0, 1, 2, 3):
            r = rows[probe, layer, "last"]
            assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
            assert abs(r["shuffled_accuracy"] - 0.5) < 0.2
            assert r["selectivity"] == pytest.approx(r["accuracy"] - r["shuffled_accuracy"])
            assert r["p_adjusted"] is not None and rows[probe, layer, "cue"]["p_adjusted"] is None
            assert rows[probe, layer, "cue"]["accuracy"] > 0.95  # the tier token itself
            assert rows[probe, layer, "system_end"]["accuracy"] < 0.7  # before the cue: nothing to read
    assert results["position_relation"] == {"cue": "cue", "system_end": "before_cue", "last": "after_cue"}
    assert results["cue_trivial"]["trivial"] is True and results["cue_trivial"]["accuracy"] > 0.95
    assert results["best"]["position"] != "cue"


def test_torch_and_sklearn_logistic_agree(planted_run) -> None:
    results, _, _ = planted_run
    torch_rows = {
        (r["layer"], r["position"]): r for r in results["per_layer"] if r["probe"] == "torch_logistic"
    }
    sk_rows = {(r["layer"], r["position"]): r for r in results["per_layer"] if r["probe"] == "logistic"}
    gaps = [abs(torch_rows[k]["accuracy"] - sk_rows[k]["accuracy"]) for k in torch_rows]
    assert max(gaps) <= 0.02
    cos = [
        r["cosine"]
        for r in results["cosine"]["between_probes"]
        if {r["probe_a"], r["probe_b"]} == {"torch_logistic", "logistic"} and r["position"] == "last"
    ]
    assert min(cos) > 0.99


def test_output_contract(planted_run) -> None:
    results, out, _ = planted_run
    for key in (
        "per_layer",
        "best",
        "cue_trivial",
        "cross_format",
        "cross_system_prompt",
        "cosine",
        "provenance",
    ):
        assert key in results
    prov = results["provenance"]
    assert prov["model_id"] == "synthetic/model" and prov["weights_hash"] == "f" * 64 and prov["seed"] == 0
    assert prov["config"]["folds"] == 5
    assert set(results["cross_system_prompt"]) >= {"helpful_only->neutral", "neutral->helpful_only"}
    assert results["cross_format"]["formats"] == ["tag", "sentence", "json"]
    assert np.array(results["cross_format"]["matrix"]).shape == (3, 3)
    for name in ("per_layer", "cross_format", "cross_system_prompt", "cosine_probes", "cosine_layers", "pca"):
        assert (out / "results" / f"{name}.csv").stat().st_size > 0
    header = (out / "results" / "per_layer.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy_lo", "accuracy_hi", "auroc_lo", "auroc_hi", "shuffled_accuracy", "selectivity"} <= set(
        header
    )
    for stem in ("accuracy_by_layer", "auroc_by_layer", "cross_format", "pca_best_layer"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 0
    assert (out / "directions.safetensors").is_file() and (out / "directions.json").is_file()
    assert not list(out.parent.glob(".probes.partial-*"))
    json.loads((out / "probe_results.json").read_text())  # strict JSON (no NaN)


def test_cross_format_generalization_matrix(tmp_path: Path) -> None:
    """Formats sharing a direction transfer to each other; a format with its own direction does not."""
    path, _ = write_activations(
        tmp_path / "a.h5",
        n_requests=12,
        layers=(0, 1),
        planted={1: 2.0},
        d=12,
        content_scale=0.2,
        format_specific="json",
    )
    results = run_probes(path, tmp_path / "out", FAST.model_copy(update={"layers": [1]}))
    cf = results["cross_format"]
    m = dict(zip(cf["formats"], np.array(cf["matrix"]), strict=True))
    idx = {f: i for i, f in enumerate(cf["formats"])}
    assert m["tag"][idx["sentence"]] > 0.9 and m["sentence"][idx["tag"]] > 0.9
    assert m["json"][idx["json"]] > 0.9  # within-format fine
    assert m["tag"][idx["json"]] < 0.7 and m["json"][idx["tag"]] < 0.7  # no transfer


def test_refuses_finished_dir_without_overwrite_and_is_crash_safe(tmp_path: Path, monkeypatch) -> None:
    path, _ = write_activations(tmp_path / "a.h5", layers=(0, 2))
    out = tmp_path / "out"
    ProbeRunner(ProbeRunConfig(probes=FAST), progress=False).run(out, activations=path)
    first = read_probe_results(out)["provenance"]["created"]
    with pytest.raises(Exception, match="already holds finished probe results; pass --overwrite"):
        ProbeRunner(ProbeRunConfig(probes=FAST), progress=False).run(out, activations=path)

    def boom(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(report_module, "save_directions", boom)
    with pytest.raises(RuntimeError):
        ProbeRunner(ProbeRunConfig(probes=FAST), overwrite=True, progress=False).run(out, activations=path)
    assert read_probe_results(out)["provenance"]["created"] == first  # the finished result is untouched
    assert not list(tmp_path.glob(".out.*"))
    with pytest.raises(RuntimeError):
        ProbeRunner(ProbeRunConfig(probes=FAST), progress=False).run(tmp_path / "fresh", activations=path)
    assert not (tmp_path / "fresh").exists()  # a crash never leaves a DIR that looks finished
    monkeypatch.undo()
    ProbeRunner(ProbeRunConfig(probes=FAST), overwrite=True, progress=False).run(out, activations=path)
    assert read_probe_results(out)["provenance"]["created"] >= first


def test_cli_probe(tmp_path: Path, capsys) -> None:
    path, _ = write_activations(tmp_path / "a.h5", layers=(0, 2))
    code = main(
        [
            "probe",
            str(path),
            "--out",
            str(tmp_path / "p"),
            "-q",
            "--seed",
            "3",
            "--set",
            "probes.bootstrap=100",
            "--set",
            "probes.baseline_repeats=1",
            "--set",
            "probes.plots=false",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"wrote {tmp_path / 'p'}" in out
    results = read_probe_results(tmp_path / "p")
    assert results["provenance"]["seed"] == 3 and results["provenance"]["config"]["bootstrap"] == 100


def _bad(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """An activation file and extra CLI flags that make one kind of bad input."""
    if name == "one class":
        return write_activations(tmp_path / "a.h5", tiers=("free",))[0], []
    if name == "nan":
        path = write_activations(tmp_path / "a.h5")[0]
        import h5py

        with h5py.File(path, "r+") as f:
            f["resid"][3, 1, 2, 0] = np.nan
        return path, []
    if name == "inf":
        path = write_activations(tmp_path / "a.h5")[0]
        import h5py

        with h5py.File(path, "r+") as f:
            f["resid"][5, 0, 3, 4] = np.inf
        return path, []
    if name == "few requests":
        return write_activations(tmp_path / "a.h5", n_requests=3)[0], []
    if name == "position":
        return write_activations(tmp_path / "a.h5")[0], ["--set", "probes.positions=[last, nowhere]"]
    if name == "layer":
        return write_activations(tmp_path / "a.h5")[0], ["--set", "probes.layers=[9]"]
    if name == "missing file":
        return tmp_path / "nope.h5", []
    if name == "bad key":
        return write_activations(tmp_path / "a.h5")[0], ["--set", "probes.folds=1"]
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("one class", "only free-tier prompts: probes need both tiers"),
        ("nan", "NaN or infinite activations at layer 1, position 'user_end'"),
        ("inf", "NaN or infinite activations at layer 0, position 'last'"),
        ("few requests", "3 request(s) is fewer than the 5 cross-validation folds"),
        ("position", "position 'nowhere' is not in a.h5"),
        ("layer", "layer 9 is not in a.h5"),
        ("missing file", "activation file not found"),
        ("bad key", "key 'probes.folds'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, name: str, needle: str) -> None:
    path, extra = _bad(tmp_path, name)
    code = main(["probe", str(path), "--out", str(tmp_path / "out"), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_directions_from_another_model_are_refused(planted_run, capsys) -> None:
    _, out, _ = planted_run
    with pytest.raises(Exception, match=r"fitted on synthetic/model.*model in use is org/other") as e:
        load_directions(out, expect_model_id="org/other")
    assert "\n" not in str(e.value)
