"""Every benchmark in one run, one table of ratios: ``python -m benchmarks`` (or ``afprobe bench``).

    python -m benchmarks [--only cache,probes,steering,patching,gpu,growth,probe_scale,hdf5] [--rounds N]
                         [--quick] [--out benchmarks]

Runs each area's ``benchmarks/bench_<area>.py`` ``main()`` (imported lazily; an area whose module is missing or
fails is noted and skipped), then prints one table and writes ``results-<device>.json`` and ``RESULTS.md``
(one section per device, so CPU and GPU results sit side by side) under ``--out``. With ``--only``, the areas
recorded earlier for the same device are kept, each dated by the run that measured it.

What a ``main(...) -> dict`` may return for the table: ``times_s`` {method: median seconds}, measured side by
side, its first method the reference every other is divided by; any number whose key contains ``ratio``,
``speedup``, ``fraction``, ``throughput`` or ``exponent`` (shown as is); ``target`` / ``verdict`` / ``note``
(shown beside); ``markdown`` (text put under the table in RESULTS.md, e.g. a growth curve's points).
``main`` is called with the options it accepts among ``rounds`` and ``quick``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import re
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

AREAS = ("cache", "probes", "steering", "patching", "gpu", "growth", "probe_scale", "hdf5")
NUMBER_KEYS = re.compile(r"ratio|speedup|fraction|throughput|exponent")


@dataclass
class Row:
    area: str
    measure: str
    value: float | None
    unit: str  # "x" (ratio to the area's reference), "s", or "" (a figure reported as is)
    note: str = ""


def device_name() -> str:
    """The GPU's name, or the CPU's with the thread count torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def run_area(area: str, options: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(result, note): the area's ``main`` result, or ``None`` and why not."""
    try:
        module = importlib.import_module(f"benchmarks.bench_{area}")
    except ModuleNotFoundError as e:
        if e.name == f"benchmarks.bench_{area}":
            return None, f"skipped: benchmarks/bench_{area}.py is missing"
        return None, f"skipped: bench_{area} needs {e.name}, which is not installed"
    main = getattr(module, "main", None)
    if not callable(main):
        return None, f"skipped: bench_{area} has no main()"
    accepted = inspect.signature(main).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    try:
        result = main(**kwargs)
    except Exception as e:  # one failing area must not lose the others
        traceback.print_exc()
        return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not isinstance(result, dict):
        return None, f"bench_{area}.main() returned {type(result).__name__}, not a dict"
    return result, str(result.get("skipped", "")) and f"skipped: {result['skipped']}"


def rows_for(area: str, result: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    times = result.get("times_s")
    if isinstance(times, dict) and times:
        names = list(times)
        ref = float(times[names[0]])
        for name in names:
            t = float(times[name])
            note = "reference" if name == names[0] else ""
            rows.append(Row(area, name, t / ref if ref > 0 else None, "x", note))
    note = " ".join(f"{k}={result[k]}" for k in ("target", "verdict", "note") if k in result)
    for key, value in result.items():
        if key == "times_s" or not NUMBER_KEYS.search(key):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append(Row(area, key, float(value), "", note))
        elif isinstance(value, dict):
            rows.extend(
                Row(area, f"{key}: {k}", float(v), "", note)
                for k, v in value.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            )
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        f"| {'area':9s} | {'measure':68s} | {'value':>9s} | note",
        f"|{'-' * 11}|{'-' * 70}|{'-' * 11}|-----",
    ]
    for r in rows:
        value = "-" if r.value is None else f"{r.value:8.3f}{r.unit}" if r.unit == "x" else f"{r.value:9.4g}"
        lines.append(f"| {r.area:9s} | {r.measure[:68]:68s} | {value:>9s} | {r.note}")
    return "\n".join(lines)


def update_results_md(path: Path, device: str, body: str) -> None:
    """Replace this device's section of ``RESULTS.md`` (other devices' sections are kept)."""
    header = "# Benchmark results\n\nWritten by `python -m benchmarks`; one section per device. Ratios are side by side in one run.\n"
    sections: dict[str, str] = {}
    if path.exists():
        for part in re.split(r"(?m)^## ", path.read_text())[1:]:
            name, _, rest = part.partition("\n")
            sections[name.strip()] = rest.strip("\n")
    sections[device] = body.strip("\n")
    text = header + "".join(f"\n## {name}\n\n{content}\n" for name, content in sections.items())
    path.write_text(text)


def previous_results(json_path: Path, device: str) -> dict[str, Any]:
    """The areas recorded for this device by an earlier run, each with the time it was measured."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return {}
    if record.get("device") != device:
        return {}
    return {
        area: {**entry, "created": entry.get("created", record.get("created"))}
        for area, entry in record.get("results", {}).items()
        if area in AREAS and isinstance(entry, dict)
    }


def run_all(
    only: list[str] | None = None, rounds: int | None = None, quick: bool = False, out: Path | None = None
) -> dict[str, Any]:
    """Run the areas (all, or ``only``) and write the device's JSON and RESULTS.md section. With ``only``, the
    other areas recorded for this device are kept, each row group dated by its own run."""
    out = out or Path(__file__).resolve().parent
    device = device_name()
    json_path = out / f"results-{slug(device)}.json"
    options = {"rounds": rounds, "quick": quick or None}
    results: dict[str, Any] = previous_results(json_path, device) if only else {}
    t0 = time.perf_counter()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for area in only or list(AREAS):
        print(f"\n=== {area} ===", flush=True)
        result, note = run_area(area, options)
        results[area] = {"result": result, "note": note, "created": stamp}
    order = [a for a in AREAS if a in results] + [a for a in results if a not in AREAS]
    results = {a: results[a] for a in order}
    rows: list[Row] = []
    for area, entry in results.items():
        if entry["result"] is not None and not entry["note"]:
            rows.extend(rows_for(area, entry["result"]))
        else:
            rows.append(Row(area, entry["note"], None, ""))
    table = format_table(rows)
    print(f"\n=== all benchmarks on {device} ===\n{table}")
    stamps = {area: entry["created"] for area, entry in results.items()}
    record = {
        "device": device,
        "created": stamp,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - t0,
        "rows": [asdict(r) for r in rows],
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2, default=str))
    when = (
        f"Run {stamp}"
        if len(set(stamps.values())) == 1
        else "Areas from separate runs (each measured side by side within itself): "
        + ", ".join(f"{area} {t}" for area, t in stamps.items())
    )
    details = "".join(
        f"\n### {area}\n\n{entry['result']['markdown'].strip()}\n"
        for area, entry in results.items()
        if isinstance(entry["result"], dict) and isinstance(entry["result"].get("markdown"), str)
    )
    body = f"{when}, torch {torch.__version__}; raw numbers in `{json_path.name}`.\n\n{table}\n{details}"
    update_results_md(out / "RESULTS.md", device, body)
    print(f"\nwrote {json_path} and {out / 'RESULTS.md'}")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated areas (default all: {','.join(AREAS)})")
    ap.add_argument("--rounds", type=int, help="timed rounds per method (each area's default otherwise)")
    ap.add_argument("--quick", action="store_true", help="smaller settings where an area offers them")
    ap.add_argument(
        "--out", type=Path, help="where results-<device>.json and RESULTS.md go (default benchmarks/)"
    )
    args = ap.parse_args(argv)
    only = [a.strip() for a in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or []) - set(AREAS))
    if unknown:
        ap.error(f"unknown area(s) {', '.join(unknown)} (known: {', '.join(AREAS)})")
    run_all(only, args.rounds, args.quick, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
