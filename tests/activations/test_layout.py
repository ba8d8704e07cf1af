"""The by-layer layout of ``resid``: one chunk per (layer, position) holding every prompt, allocated in (layer,
position) order so each slice is one contiguous byte range; older files (chunked by batches of prompts) read the
same and ``afprobe relayout`` rewrites them."""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest

from afprobe.activations import ActivationReader, ActivationWriter, _store, relayout
from afprobe.cli import main

N, LAYERS, POSITIONS, D = 40, 3, 4, 16


def write(path: Path, batch: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    resid = rng.normal(size=(N, LAYERS, POSITIONS, D)).astype(np.float32)
    meta = {
        "pair_id": list(range(N)),
        "harmful": [True] * N,
        **{
            c: [f"{c}{i}" for i in range(N)]
            for c in ("request_id", "cue_format", "system_prompt", "category", "request_text")
        },
        "tier": ["free", "paid"] * (N // 2),
    }
    w = ActivationWriter(
        path,
        run_key="k",
        n_prompts=N,
        layers=[0, 2, 5],
        position_names=["a", "b", "c", "d"],
        d_model=D,
        max_len=6,
        dtype="float32",
        batch_size=batch,
        meta=meta,
        attrs={"pad_token_id": 0, "model_id": "m"},
    )
    for s in range(0, N, batch):
        ids = np.arange(s, s + batch)[:, None] + np.zeros((1, 6), dtype=np.int64)
        w.write_batch(s, resid[s : s + batch], ids, np.full(batch, 6), np.zeros((batch, POSITIONS), np.int64))
    w.finalize()
    return resid


def chunk_ranges(path: Path) -> list[tuple[tuple[int, ...], int, int]]:
    with h5py.File(path, "r") as f:
        ds = f["resid"]
        infos = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    return [(tuple(c.chunk_offset), int(c.byte_offset), int(c.size)) for c in infos]


def test_each_layer_position_is_one_chunk_of_every_prompt_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    resid = write(path)
    with ActivationReader(path) as r:
        assert r.resid.chunks == (N, 1, 1, D) and r.layout == "by_layer"
        np.testing.assert_array_equal(r.resid[()], resid)
        np.testing.assert_array_equal(r.get(2, "c"), resid[:, 1, 2])
    ranges = sorted(chunk_ranges(path), key=lambda c: c[1])
    assert [c[0] for c in ranges] == [(0, la, p, 0) for la in range(LAYERS) for p in range(POSITIONS)]
    for (_, off, size), (_, nxt, _) in itertools.pairwise(ranges):
        assert nxt == off + size  # back to back: a layer is one sequential read too
    assert all(size == N * D * 4 for _, _, size in ranges)


def test_large_files_get_a_few_big_chunks(monkeypatch) -> None:
    monkeypatch.setattr(_store, "CHUNK_BYTES", 10 * D * 2)
    assert _store.resid_chunks(N, D, "float16") == (10, 1, 1, D)
    assert _store.resid_chunks(N, D, "float32") == (5, 1, 1, D)


def test_relayout_rewrites_an_old_file_with_the_same_content(tmp_path: Path, monkeypatch) -> None:
    old = tmp_path / "old.h5"
    with monkeypatch.context() as m:  # the layout before: one chunk per batch of prompts
        m.setattr(_store, "resid_chunks", lambda n, d, dtype: (8, 1, 1, d))
        resid = write(old)
    with ActivationReader(old) as r:
        assert r.layout == "by_prompt"
        before = {k: r.f[k][()] for k in ("input_ids", "lengths", "position_index")}
        meta, attrs = r.meta, r.attrs
    new = relayout(old, tmp_path / "new.h5", progress=False)
    with ActivationReader(new) as r:
        assert r.layout == "by_layer"
        np.testing.assert_array_equal(r.resid[()], resid)
        for k, v in before.items():
            np.testing.assert_array_equal(r.f[k][()], v)
        assert {k: list(v) for k, v in r.meta.items()} == {k: list(v) for k, v in meta.items()}
        assert r.attrs == attrs and r.layers == [0, 2, 5] and r.position_names == ["a", "b", "c", "d"]
    assert not list(tmp_path.glob("*.partial"))
    assert main(["relayout", str(old), "-q"]) == 0  # in place
    with ActivationReader(old) as r:
        assert r.layout == "by_layer"
        np.testing.assert_array_equal(r.resid[()], resid)
    assert main(["relayout", str(old), "-q"]) == 0  # already in the layout: left as it is


def test_relayout_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "a.h5"
    write(path)
    (tmp_path / "taken.h5").write_bytes(b"")
    assert main(["relayout", str(path), "--out", str(tmp_path / "taken.h5"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["relayout", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("kill_after", [1, 3])
def test_resume_into_the_by_layer_layout_gives_identical_arrays(tmp_path: Path, kill_after: int) -> None:
    """A writer stopped after some batches (its file left ``.partial``) resumes where ``n_done`` says, writing
    in place into the same chunks; the finished file equals one written without a stop."""
    ref = write(tmp_path / "ref.h5")
    out = tmp_path / "b.h5"
    meta = {
        "pair_id": list(range(N)),
        "harmful": [True] * N,
        **{
            c: [f"{c}{i}" for i in range(N)]
            for c in ("request_id", "cue_format", "system_prompt", "category", "request_text")
        },
        "tier": ["free", "paid"] * (N // 2),
    }
    kw = dict(
        run_key="k", n_prompts=N, layers=[0, 2, 5], position_names=["a", "b", "c", "d"], d_model=D, max_len=6,
        dtype="float32", batch_size=8, meta=meta, attrs={"pad_token_id": 0, "model_id": "m"},
    )  # fmt: skip
    w = ActivationWriter(out, **kw)
    for s in range(0, 8 * kill_after, 8):
        w.write_batch(
            s, ref[s : s + 8], np.zeros((8, 6), np.int64), np.full(8, 6), np.zeros((8, 4), np.int64)
        )
    w.close()
    w = ActivationWriter(out, **kw)
    assert w.n_done == 8 * kill_after
    for s in range(w.n_done, N, 8):
        w.write_batch(
            s, ref[s : s + 8], np.zeros((8, 6), np.int64), np.full(8, 6), np.zeros((8, 4), np.int64)
        )
    with ActivationReader(w.finalize()) as r:
        np.testing.assert_array_equal(r.resid[()], ref)
