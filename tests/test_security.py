"""Security: report text is escaped everywhere; nothing is unpickled (no pickle, ``torch.load`` only with
``weights_only=True``, ``np.load`` never with pickles); YAML only through ``yaml.safe_load``; ``trust_remote_code``
off unless asked; a run writes nothing outside ``--out`` and the model cache.

The "never used" rules are source checks over the package (they fail on the line that breaks them); the rest are
behaviour tests."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import afprobe
from afprobe.models import ModelConfig, load_model
from afprobe.pipeline import run_results
from afprobe.report import read_stage
from afprobe.report._html import render_html

PACKAGE = Path(afprobe.__file__).parent
SCRIPT = "<script>alert(1)</script>"
ONERROR = "\"'><img src=x onerror=alert(2)>"
PAYLOAD = f"{SCRIPT} {ONERROR}"


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def _calls(tree: ast.Module) -> list[tuple[str, ast.Call]]:
    """Every call as (dotted name, node): ``torch.load(...)`` gives ``"torch.load"``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts = []
            f: ast.expr = node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            out.append((".".join(reversed(parts)), node))
    return out


def _kw(call: ast.Call, name: str) -> Any:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return None


# --------------------------------------------------------------------------------------- the "never used" rules
def test_no_pickle_anywhere_in_the_package() -> None:
    bad = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(
                n.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
                for n in names
            ):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        for name, call in _calls(tree):
            if name.endswith(("read_pickle", "to_pickle")) or (
                name.endswith(("np.load", "numpy.load")) and _kw(call, "allow_pickle") not in (None, False)
            ):
                bad.append(f"{path.relative_to(PACKAGE)}:{call.lineno} {name}")
    assert bad == []


def test_torch_load_only_with_weights_only() -> None:
    bad = [
        f"{p.relative_to(PACKAGE)}:{c.lineno}"
        for p, tree in _sources()
        for name, c in _calls(tree)
        if name.endswith("torch.load") and _kw(c, "weights_only") is not True
    ]
    assert bad == []


def test_yaml_only_through_safe_load() -> None:
    unsafe = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}
    bad = []
    for p, tree in _sources():
        for name, c in _calls(tree):
            head, _, attr = name.rpartition(".")
            if head.endswith("yaml") and attr in unsafe:
                bad.append(f"{p.relative_to(PACKAGE)}:{c.lineno} {name}")
            if head.endswith("yaml") and attr == "compose" and "SafeLoader" not in ast.unparse(c):
                bad.append(f"{p.relative_to(PACKAGE)}:{c.lineno} {name} without SafeLoader")
            if name in {"eval", "exec"}:
                bad.append(f"{p.relative_to(PACKAGE)}:{c.lineno} {name}")
    assert bad == []


def test_trust_remote_code_is_never_switched_on_in_the_source() -> None:
    bad = []
    for p, tree in _sources():
        for _name, c in _calls(tree):
            if _kw(c, "trust_remote_code") is True:
                bad.append(f"{p.relative_to(PACKAGE)}:{c.lineno}")
    text = "\n".join(p.read_text() for p in PACKAGE.rglob("*.yaml"))
    assert bad == [] and not re.search(r"trust_remote_code:\s*true", text, re.I)


# ------------------------------------------------------------------------------------------ trust_remote_code
@pytest.mark.parametrize("asked", [False, True])
def test_trust_remote_code_reaches_transformers_only_when_asked(
    asked: bool, monkeypatch, tiny_model_path: Path
) -> None:
    import transformers

    seen: list[Any] = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append(kwargs.get("trust_remote_code"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    cfg = ModelConfig(
        name=str(tiny_model_path), backend="hooks", **({"trust_remote_code": True} if asked else {})
    )
    assert ModelConfig().trust_remote_code is False
    load_model(cfg)
    assert seen == [asked, asked]


# ------------------------------------------------------------------------------------------------ escaping
def _poison(x: Any) -> Any:
    """Every string in a JSON value with the payload appended (keys too, where they are labels)."""
    if isinstance(x, str):
        return x + PAYLOAD
    if isinstance(x, list):
        return [_poison(v) for v in x]
    if isinstance(x, dict):
        return {k: _poison(v) for k, v in x.items()}
    return x


def _no_live_markup(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"<[^>]*\bonerror\s*=", html, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_every_text_of_the_report_is_escaped(tiny_run: Path) -> None:
    """Every string the report shows (summary, setup, sample pair, title, description, config), poisoned."""
    summary = _poison(json.loads((tiny_run / "summary.json").read_text()))
    setup = _poison(read_stage(run_results(tiny_run), "scenarios"))
    html = render_html(summary, setup, [], title=PAYLOAD, description=PAYLOAD, config_yaml=PAYLOAD)
    _no_live_markup(html)
    assert (
        html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10
    )  # the payload is shown, as text, throughout


# ---------------------------------------------- end to end: hostile requests, and no file outside --out / cache
def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_a_run_on_hostile_requests_renders_them_as_text_and_writes_only_under_out(
    tmp_path: Path, tiny_model_path: Path, tiny_run_sets: list[str]
) -> None:
    home, cwd, tmp, out = (tmp_path / n for n in ("home", "cwd", "tmp", "out"))
    for d in (home, cwd, tmp):
        d.mkdir()
    requests = tmp_path / "hostile.jsonl"
    lines = [{"text": f"Explain {PAYLOAD} number {i}", "harmful": True} for i in range(4)]
    requests.write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = {d: _files(d) for d in (home, cwd, tmp, tiny_model_path, tmp_path)}
    sets = [x for s in [*tiny_run_sets, f"scenario.requests={requests}"] for x in ("--set", s)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),  # matplotlib's font cache (not ours) stays out
    }
    argv = [
        sys.executable,
        "-m",
        "afprobe.cli",
        "run",
        "default",
        "--out",
        str(out),
        "--model",
        str(tiny_model_path),
    ]
    res = subprocess.run([*argv, "-q", *sets], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    html = (out / "report.html").read_text()
    _no_live_markup(html)
    # nothing new outside --out: not in the working directory, the temporary directory, the model, the
    # inputs' folder; under HOME only matplotlib's own font cache (pointed there above)
    assert _files(cwd) == before[cwd] and _files(tmp) == before[tmp]
    assert _files(tiny_model_path) == before[tiny_model_path]
    new_home = {p.relative_to(home) for p in _files(home) - before[home]}
    assert all(p.parts[:2] == (".config", "matplotlib") for p in new_home), new_home
    outside = {
        p for p in _files(tmp_path) - before[tmp_path] if out not in p.parents and home not in p.parents
    }
    assert outside == set()
