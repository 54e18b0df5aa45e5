"""gdo_core.pool_index on small files: chunk byte ranges, cheap change detection, stamps and plans."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import polars as pl
import pytest

from gdo_core import pool as P
from gdo_core import pool_index as I
from gdo_core import pool_read as PR


def _row(i: int, answer: str = "red") -> str:
    return json.dumps({"id": f"r{i}", "images": [f"img/{i}.jpg"],
                       "messages": [{"role": "user", "content": f"Colour of shape {i}?"},
                                    {"role": "assistant", "content": answer}]})


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline)
    return path


def _pool(path: Path) -> P.PoolFile:
    return P.PoolFile(path, "onevision")


@pytest.mark.parametrize("block", [3, 64, I.SCAN_BLOCK])
def test_byte_ranges_give_the_records_of_line_chunks(tmp_path, monkeypatch, block):
    """Random files (blank and whitespace lines, CRLF, no final newline, gzip): the indexed chunks
    are the chunks `iter_line_chunks` yields, and reading a chunk's byte range gives its records."""
    monkeypatch.setattr(I, "SCAN_BLOCK", block)  # small blocks put chunk edges across block edges
    rng = random.Random(block)
    for trial in range(60):
        lines = [("" if rng.random() < 0.15 else " \t" if rng.random() < 0.1 else _row(i)) for i in range(rng.randint(0, 25))]
        text = ("\r\n" if trial % 6 == 0 else "\n").join(lines) + rng.choice(["", "\n", "\n\n"])
        path = tmp_path / (f"p{trial}.jsonl.gz" if trial % 5 == 0 else f"p{trial}.jsonl")
        if path.name.endswith(".gz"):
            with gzip.open(path, "wb") as fh:
                fh.write(text.encode())
        else:
            path.write_bytes(text.encode())
        chunk_lines = rng.randint(1, 6)
        entry, was_read, _ = I.index_file(_pool(path), chunk_lines)
        expected = {P.chunk_key(P.pool_name(path), i): records for i, records in P.iter_line_chunks(path, chunk_lines)}
        assert was_read and [c.key for c in entry.chunks] == list(expected), trial
        for chunk in entry.chunks:
            assert I.span_records(path, chunk, chunk_lines) == expected[chunk.key], (trial, chunk)


def test_reading_a_chunk_by_range_equals_reading_it_by_lines(tmp_path):
    path = _write(tmp_path / "pool.jsonl", [_row(i) for i in range(23)] + ["{broken"])
    pool = _pool(path)
    index, _ = I.index_pool([pool], 5)
    entry = index.files[0]
    assert [c.index for c in entry.chunks] == [0, 1, 2, 3, 4]
    whole = PR.read_pool(path, None, fast=False)
    got = []
    for chunk in entry.chunks:
        result, how = I.read_span(pool, entry, chunk.index)
        expected = P.read_chunk(pool, chunk.index, 5)
        assert how == "range"
        assert result.qa.equals(expected.qa) and result.rejects.equals(expected.rejects)
        got.append(result)
    assert pl.concat([r.qa for r in got]).equals(whole.qa)
    # The file changed since it was indexed: the chunk is read by lines from the start, still right.
    _write(path, [_row(i, "blue") for i in range(23)])
    result, how = I.read_span(pool, entry, 1)
    assert how == "scan" and result.qa["answer"].to_list() == ["blue"] * 5


def test_an_unchanged_file_is_not_read_and_each_change_touches_only_its_chunks(tmp_path):
    ov = _write(tmp_path / "ov.jsonl", [_row(i) for i in range(12)])  # chunks of 5: 0-4, 5-9, 10-11
    vv = _write(tmp_path / "vv.jsonl", [_row(100 + i) for i in range(7)])
    files = [P.PoolFile(ov, "onevision"), P.PoolFile(vv, "video")]
    first, stats = I.index_pool(files, 5)
    assert first.chunk_keys() == ["ov-00000", "ov-00001", "ov-00002", "vv-00000", "vv-00001"]
    assert (stats.files_read, stats.bytes_read) == (2, ov.stat().st_size + vv.stat().st_size)

    same, stats = I.index_pool(files, 5, first)
    assert (stats.files_read, stats.files_unchanged, stats.bytes_read) == (0, 2, 0) and same == first
    assert not I.diff_indexes(first, same).any

    # Appending two lines changes the last chunk only (lines 11-12 -> 11-14).
    with ov.open("a") as fh:
        fh.write(_row(12) + "\n" + _row(13) + "\n")
    grown, stats = I.index_pool(files, 5, first)
    assert stats.files_read == 1 and stats.bytes_read == ov.stat().st_size  # vv.jsonl is not read
    changes = I.diff_indexes(first, grown)
    assert (changes.added, changes.changed, changes.retired) == ((), ("ov-00002",), ())
    # Appending past the chunk edge adds a chunk.
    with ov.open("a") as fh:
        fh.write(_row(14) + "\n" + _row(15) + "\n")
    longer, _ = I.index_pool(files, 5, grown)
    changes = I.diff_indexes(grown, longer)
    assert (changes.added, changes.changed) == (("ov-00003",), ("ov-00002",))

    # Editing one line (same length) changes its chunk only.
    lines = vv.read_text().splitlines()
    lines[5] = lines[5].replace("red", "tan")
    _write(vv, lines)
    edited, _ = I.index_pool(files, 5, longer)
    assert I.diff_indexes(longer, edited).changed == ("vv-00001",)

    # Shrinking retires the chunks past the new end, and the cut chunk changes.
    _write(ov, [_row(i) for i in range(7)])
    shrunk, _ = I.index_pool(files, 5, edited)
    changes = I.diff_indexes(edited, shrunk)
    assert changes.retired == ("ov-00002", "ov-00003") and changes.changed == ("ov-00001",)

    # A deleted file: reported missing, all its chunks retire.
    vv.unlink()
    present, missing = I.configured_files([ov], [vv])
    assert [p.path for p in present] == [ov] and missing == [str(vv)]
    gone, stats = I.index_pool(present, 5, shrunk, missing=missing)
    assert gone.missing == (str(vv),) and stats.files_missing == 1
    assert I.diff_indexes(shrunk, gone).retired == ("vv-00000", "vv-00001")


