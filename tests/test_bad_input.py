"""Bad input, as a careless user types it, across every command: exit code 2, exactly one line on stderr
(``afprobe: error: ...``), no traceback, and no new file anywhere in the case's folder.

Each case runs ``main(argv)`` in-process from its own empty working folder. ``{ws}`` is that folder; ``{model}``
the session's tiny model, ``{h5}`` a finished activation file of it, ``{probes}`` the probe results of that file,
``{other}`` another tiny model (3 layers, d_model 64), ``{ro}`` a read-only directory (a read-only tmpfs when this
user can mount one, else a mode-0555 directory; the cases are skipped when neither refuses a write).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from afprobe.cli import main
from afprobe.models import make_tiny_model, make_tiny_tokenizer

SMALL = "--set scenario.cue_formats=[tag] --set scenario.system_prompts=[neutral] -q"
CACHE = f"cache --model {{model}} --limit 1 --out {{ws}}/x.h5 {SMALL}"
PROBE = "probe {h5} --out {ws}/p -q --set probes.folds=2 --set probes.bootstrap=10"
CAUSAL = (
    f"--model {{model}} --limit 2 {SMALL} --set compliance.generate=false --set compliance.n_bootstrap=100"
)
STEER = f"steer --probes {{probes}} --out {{ws}}/s {CAUSAL} --set steering.alphas=[1.0] --set steering.ablate=false"
PATCH = (
    f"patch --probes {{probes}} --out {{ws}}/pt {CAUSAL} --set patching.layers=[0] --set patching.window=0"
)
RUN = f"run default --out {{ws}}/run --model {{model}} --limit 2 {SMALL}"


# --------------------------------------------------------------------------------------------- input files
Setup = Callable[[Path, dict[str, Path]], None]


def _write(name: str, data: str | bytes) -> Setup:
    def make(ws: Path, s: dict[str, Path]) -> None:
        p = ws / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data, encoding="utf-8")

    return make


def _gguf_header_only(ws: Path, s: dict[str, Path]) -> None:
    # magic, version 3, 272 tensors, 33 key/value pairs, and nothing after: what a cut download leaves
    (ws / "header.gguf").write_bytes(
        b"GGUF" + (3).to_bytes(4, "little") + (272).to_bytes(8, "little") + (33).to_bytes(8, "little")
    )


def _gguf_truncated(ws: Path, s: dict[str, Path]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(ws / "full.gguf"), "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.add_tensor("output.weight", np.ones((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = (ws / "full.gguf").read_bytes()
    (ws / "full.gguf").unlink()
    (ws / "cut.gguf").write_bytes(data[: len(data) * 2 // 3])


def _model_dir(kind: str) -> Setup:
    def make(ws: Path, s: dict[str, Path]) -> None:
        d = ws / "mdl"
        d.mkdir()
        if kind == "bad-json":
            (d / "config.json").write_text("{not json")
        elif kind == "no-weights":
            make_tiny_model(n_layers=1, d_model=32, n_heads=2).config.save_pretrained(d)
            make_tiny_tokenizer().save_pretrained(d)

    return make


def _h5(kind: str) -> Setup:
    """Activation files that are not what ``afprobe probe`` needs."""

    def make(ws: Path, s: dict[str, Path]) -> None:
        p = ws / "a.h5"
        if kind == "text":
            p.write_text("not hdf5")
            return
        with h5py.File(p, "w") as f:
            f.attrs["complete"] = True
            if kind == "other-format":
                f.attrs["format"] = "someone.else/2"
            elif kind != "foreign":
                f.attrs["afprobe_version"] = "0.1.0"
            if kind == "foreign":  # someone else's file: a 'resid' of another shape, nothing else
                f.create_dataset("resid", data=np.zeros((4, 8), dtype=np.float32))
                return
            resid = f.create_dataset("resid", data=np.zeros((4, 2, 1, 8), dtype=np.float32))
            if kind != "no-attrs":
                resid.attrs["layers"] = np.array([0, 1])
                resid.attrs["position_names"] = ["last"]
            if kind == "no-meta":
                f.create_dataset("input_ids", data=np.zeros((4, 3), dtype=np.int64))
                f.create_dataset("lengths", data=np.full(4, 3))
                f.create_dataset("position_index", data=np.zeros((4, 1), dtype=np.int64))

    return make


def _h5_cut(ws: Path, s: dict[str, Path]) -> None:
    data = s["h5"].read_bytes()
    (ws / "cut.h5").write_bytes(data[: len(data) // 2])


def _h5_unfinished(ws: Path, s: dict[str, Path]) -> None:
    shutil.copy(s["h5"], ws / "u.h5")
    with h5py.File(ws / "u.h5", "r+") as f:
        f.attrs["complete"] = False


def _probes_copy(edit: str) -> Setup:
    """A copy of the session's probe results with its directions damaged."""

    def make(ws: Path, s: dict[str, Path]) -> None:
        d = ws / "pr"
        shutil.copytree(s["probes"], d)
        meta = d / "directions.json"
        if edit == "no-d_model":
            data = json.loads(meta.read_text())
            del data["d_model"]
            meta.write_text(json.dumps(data))
        elif edit == "layers-text":
            data = json.loads(meta.read_text())
            data["layers"] = "all of them"
            meta.write_text(json.dumps(data))
        elif edit == "not-json":
            meta.write_text("{")
        elif edit == "bad-tensors":
            (d / "directions.safetensors").write_bytes(b"\x00" * 64)
        elif edit == "list-json":
            meta.write_text("[1, 2]")

    return make


