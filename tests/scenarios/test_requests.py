"""The built-in request set and the request loaders (CSV, TXT, JSONL, hub sets); no network."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from afprobe._errors import AfprobeError
from afprobe.scenarios._requests import Request, builtin_requests, load_requests

# --- the built-in set ---------------------------------------------------------------------------------------


def test_builtin_counts() -> None:
    reqs = builtin_requests()
    harmful = builtin_requests(harmful=True)
    benign = builtin_requests(harmful=False)
    assert len(harmful) >= 60
    assert len(benign) >= 40
    assert len(reqs) == len(harmful) + len(benign)
    assert all(r.harmful for r in harmful)
    assert not any(r.harmful for r in benign)


def test_builtin_ids_texts_categories() -> None:
    reqs = builtin_requests()
    assert len({r.id for r in reqs}) == len(reqs)
    assert len({r.text for r in reqs}) == len(reqs)
    assert len({r.text.lower() for r in reqs}) == len(reqs)
    for r in reqs:
        assert isinstance(r, Request)
        assert r.category and r.category != "uncategorized", r
        assert r.text.strip() == r.text and r.text, r
        assert len(r.text.split()) < 30, r
        assert r.source == "builtin"
        assert r.id.startswith("h" if r.harmful else "b"), r


def test_builtin_categories_evenly_spread() -> None:
    for harmful in (True, False):
        counts = Counter(r.category for r in builtin_requests(harmful=harmful))
        assert len(counts) >= 6, counts
        assert max(counts.values()) - min(counts.values()) <= 2, counts
    harmful_cats = {r.category for r in builtin_requests(harmful=True)}
    benign_cats = {r.category for r in builtin_requests(harmful=False)}
    assert not harmful_cats & benign_cats


def test_builtin_specs() -> None:
    assert load_requests("builtin") == builtin_requests()
    assert load_requests("builtin:harmful") == builtin_requests(harmful=True)
    assert load_requests("builtin:benign") == builtin_requests(harmful=False)
    assert load_requests("builtin", harmful=False) == builtin_requests(harmful=False)


def test_limit_applies_after_harmful_filter() -> None:
    benign = builtin_requests(harmful=False)
    got = load_requests("builtin", harmful=False, limit=3)
    assert got == benign[:3]
    assert load_requests("builtin", limit=10_000) == builtin_requests()


# --- file loaders -------------------------------------------------------------------------------------------


def test_csv_goal_column(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text(
        'goal,target\nWrite a rude limerick,Sure\n"Plan a heist, quickly",Sure\n', encoding="utf-8"
    )
    reqs = load_requests(path)
    assert [r.text for r in reqs] == ["Write a rude limerick", "Plan a heist, quickly"]
    assert [r.id for r in reqs] == ["bench-0001", "bench-0002"]
    assert all(r.harmful and r.category == "uncategorized" for r in reqs)
    assert reqs[0].source == str(path)


def test_csv_prompt_column_with_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "id,prompt,category,harmful\n"
        "x1,Bake bread,cooking,false\n"
        "x2,Pick a lock,crime,true\n"
        ",Sort a list,coding,\n",
        encoding="utf-8",
    )
    reqs = load_requests(str(path))
    assert reqs == [
        Request("x1", "Bake bread", "cooking", False, str(path)),
        Request("x2", "Pick a lock", "crime", True, str(path)),
        Request("mixed-0003", "Sort a list", "coding", True, str(path)),
    ]
    assert [r.id for r in load_requests(path, harmful=False)] == ["x1"]
    assert [r.id for r in load_requests(path, harmful=True, limit=1)] == ["x2"]


def test_txt(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        "# a comment\nFirst request\n\n   \nSecond request\n  # indented comment\n", encoding="utf-8"
    )
    reqs = load_requests(path)
    assert [(r.id, r.text, r.harmful) for r in reqs] == [
        ("list-0001", "First request", True),
        ("list-0002", "Second request", True),
    ]


@pytest.mark.parametrize("key", ["text", "prompt", "goal"])
def test_jsonl(tmp_path: Path, key: str) -> None:
    path = tmp_path / "set.jsonl"
    rows = [
        {key: "Explain tides", "id": "q1", "category": "science", "harmful": False},
        {key: "Write a threat"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    reqs = load_requests(path)
    assert reqs == [
        Request("q1", "Explain tides", "science", False, str(path)),
        Request("set-0002", "Write a threat", "uncategorized", True, str(path)),
    ]


def test_builtin_file_round_trips_through_jsonl_loader(tmp_path: Path) -> None:
    path = tmp_path / "copy.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": r.id, "text": r.text, "category": r.category, "harmful": r.harmful})
            for r in builtin_requests()
        ),
        encoding="utf-8",
    )
    got = load_requests(path)
    assert [(r.id, r.text, r.category, r.harmful) for r in got] == [
        (r.id, r.text, r.category, r.harmful) for r in builtin_requests()
    ]


# --- bad input ----------------------------------------------------------------------------------------------


def _raises(spec: str | Path, match: str, **kwargs: object) -> AfprobeError:
    with pytest.raises(AfprobeError, match=match) as info:
        load_requests(spec, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    err = _raises(tmp_path / "nope.csv", "not found")
    assert "nope.csv" in str(err)


def test_unknown_name_is_treated_as_missing_file() -> None:
    _raises("advbenchh", "not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    err = _raises(tmp_path / "dir.csv", "directory")
    assert "dir.csv" in str(err)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "reqs.xlsx"
    path.write_text("x", encoding="utf-8")
    err = _raises(path, "unsupported")
    assert "reqs.xlsx" in str(err)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.txt", ""),
        ("comments.txt", "# only\n\n# comments\n"),
        ("empty.csv", ""),
        ("header.csv", "goal,target\n"),
        ("empty.jsonl", "\n\n"),
    ],
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = _raises(path, "no requests")
    assert name in str(err)


def test_csv_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("question,answer\nWhat?,That\n", encoding="utf-8")
    err = _raises(path, "goal")
    assert "prompt" in str(err) and "cols.csv" in str(err)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken"\n', encoding="utf-8")
    err = _raises(path, "invalid JSON on line 2")
    assert "bad.jsonl" in str(err)


def test_jsonl_without_text_field(tmp_path: Path) -> None:
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"question": "hi"}\n', encoding="utf-8")
    _raises(path, "line 1 has no 'text'")


def test_jsonl_non_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('["a", "b"]\n', encoding="utf-8")
    _raises(path, "line 1 is not a JSON object")


def test_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "dupid.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n', encoding="utf-8")
    err = _raises(path, "duplicate request id 'a'")
    assert "dupid.jsonl" in str(err)


def test_duplicate_texts_names_first(tmp_path: Path) -> None:
    path = tmp_path / "duptext.txt"
    path.write_text("alpha\nbeta\nalpha\ngamma\nbeta\n", encoding="utf-8")
    err = _raises(path, "duplicate request text 'alpha'")
    assert "duptext.txt" in str(err)


def test_csv_bad_harmful_value(tmp_path: Path) -> None:
    path = tmp_path / "flag.csv"
    path.write_text("prompt,harmful\nHello,maybe\n", encoding="utf-8")
    _raises(path, "harmful must be true or false")


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one(limit: int) -> None:
    _raises("builtin", "limit must be at least 1", limit=limit)


def test_filter_leaves_nothing() -> None:
    _raises("builtin:benign", "no harmful requests", harmful=True)


# --- hub sets (network blocked) -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["advbench", "harmbench"])
def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("network blocked in tests")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    err = _raises(name, "could not reach the Hugging Face hub")
    assert name in str(err) and "local CSV" in str(err)


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[object, ...]] = []

    def fake(*args: object, **kwargs: object) -> list[dict[str, str]]:
        calls.append(args)
        return [
            {"prompt": "Do a bad thing", "category": "chemical"},
            {"prompt": "Do a bad thing", "category": "chemical"},
            {"prompt": "Do another bad thing", "category": "cyber"},
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    reqs = load_requests("harmbench")
    assert calls == [("walledai/HarmBench", "standard")]
    assert reqs == [
        Request("harmbench-0001", "Do a bad thing", "chemical", True, "harmbench"),
        Request("harmbench-0002", "Do another bad thing", "cyber", True, "harmbench"),
    ]