def test_a_same_size_edit_with_the_old_mtime_is_seen_by_its_ctime(tmp_path):
    path = _write(tmp_path / "ov.jsonl", [_row(i) for i in range(6)])
    first, _ = I.index_pool([_pool(path)], 5)
    stat = path.stat()
    _write(path, [_row(i, "tan") for i in range(6)])  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back
    again, stats = I.index_pool([_pool(path)], 5, first)
    assert stats.files_read == 1 and set(I.diff_indexes(first, again).changed) == {"ov-00000", "ov-00001"}


def test_the_index_round_trips_through_its_file(tmp_path):
    path = _write(tmp_path / "ov.jsonl", [_row(i) for i in range(6)])
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([json.loads(_row(i)) for i in range(3)]))
    index, _ = I.index_pool([_pool(path), P.PoolFile(arr, "video")], 2)
    assert [c.start for c in index.files[1].chunks] == [-1, -1] and not index.files[1].seekable
    I.save_index(index, tmp_path / "data" / "index.json")
    assert I.load_index(tmp_path / "data" / "index.json") == index
    assert I.load_index(tmp_path / "nothing.json") is None
    result, how = I.read_span(P.PoolFile(arr, "video"), index.files[1], 1)
    assert how == "scan" and result.qa["row_id"].to_list() == ["r2"]


def test_the_plan_follows_the_stamps(tmp_path):
    path = _write(tmp_path / "ov.jsonl", [_row(i) for i in range(12)])
    index, _ = I.index_pool([_pool(path)], 5)
    qa_dir, shards_dir = tmp_path / "qa", tmp_path / "shards"
    plan = I.plan_chunks(index, qa_dir, shards_dir, parse_version="p1", descriptor_version="d1")
    assert plan.parse == {k: "missing" for k in index.chunk_keys()} and plan.describe == plan.parse

    spans = index.chunks()
    for key, span in spans.items():
        for folder in (qa_dir, shards_dir):
            folder.mkdir(exist_ok=True)
            (folder / f"{key}.parquet").write_bytes(b"x")
        I.write_stamp(qa_dir / f"{key}.parquet", chunk=span.fingerprint, parse="p1", qa=f"qa-{key}")
        I.write_stamp(shards_dir / f"{key}.parquet", qa=f"qa-{key}", code_version="d1", shard=f"s-{key}")
    plan = I.plan_chunks(index, qa_dir, shards_dir, parse_version="p1", descriptor_version="d1")
    assert not plan.any and plan.current == index.chunk_keys()
    digest = I.inputs_digest(index, qa_dir, shards_dir)

    I.write_stamp(qa_dir / "ov-00001.parquet", chunk="other", parse="p1", qa="qa-ov-00001")
    I.write_stamp(shards_dir / "ov-00002.parquet", qa="qa-old", code_version="d1", shard="s")
    plan = I.plan_chunks(index, qa_dir, shards_dir, parse_version="p1", descriptor_version="d1")
    assert plan.parse == {"ov-00001": "content changed"}
    assert plan.describe == {"ov-00001": "its QAs may change", "ov-00002": "its QAs changed"}
    assert I.inputs_digest(index, qa_dir, shards_dir) != digest
    # Other settings: every chunk.
    plan = I.plan_chunks(index, qa_dir, shards_dir, parse_version="p2", descriptor_version="d2")
    assert set(plan.parse.values()) == {"content changed", "parse settings changed"} and len(plan.describe) == 3
    plan = I.plan_chunks(index, qa_dir, shards_dir, parse_version="p1", descriptor_version="d2")
    assert plan.describe["ov-00000"] == "descriptor settings changed"
    # An output whose stamp is gone (a crash between the two writes) is redone.
    I.drop_stamp(qa_dir / "ov-00000.parquet")
    assert I.plan_chunks(index, qa_dir, shards_dir, parse_version="p1", descriptor_version="d1").parse["ov-00000"] == "missing"
    assert I.orphan_keys(index, [qa_dir]) == []
    (qa_dir / "gone-00000.parquet").write_bytes(b"x")
    assert I.orphan_keys(index, [qa_dir, shards_dir]) == ["gone-00000"]


def test_reading_every_chunk_by_range_reads_each_byte_once(tmp_path, monkeypatch):
    """Linear: reading all chunks of a file by range reads the file's size, not chunks x size."""
    path = _write(tmp_path / "pool.jsonl", [_row(i) for i in range(200)])
    index, _ = I.index_pool([_pool(path)], 10)
    read = 0
    real_open = P._open_binary

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, offset):
            self.fh.seek(offset)

        def read(self, n=-1):
            nonlocal read
            data = self.fh.read(n)
            read += len(data)
            return data

    monkeypatch.setattr(I, "_open_binary", lambda p: Counting(real_open(p)))
    for chunk in index.files[0].chunks:
        I.read_span(_pool(path), index.files[0], chunk.index)
    assert read == path.stat().st_size and len(index.files[0].chunks) == 20