def _run_dir(kind: str) -> Setup:
    def make(ws: Path, s: dict[str, Path]) -> None:
        d = ws / "rd"
        d.mkdir()
        if kind == "bad-config":
            (d / "config.yaml").write_text("model: [unclosed\n")
        elif kind == "list-config":
            (d / "config.yaml").write_text("- a\n- b\n")
        elif kind == "no-stages":
            (d / "config.yaml").write_text("seed: 0\n")
        elif kind == "not-a-run":
            (d / "notes.txt").write_text("mine")

    return make


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
SETUPS: dict[str, Setup] = {
    "empty.txt": _write("r/empty.txt", ""),
    "blank.txt": _write("r/blank.txt", "\n\n# only a comment\n   \n"),
    "dups.txt": _write("r/dups.txt", "make a cake\nmake a cake\nmake a cake\n"),
    "binary.txt": _write("r/binary.txt", bytes(range(256)) * 4),
    "nul.txt": _write("r/nul.txt", "first request\nsecond\x00request\n"),
    "latin1.txt": _write("r/latin1.txt", "écris un poème\ncafé crème\n".encode("latin-1")),
    "huge.txt": _write("r/huge.txt", "ask " * 300_000 + "\nsecond request\n"),
    "bad.jsonl": _write("r/bad.jsonl", '{"text": "fine"}\n{"text": "broken\n'),
    "array.jsonl": _write("r/array.jsonl", '["a", "b"]\n'),
    "notext.jsonl": _write("r/notext.jsonl", '{"goal": ""}\n{"id": 3}\n'),
    "harm.jsonl": _write("r/harm.jsonl", '{"text": "a", "harmful": "maybe"}\n'),
    "nocol.csv": _write("r/nocol.csv", "question,answer\nwhat,that\n"),
    "quote.csv": _write("r/quote.csv", 'goal,category\n"write a poem,art\nsecond,art\n'),
    "dups.csv": _write("r/dups.csv", "goal\nsame\nsame\n"),
    "sheet.xlsx": _write("r/sheet.xlsx", b"PK\x03\x04"),
    "list.yaml": _write("c/list.yaml", "- cache\n- probes\n"),
    "broken.yaml": _write("c/broken.yaml", "cache: {batch_size: 2\n"),
    "bomb.yaml": _write("c/bomb.yaml", ALIAS_BOMB),
    "unknown.yaml": _write("c/unknown.yaml", "cache:\n  batchsize: 2\n"),
    "type.yaml": _write("c/type.yaml", "cache:\n  batch_size: [1, 2]\n"),
    "binary.yaml": _write("c/binary.yaml", b"\xff\xfe\x00\x01garbage"),
    "scalar.yaml": _write("c/scalar.yaml", "just a string\n"),
    "a-file": _write("afile", "I am a file"),
    "header.gguf": _gguf_header_only,
    "cut.gguf": _gguf_truncated,
    "empty.gguf": _write("empty.gguf", b""),
    "random.gguf": _write("random.gguf", os.urandom(4096)),
    "mdl-empty": _model_dir("empty"),
    "mdl-bad-json": _model_dir("bad-json"),
    "mdl-no-weights": _model_dir("no-weights"),
    "h5-text": _h5("text"),
    "h5-foreign": _h5("foreign"),
    "h5-no-attrs": _h5("no-attrs"),
    "h5-other-format": _h5("other-format"),
    "h5-no-meta": _h5("no-meta"),
    "h5-cut": _h5_cut,
    "h5-unfinished": _h5_unfinished,
    "h5-finished": lambda ws, s: shutil.copy(s["h5"], ws / "x.h5"),
    "dirs-no-d_model": _probes_copy("no-d_model"),
    "dirs-layers-text": _probes_copy("layers-text"),
    "dirs-not-json": _probes_copy("not-json"),
    "dirs-bad-tensors": _probes_copy("bad-tensors"),
    "dirs-list-json": _probes_copy("list-json"),
    "other-files": _write("p/notes.txt", "mine"),
    "run-bad-config": _run_dir("bad-config"),
    "run-list-config": _run_dir("list-config"),
    "run-no-stages": _run_dir("no-stages"),
    "run-not-a-run": _run_dir("not-a-run"),
    "run-notes": _write("run/notes.txt", "mine"),
}


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # formatted with the paths above, then split like a shell does
    needle: str  # must appear in the error line (case-insensitive)
    setup: str | None = None


