"""`gdo build` keeps frame lists once per line; its files equal a build from the full QA table."""

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gdo_core import build as BLD
from gdo_core.pool_read import read_pool

# The published build step's outputs for the four presets (see the fixture's README).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_build"


@pytest.mark.parametrize("compat", [None, "published"])
@pytest.mark.parametrize("slice_rows", [7, 10**9])
def test_row_frames_build_writes_the_same_files(tmp_path, monkeypatch, compat, slice_rows):
    """Lean (frames per line, low-card columns Categorical, written slice_rows rows at a time) and
    full builds (a String table from read_pool) write the same bytes."""
    ov, vv, metrics = (
        FIXTURE / f for f in ("onevision.jsonl.gz", "video.jsonl.gz", "metrics.jsonl.gz")
    )
    monkeypatch.setattr(BLD, "OUTPUT_SLICE_ROWS", slice_rows)
    lean = BLD.build_subsets(
        "temp",
        ov,
        vv,
        tmp_path / "lean",
        metrics=metrics,
        compat=compat,
        progress=False,
        target_frames=8,
    )
    pool = read_pool(ov, vv, mcq_on_raw=(compat is None), target_frames=8)
    assert "frames" in pool.qa.columns
    monkeypatch.setattr(BLD, "OUTPUT_SLICE_ROWS", 10**9)
    monkeypatch.setattr(BLD, "OUTPUT_SLICES", 1)  # each file in one slice
    full = BLD.build_from_pool(
        pool.qa,
        "temp",
        tmp_path / "full",
        metrics=BLD.load_metrics(metrics, strict=(compat is None)),
        compat=compat,
        target_frames=8,
    )
    for name in (lean.gdo_path.name, lean.uni_path.name, "subset_members.parquet"):
        assert (tmp_path / "lean" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), (
            name
        )
    assert full.report["hard_constraints"] == lean.report["hard_constraints"]
    assert lean.members.height > 100 and lean.report["target_count"] > 0


def test_frame_rows_finds_each_rows_frame_list():
    qa = pl.DataFrame({"source_file": ["a", "a", "b", "b", "c"], "line": [1, 1, 1, 5, 1]})
    row_frames = pl.DataFrame(
        {"source_file": ["b", "a"], "line": [1, 1], "frames": [["b1"], ["a1", "a2"]]}
    )
    at = BLD.frame_rows(qa[[3, 2, 0, 1, 4]], row_frames)
    assert at.to_list() == [None, 0, 1, 1, None]  # b:5 and file c have no frame list
    assert row_frames["frames"].gather(at).to_list() == [
        None,
        ["b1"],
        ["a1", "a2"],
        ["a1", "a2"],
        None,
    ]


def test_frame_rows_refuses_a_line_held_twice():
    qa = pl.DataFrame({"source_file": ["a"], "line": [1]})
    row_frames = pl.DataFrame({"source_file": ["a", "a"], "line": [1, 1], "frames": [["x"], ["y"]]})
    with pytest.raises(ValueError, match="more than once"):
        BLD.frame_rows(qa, row_frames)


@pytest.mark.parametrize("copy", ["kernel", "fails at once", "fails midway", "absent"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch, workers, copy):
    calls = []

    def copy_file_range(src, dst, count):
        calls.append(count)
        if copy == "fails at once" or len(calls) > 1:
            raise OSError(18, "Invalid cross-device link")
        return os.sendfile(dst, src, None, min(count, 3))  # a short copy, then the fallback

    if copy == "absent":
        monkeypatch.delattr(BLD.os, "copy_file_range", raising=False)
    elif copy != "kernel":
        monkeypatch.setattr(BLD.os, "copy_file_range", copy_file_range, raising=False)

    def frames():
        yield lambda: pl.DataFrame({"a": [1]})
        raise RuntimeError("disk gone")

    def failing():
        raise RuntimeError("no frame")

    for bad in (frames(), iter([lambda: pl.DataFrame({"a": [1]}), failing])):
        with pytest.raises(RuntimeError, match="disk gone|no frame"):
            BLD._write_ndjson_atomic(bad, tmp_path / "out.jsonl", workers)
        assert list(tmp_path.iterdir()) == []
    parts = [lambda i=i: pl.DataFrame({"a": [i, i + 1]}) for i in range(0, 10, 2)]
    BLD._write_ndjson_atomic(iter(parts), tmp_path / "ok.jsonl", workers)
    expected = "".join(f'{{"a":{i}}}\n' for i in range(10))
    assert (tmp_path / "ok.jsonl").read_text() == expected  # the frames' order, whatever the threads
    assert [p.name for p in tmp_path.iterdir()] == ["ok.jsonl"]


def test_gather_chunked_equals_gather_across_chunks_nulls_and_repeats():
    rng = np.random.default_rng(1)
    parts = [
        pl.Series("frames", [[f"{c}-{i}"] * (i % 3) for i in range(n)])
        for c, n in enumerate([5, 7, 3])
    ]
    column = pl.concat(parts, rechunk=False)
    assert column.n_chunks() == 3
    for _ in range(100):
        picks = rng.integers(0, column.len(), int(rng.integers(0, 30))).tolist()
        rows = pl.Series([None if rng.random() < 0.2 else r for r in picks], dtype=pl.Int64)
        taken = BLD.gather_chunked(column, rows)
        assert taken.equals(column.gather(rows)) and taken.name == "frames"
    one = column.rechunk()
    rows = pl.Series([4, 0, None, 4])
    assert BLD.gather_chunked(one, rows).equals(one.gather(rows))


def test_slice_rows_splits_a_file_into_bounded_slices(monkeypatch):
    assert BLD.slice_rows(41_400) == 2_588  # 230k QAs' Uni file: 16 slices
    assert BLD.slice_rows(180_000) == 11_250  # a million QAs': 16 slices too
    assert BLD.slice_rows(10**6) == BLD.OUTPUT_SLICE_ROWS
    assert BLD.slice_rows(100) == BLD.MIN_OUTPUT_SLICE_ROWS
    monkeypatch.setattr(BLD, "OUTPUT_SLICE_ROWS", 7)
    assert BLD.slice_rows(10**6) == BLD.slice_rows(3) == 7
