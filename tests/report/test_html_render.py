"""report.html renders in a real browser: headless Chromium loads it offline, every image decodes, no script
error. Skipped where Chromium is absent, except in CI (env CI set), where that is a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Added by the test (never part of the report): records script errors and, once loaded, each image's state.
PROBE_HEAD = (
    "<script>window.__errs=[];window.addEventListener('error',function(e){"
    "window.__errs.push(e.message?('script: '+e.message):('resource: '+((e.target&&(e.target.src||e.target.href))"
    "||'?').slice(0,80)));},true);</script>"
)
PROBE_TAIL = (
    "<script>window.addEventListener('load',function(){var r={errors:window.__errs,images:[]};"
    "var imgs=document.images;for(var i=0;i<imgs.length;i++){r.images.push({alt:imgs[i].alt,"
    "ok:imgs[i].complete&&imgs[i].naturalWidth>0,w:imgs[i].naturalWidth});}"
    "var pre=document.createElement('pre');pre.id='afprobe-check';pre.textContent=JSON.stringify(r);"
    "document.body.appendChild(pre);});</script>"
)


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is required in CI (apt-get install chromium)")
    pytest.skip("Chromium not installed (apt-get install chromium); CI runs this test")


def render_check(html_path: Path, tmp_path: Path) -> dict:
    """Load a copy of ``html_path`` with the probe scripts injected; return ``{errors, images}``."""
    html = html_path.read_text(encoding="utf-8")
    html = html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1)
    page = tmp_path / "page.html"
    page.write_text(html, encoding="utf-8")
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="afprobe-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"Chromium did not finish loading the page (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(
        m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


def test_report_renders_in_chromium(tiny_run: Path, tmp_path: Path) -> None:
    result = render_check(tiny_run / "report.html", tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) >= 8
    broken = [img["alt"] for img in result["images"] if not img["ok"]]
    assert not broken, broken


def test_the_check_catches_a_broken_image_and_a_script_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        "<img alt='broken' src='data:image/png;base64,AAAA'>"
        "<script>undefinedFunction();</script></body></html>"
    )
    result = render_check(bad, tmp_path)
    assert [img["ok"] for img in result["images"]] == [False]
    assert any("undefinedFunction" in e for e in result["errors"])