CASES = [
    # ---- models: names, paths, files that are not models
    Case("cache-unknown-alias", f"{CACHE} --model no-such-alias", "unknown model 'no-such-alias'"),
    Case("cache-model-path-missing", f"{CACHE} --model ./no/such/dir", "model path not found"),
    Case("cache-gguf-missing", f"{CACHE} --model missing.gguf", "model file not found"),
    Case("cache-gguf-header-only", f"{CACHE} --model {{ws}}/header.gguf", "gguf", "header.gguf"),
    Case("cache-gguf-truncated", f"{CACHE} --model {{ws}}/cut.gguf", "gguf", "cut.gguf"),
    Case("cache-gguf-empty", f"{CACHE} --model {{ws}}/empty.gguf", "empty.gguf", "empty.gguf"),
    Case("cache-gguf-random", f"{CACHE} --model {{ws}}/random.gguf", "gguf", "random.gguf"),
    Case("cache-model-dir-empty", f"{CACHE} --model {{ws}}/mdl", "no config.json", "mdl-empty"),
    Case("cache-model-dir-bad-json", f"{CACHE} --model {{ws}}/mdl", "mdl", "mdl-bad-json"),
    Case("cache-model-dir-no-weights", f"{CACHE} --model {{ws}}/mdl", "mdl", "mdl-no-weights"),
    Case("cache-backend-unknown", f"{CACHE} --set model.backend=pytorch", "model.backend"),
    Case("cache-dtype-unknown", f"{CACHE} --dtype float8", "model.dtype"),
    Case("cache-device-unknown", f"{CACHE} --device tpu", "model.device"),
    # ---- request files
    Case("cache-requests-missing", f"{CACHE} --requests missing.csv", "request file not found"),
    Case("cache-requests-empty", f"{CACHE} --requests {{ws}}/r/empty.txt", "no requests", "empty.txt"),
    Case("cache-requests-blank", f"{CACHE} --requests {{ws}}/r/blank.txt", "no requests", "blank.txt"),
    Case("cache-requests-dups-only", f"{CACHE} --requests {{ws}}/r/dups.txt", "duplicate", "dups.txt"),
    Case("cache-requests-binary", f"{CACHE} --requests {{ws}}/r/binary.txt", "binary.txt", "binary.txt"),
    Case("cache-requests-nul-bytes", f"{CACHE} --requests {{ws}}/r/nul.txt", "binary", "nul.txt"),
    Case("cache-requests-latin1", f"{CACHE} --requests {{ws}}/r/latin1.txt", "utf-8", "latin1.txt"),
    Case("cache-requests-huge-line", f"{CACHE} --requests {{ws}}/r/huge.txt", "characters", "huge.txt"),
    Case("cache-requests-bad-jsonl", f"{CACHE} --requests {{ws}}/r/bad.jsonl", "line 2", "bad.jsonl"),
    Case(
        "cache-requests-jsonl-array",
        f"{CACHE} --requests {{ws}}/r/array.jsonl",
        "not a json object",
        "array.jsonl",
    ),
    Case(
        "cache-requests-jsonl-no-text",
        f"{CACHE} --requests {{ws}}/r/notext.jsonl",
        "no 'text'",
        "notext.jsonl",
    ),
    Case("cache-requests-jsonl-harmful", f"{CACHE} --requests {{ws}}/r/harm.jsonl", "harmful", "harm.jsonl"),
    Case("cache-requests-csv-no-column", f"{CACHE} --requests {{ws}}/r/nocol.csv", "column", "nocol.csv"),
    Case("cache-requests-csv-quote", f"{CACHE} --requests {{ws}}/r/quote.csv", "quote", "quote.csv"),
    Case("cache-requests-csv-dups", f"{CACHE} --requests {{ws}}/r/dups.csv", "duplicate", "dups.csv"),
    Case("cache-requests-xlsx", f"{CACHE} --requests {{ws}}/r/sheet.xlsx", "unsupported", "sheet.xlsx"),
    Case("cache-requests-directory", f"{CACHE} --requests {{ws}}", "directory"),
    # ---- configs, --set, flags
    Case("cache-config-missing", f"{CACHE} --config missing.yaml", "config file not found"),
    Case("cache-config-list", f"{CACHE} --config {{ws}}/c/list.yaml", "mapping", "list.yaml"),
    Case("cache-config-scalar", f"{CACHE} --config {{ws}}/c/scalar.yaml", "mapping", "scalar.yaml"),
    Case("cache-config-broken", f"{CACHE} --config {{ws}}/c/broken.yaml", "not valid yaml", "broken.yaml"),
    Case("cache-config-alias-bomb", f"{CACHE} --config {{ws}}/c/bomb.yaml", "alias", "bomb.yaml"),
    Case("cache-config-binary", f"{CACHE} --config {{ws}}/c/binary.yaml", "binary.yaml", "binary.yaml"),
    Case(
        "cache-config-unknown-key",
        f"{CACHE} --config {{ws}}/c/unknown.yaml",
        "cache.batchsize",
        "unknown.yaml",
    ),
    Case("cache-config-wrong-type", f"{CACHE} --config {{ws}}/c/type.yaml", "cache.batch_size", "type.yaml"),
    Case("cache-config-directory", f"{CACHE} --config {{ws}}", "config"),
    Case("cache-set-unknown-key", f"{CACHE} --set cache.bogus=1", "unknown key 'cache.bogus'"),
    Case("cache-set-wrong-type", f"{CACHE} --set cache.batch_size=lots", "cache.batch_size"),
    Case("cache-set-no-equals", f"{CACHE} --set cache.batch_size", "key=value"),
    Case(
        "cache-set-into-a-value", f"{CACHE} --set scenario.limit=3 --set scenario.limit.x=1", "not a section"
    ),
    Case("cache-batch-size-zero", f"{CACHE} --set cache.batch_size=0", "batch_size"),
    Case("cache-layer-out-of-range", f"{CACHE} --set cache.layers=[0,99]", "layer 99 out of range"),
    Case("cache-layer-negative", f"{CACHE} --set cache.layers=[-1]", "-1"),
    Case("cache-layers-empty", f"{CACHE} --set cache.layers=[]", "empty"),
    Case("cache-position-unknown", f"{CACHE} --set cache.positions=[middle]", "middle"),
    Case("cache-storage-dtype", f"{CACHE} --set cache.dtype=float64", "cache.dtype"),
    Case("cache-cue-format-unknown", f"{CACHE} --set scenario.cue_formats=[semaphore]", "semaphore"),
    Case("cache-system-prompt-unknown", f"{CACHE} --set scenario.system_prompts=[pirate]", "pirate"),
    Case("cache-limit-zero", f"{CACHE} --limit 0", "limit"),
    Case("cache-limit-negative", f"{CACHE} --limit -3", "limit"),
    Case("cache-limit-not-a-number", f"{CACHE} --limit lots", "--limit"),
    Case("cache-seed-negative", f"{CACHE} --seed -1", "seed"),
    Case("cache-seed-huge", f"{CACHE} --set seed=99999999999999999999", "seed"),
    Case("cache-unknown-option", f"{CACHE} --bogus", "--bogus"),
    Case("cache-missing-out", "cache --model {model} -q", "--out"),
    # ---- cache output paths
    Case("cache-out-directory", f"{CACHE} --out {{ws}}", "is a directory"),
    Case("cache-out-under-a-file", f"{CACHE} --out {{ws}}/afile/x.h5", "afile", "a-file"),
    Case("cache-out-parent-missing", f"{CACHE} --out {{ws}}/no/such/x.h5", "does not exist"),
    Case("cache-out-read-only", f"{CACHE} --out {{ro}}/x.h5", "read-only"),
    Case("cache-out-finished", f"{CACHE} --out {{ws}}/x.h5", "--overwrite", "h5-finished"),
    # ---- probe: activation files and outputs
    Case("probe-file-missing", PROBE.replace("{h5}", "missing.h5"), "not found"),
    Case("probe-dot", PROBE.replace("{h5}", "."), "directory"),
    Case("probe-root", PROBE.replace("{h5}", "/"), "directory"),
    Case("probe-not-hdf5", PROBE.replace("{h5}", "{ws}/a.h5"), "not a readable hdf5", "h5-text"),
    Case("probe-foreign-schema", PROBE.replace("{h5}", "{ws}/a.h5"), "a.h5", "h5-foreign"),
    Case("probe-other-format", PROBE.replace("{h5}", "{ws}/a.h5"), "someone.else/2", "h5-other-format"),
    Case("probe-no-resid-attrs", PROBE.replace("{h5}", "{ws}/a.h5"), "layers", "h5-no-attrs"),
    Case("probe-no-meta", PROBE.replace("{h5}", "{ws}/a.h5"), "meta", "h5-no-meta"),
    Case("probe-truncated-file", PROBE.replace("{h5}", "{ws}/cut.h5"), "cut.h5", "h5-cut"),
    Case("probe-unfinished-file", PROBE.replace("{h5}", "{ws}/u.h5"), "not a finished", "h5-unfinished"),
    Case("probe-out-is-a-file", f"{PROBE} --out {{ws}}/afile", "is a file", "a-file"),
    Case("probe-out-under-a-file", f"{PROBE} --out {{ws}}/afile/p", "afile", "a-file"),
    Case("probe-out-holds-other-files", PROBE, "holds other files", "other-files"),
    Case("probe-out-read-only", f"{PROBE} --out {{ro}}/p", "read-only"),
    Case("probe-layer-not-stored", f"{PROBE} --set probes.layers=[99]", "layer 99"),
    Case("probe-position-not-stored", f"{PROBE} --set probes.positions=[middle]", "middle"),
    Case("probe-type-unknown", f"{PROBE} --set probes.probes=[svm]", "probes.probes"),
    Case("probe-one-fold", f"{PROBE} --set probes.folds=1", "probes.folds"),
    Case("probe-seed-negative", f"{PROBE} --seed -1", "seed"),
    Case("probe-device-unknown", f"{PROBE} --device tpu", "probes.device"),
    # ---- steer / patch: directions, layers, outputs
    Case("steer-probes-missing", STEER.replace("{probes}", "{ws}/none"), "no probe directions"),
    Case("steer-probes-no-d_model", STEER.replace("{probes}", "{ws}/pr"), "d_model", "dirs-no-d_model"),
    Case("steer-probes-layers-text", STEER.replace("{probes}", "{ws}/pr"), "layers", "dirs-layers-text"),
    Case("steer-probes-not-json", STEER.replace("{probes}", "{ws}/pr"), "directions", "dirs-not-json"),
    Case("steer-probes-list-json", STEER.replace("{probes}", "{ws}/pr"), "directions", "dirs-list-json"),
    Case("steer-probes-bad-tensors", STEER.replace("{probes}", "{ws}/pr"), "directions", "dirs-bad-tensors"),
    Case("steer-probes-other-model", f"{STEER} --model {{other}}", "fitted on"),
    Case("steer-layer-out-of-range", f"{STEER} --set steering.layers=[99]", "99"),
    Case("steer-edit-start-unknown", f"{STEER} --set steering.edit_start=nowhere", "steering.edit_start"),
    Case("steer-alphas-empty", f"{STEER} --set steering.alphas=[]", "alphas"),
    Case("steer-position-unknown", f"{STEER} --set steering.direction_position=middle", "middle"),
    Case("steer-out-is-a-file", f"{STEER} --out {{ws}}/afile", "is a file", "a-file"),
    Case("steer-out-read-only", f"{STEER} --out {{ro}}/s", "read-only"),
    Case("steer-requests-empty", f"{STEER} --requests {{ws}}/r/empty.txt", "no requests", "empty.txt"),
    Case("patch-probes-missing", PATCH.replace("{probes}", "{ws}/none"), "no probe directions"),
    Case("patch-layer-out-of-range", f"{PATCH} --set patching.layers=[99]", "99"),
    Case("patch-position-unknown", f"{PATCH} --set patching.positions=[middle]", "middle"),
    Case("patch-window-negative", f"{PATCH} --set patching.window=-1", "patching.window"),
    Case("patch-out-under-a-file", f"{PATCH} --out {{ws}}/afile/pt", "afile", "a-file"),
    Case("patch-seed-negative", f"{PATCH} --seed -5", "seed"),
    # ---- run
    Case("run-config-unknown", RUN.replace("run default", "run nosuchconfig"), "unknown config"),
    Case("run-config-twice", f"{RUN} --config {{ws}}/c/list.yaml", "once", "list.yaml"),
    Case("run-config-list", RUN.replace("run default", "run {ws}/c/list.yaml"), "mapping", "list.yaml"),
    Case("run-config-alias-bomb", RUN.replace("run default", "run {ws}/c/bomb.yaml"), "alias", "bomb.yaml"),
    Case("run-stage-unknown", f"{RUN} --set stages=[cache,stear]", "stear"),
    Case("run-stages-empty", f"{RUN} --set stages=[]", "stages"),
    Case(
        "run-position-not-cached",
        f"{RUN} --set cache.positions=[last] --set probes.positions=[cue]",
        "not cached",
    ),
    Case("run-out-is-a-file", f"{RUN} --out {{ws}}/afile", "is a file", "a-file"),
    Case("run-out-under-a-file", f"{RUN} --out {{ws}}/afile/run", "afile", "a-file"),
    Case("run-out-not-a-run", RUN, "not an afprobe run", "run-notes"),
    Case("run-out-read-only", f"{RUN} --out {{ro}}/run", "read-only"),
    Case("run-seed-negative", f"{RUN} --seed -1", "seed"),
    Case("run-requests-binary", f"{RUN} --requests {{ws}}/r/binary.txt", "binary.txt", "binary.txt"),
    # ---- report
    Case("report-missing-dir", "report {ws}/nowhere", "not an afprobe run"),
    Case("report-a-file", "report {ws}/afile", "afile", "a-file"),
    Case("report-not-a-run", "report {ws}/rd", "not an afprobe run", "run-not-a-run"),
    Case("report-bad-config", "report {ws}/rd", "config.yaml", "run-bad-config"),
    Case("report-list-config", "report {ws}/rd", "mapping", "run-list-config"),
    Case("report-nothing-finished", "report {ws}/rd", "no finished stage", "run-no-stages"),
    # ---- models
    Case("models-fetch-unknown", "models fetch nosuchmodel", "nosuchmodel"),
    Case("models-fetch-hub-alias", "models fetch llama-3.1-8b-instruct", "not embedded"),
    Case("models-unknown-command", "models frobnicate", "frobnicate"),
    Case("unknown-command", "frobnicate", "frobnicate"),
]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> dict[str, Path]:
    """A finished activation file of the session's tiny model and its probe results (built once)."""
    root = tmp_path_factory.mktemp("bad-input-shared")
    h5, probes = root / "a.h5", root / "probes"
    base = ["--set", "scenario.cue_formats=[tag]", "--set", "scenario.system_prompts=[neutral]", "-q"]
    assert main(["cache", "--model", str(tiny_model_path), "--limit", "4", "--out", str(h5), *base]) == 0
    sets = ["--set", "probes.folds=2", "--set", "probes.bootstrap=10", "--set", "probes.plots=false"]
    assert main(["probe", str(h5), "--out", str(probes), "-q", *sets]) == 0
    other = root / "other-model"
    make_tiny_model(n_layers=3, d_model=64).save_pretrained(other)
    make_tiny_tokenizer().save_pretrained(other)
    return {"model": tiny_model_path, "h5": h5, "probes": probes, "other": other}


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A directory nobody can write into: a read-only tmpfs (as root), else mode 0555; None when neither works."""
    d = tmp_path_factory.mktemp("ro")
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount"):
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True
        )
        mounted = res.returncode == 0
    if not mounted:
        d.chmod(0o555)
    try:
        with tempfile.NamedTemporaryFile(dir=d):
            refuses = False
    except OSError:
        refuses = True
    yield d if refuses else None
    if mounted:
        subprocess.run(["umount", str(d)], check=False)
    else:
        d.chmod(0o755)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, shared, read_only_dir, capsys, monkeypatch) -> None:
    if "{ro}" in case.argv and read_only_dir is None:
        pytest.skip(
            "no read-only directory here (a read-only mount needs root; mode 0555 does not stop root)"
        )
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.delenv("AFPROBE_DEBUG", raising=False)
    if case.setup is not None:
        SETUPS[case.setup](ws, shared)
    before = {k: _files(p) for k, p in {"ws": ws, "shared": shared["probes"].parent}.items()}
    paths = {**{k: str(v) for k, v in shared.items()}, "ws": str(ws), "ro": str(read_only_dir)}
    argv = shlex.split(case.argv.format(**paths))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("afprobe: error: "), err
    assert case.needle.lower() in lines[0].lower(), err
    after = {k: _files(p) for k, p in {"ws": ws, "shared": shared["probes"].parent}.items()}
    assert after == before, f"new files: {after['ws'] - before['ws']} {after['shared'] - before['shared']}"


def test_the_table_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    commands = {shlex.split(c.argv)[0] for c in CASES}
    assert {"cache", "probe", "steer", "patch", "run", "report", "models"} <= commands
