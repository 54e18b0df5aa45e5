"""Pool ingestion: layouts, ids, resampling, rejects and chunking (docs/method.md, Pool
ingestion)."""

import gzip
import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from gdo_core import pool as P
from gdo_core import pool_read as PR
from gdo_core.schema import QA_SCHEMA, REJECT_SCHEMA


def _msgs(*texts):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


IMAGE_ROWS = [
    {"id": "a1", "images": ["img/1.jpg", "img/2.jpg"], "data_source": "GEOS(MathV360K)",
     "messages": _msgs("<image>\nWhat shape?\nA. circle\nB. square", "A", "And the colour?", "red")},
    {"id": 7, "image": "img/3.jpg", "data_source": "ureader_cap",
     "conversations": [{"from": "human", "value": "<image>\n  Describe   it."},
                       {"from": "gpt", "value": "A red  circle."}]},
    {"id": "a3", "images": ["img/4.jpg"], "data_source": "ai2d(cauldron,llava_format)",
     "messages": [{"role": "system", "content": "be nice"}] + _msgs("<image>", "empty q", "Q2?", "A2")},
]
VIDEO_ROWS = [
    {"id": "v1", "video_id": "vid-1", "images": [f"f/{i:03d}.jpg" for i in range(100)],
     "data_source": "0_30_s_academic_v0_1",
     "messages": _msgs("<video>\nWhat happens after the ball drops?", "It bounces.",
                       "Which colour?", "blue")},
    {"id": "v2", "images": [f"g/{i}.jpg" for i in range(5)], "data_source": "",
     "messages": _msgs("<video>\nHow many?", "3")},
]
BAD_LINES = [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"id": "b1", "images": 5, "messages": _msgs("q", "a")}),
    json.dumps({"id": "b2", "images": ["x.jpg"]}),
    json.dumps({"id": "b3", "messages": _msgs("q", "a")}),
    json.dumps({"id": "b4", "images": ["x.jpg"], "messages": _msgs("<image>", "")}),
    json.dumps({"id": "b5", "images": ["x.jpg"], "messages": "hello"}),
    json.dumps({"id": "b6", "images": [], "messages": _msgs("q", "a")}),
    json.dumps({"id": "b7", "images": ["x.jpg"], "messages": [{"role": "user", "content": "q"}]}),
]


def _write(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _rows(rows):
    return [json.dumps(r) for r in rows]


def test_image_and_video_rows_give_the_specified_qas(tmp_path):
    ov = _write(tmp_path / "ov.jsonl", _rows(IMAGE_ROWS))
    vv = _write(tmp_path / "vv.jsonl", _rows(VIDEO_ROWS))
    result = PR.read_pool(ov, vv, target_frames=32)
    qa = result.qa
    assert dict(qa.schema) == QA_SCHEMA
    assert qa["qa_uid"].to_list() == [
        "ov::a1::t0", "ov::a1::t1", "ov::7::t0", "ov::a3::t0", "vv::v1::t0", "vv::v1::t1", "vv::v2::t0",
    ]
    first = qa.row(0, named=True)
    assert first["frames"] == ["img/1.jpg"] and first["n_frames"] == 1
    assert first["question"] == "What shape? A. circle B. square"
    assert first["question_form"] == "MCQ" and first["temporal_category"] == "Static"
    assert first["source_group"] == "GEOS" and first["video_uid"] is None
    described = qa.filter(pl.col("qa_uid") == "ov::7::t0").row(0, named=True)
    assert (described["question"], described["answer"]) == ("Describe it.", "A red circle.")
    # The a3 row's first pair has an empty question after stripping <image>: turn index skips it.
    assert qa.filter(pl.col("row_id") == "a3")["question"].to_list() == ["Q2?"]
    v1 = qa.filter(pl.col("row_id") == "v1").row(0, named=True)
    assert v1["n_frames"] == 32 and v1["video_uid"] == "vid-1"
    assert v1["frames"][:3] == ["f/000.jpg", "f/003.jpg", "f/006.jpg"] and v1["frames"][-1] == "f/099.jpg"
    assert v1["temporal_category"] == "Temporal" and v1["duration_bucket"] == "medium"
    v2 = qa.filter(pl.col("row_id") == "v2").row(0, named=True)
    assert v2["video_uid"] == "v2" and v2["n_frames"] == 5 and v2["source_group"] == "unknown"
    assert v2["duration_bucket"] == "very_short" and v2["temporal_category"] == "Mixed"
    assert result.rejects.height == 1  # the a3 empty question
    assert result.rejects.row(0, named=True)["reason"] == "empty_text"


def test_resample_indices_follow_the_published_rounding():
    assert P.resample_indices(5, 32) == [0, 1, 2, 3, 4]
    assert P.resample_indices(64, 32) == [round(i * 63 / 31) for i in range(32)]
    assert P.resample_indices(10, 4) == [0, 3, 6, 9]
    assert P.resample_indices(3, 2) == [0, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_malformed_lines_are_rejected_and_the_rest_is_unchanged(tmp_path, suffix):
    clean = _rows(IMAGE_ROWS)
    dirty = [clean[0], *BAD_LINES[:4], clean[1], "", *BAD_LINES[4:], clean[2]]
    clean_result = PR.read_pool(_write(tmp_path / f"clean{suffix}", clean), None)
    dirty_result = PR.read_pool(_write(tmp_path / f"dirty{suffix}", dirty), None)
    ignore = ["line", "source_file"]
    assert dirty_result.qa.drop(ignore).equals(clean_result.qa.drop(ignore))
    rejects = dirty_result.rejects
    assert dict(rejects.schema) == REJECT_SCHEMA
    bad_line_numbers = [i + 1 for i, line in enumerate(dirty) if line in BAD_LINES]
    # every malformed line is recorded (plus the a3 empty turn that both pools share)
    assert set(bad_line_numbers) <= set(rejects["line"].to_list())
    by_line = {row["line"]: row["reason"] for row in rejects.iter_rows(named=True)}
    assert [by_line[n] for n in bad_line_numbers] == [
        "bad_json", "not_an_object", "wrong_type", "no_messages",
        "missing_media", "empty_text", "wrong_type", "missing_media", "no_pair",
    ]
    assert rejects.height == len(BAD_LINES) + 1
    assert all(rejects["source_file"].str.ends_with(f"dirty{suffix}"))


def test_exact_parser_reads_the_number_tokens_pythons_json_takes(tmp_path):
    """NaN, Infinity and out-of-range numbers are read (as Python's json reads them); lone
    surrogates, lower-case nan and invalid UTF-8 stay bad JSON, with orjson's message."""
    ok = '"images": ["a.jpg"], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
    lines = [
        b'{"id": "n1", "score": NaN, ' + ok.encode() + b"}",
        b'{"id": "n2", "w": [Infinity, -Infinity, 1e400], ' + ok.encode() + b"}",
        b'{"id": "s1", "note": "\\ud800", ' + ok.encode() + b"}",
        b'{"id": "s2", "score": nan, ' + ok.encode() + b"}",
        b'{"id": "s3", "note": "\xff", ' + ok.encode() + b"}",
    ]
    path = tmp_path / "ov.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = P.parse_records(list(P.iter_lines(path)), P.PoolFile(path, "onevision"))
    assert result.qa["qa_uid"].to_list() == ["ov::n1::t0", "ov::n2::t0"]
    assert result.rejects["line"].to_list() == [3, 4, 5]
    assert set(result.rejects["reason"].to_list()) == {"bad_json"}
    assert not any("Expecting" in detail for detail in result.rejects["detail"].to_list())


def test_json_array_files_are_accepted(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(IMAGE_ROWS))
    jsonl = _write(tmp_path / "pool.jsonl", _rows(IMAGE_ROWS))
    assert PR.read_pool(path, None).qa.drop("source_file").equals(PR.read_pool(jsonl, None).qa.drop("source_file"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(P.PoolError, match="nope.jsonl: pool file not found"):
        PR.read_pool(tmp_path / "nope.jsonl", None)


def test_chunks_and_fingerprints_follow_line_ranges(tmp_path):
    lines = _rows(IMAGE_ROWS * 4)  # 12 lines, 3 chunks of 5
    path = _write(tmp_path / "pool.jsonl", lines)
    keys = [key for key, _ in P.iter_pool_chunks(P.PoolFile(path, "onevision"), chunk_lines=5)]
    assert keys == ["pool-00000", "pool-00001", "pool-00002"]
    before = P.chunk_fingerprints(path, 5)
    lines[6] = lines[6].replace("red", "blue")  # line 7 is in chunk 1
    _write(path, lines)
    after = P.chunk_fingerprints(path, 5)
    assert [k for k in before if before[k] != after[k]] == ["pool-00001"]
    chunk = P.read_chunk(P.PoolFile(path, "onevision"), 1, chunk_lines=5)
    assert chunk.qa["line"].min() >= 6 and chunk.qa["line"].max() <= 10


def test_ingest_writes_chunk_files_and_rejects(tmp_path):
    ov = _write(tmp_path / "ov.jsonl", _rows(IMAGE_ROWS) + BAD_LINES[:2])
    vv = _write(tmp_path / "vv.jsonl", _rows(VIDEO_ROWS))
    summary = P.ingest(ov, vv, tmp_path / "out", chunk_lines=2)
    names = sorted(p.name for p in (tmp_path / "out" / "qa").glob("*.parquet"))
    assert names == ["ov-00000.parquet", "ov-00001.parquet", "ov-00002.parquet", "vv-00000.parquet"]
    assert summary.counts["qa_per_bucket"] == {"image_qa": 4, "short_video": 3}
    assert summary.counts["rejects_per_reason"] == {"bad_json": 1, "empty_text": 1, "not_an_object": 1}
    qa = P.read_qa_files(sorted((tmp_path / "out" / "qa").glob("*.parquet")))
    # media paths are resolved against the pool file's folder by default
    assert qa["frames"][0][0] == str(tmp_path.resolve() / "img/1.jpg")


def test_video_files_are_decoded_and_sampled(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(40):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[20:40, i : i + 10] = 255
        writer.write(frame)
    writer.release()
    rows = [
        {"id": "m1", "video": "clip.mp4", "data_source": "0_30_s_youtube_v0_1",
         "messages": _msgs("<video>\nWhere does it move first?", "right")},
        {"id": "m2", "video": "missing.mp4", "messages": _msgs("<video>\nQ?", "A")},
    ]
    vv = _write(tmp_path / "vv.jsonl", _rows(rows))
    summary = P.ingest(None, vv, tmp_path / "out", target_frames=8)
    qa = P.read_qa_files(summary.qa_files)
    assert qa.height == 1 and qa["n_frames"][0] == 8
    assert all(Path(p).is_file() for p in qa["frames"][0])
    assert cv2.imread(qa["frames"][0][0]).shape == (64, 64, 3)
    rejects = pl.read_parquet(summary.rejects_file)
    assert rejects.select("line", "reason").rows() == [(2, "unreadable_video")]


def test_parallel_ingest_writes_the_same_files(tmp_path):
    ov = _write(tmp_path / "ov.jsonl", _rows(IMAGE_ROWS * 3) + BAD_LINES[:2])
    vv = _write(tmp_path / "vv.jsonl", _rows(VIDEO_ROWS * 3))
    serial = P.ingest(ov, vv, tmp_path / "serial", chunk_lines=2, workers=1)
    parallel = P.ingest(ov, vv, tmp_path / "parallel", chunk_lines=2, workers=2)
    assert [p.name for p in serial.qa_files] == [p.name for p in parallel.qa_files]
    for a, b in zip(serial.qa_files, parallel.qa_files):
        assert a.read_bytes() == b.read_bytes()
    assert serial.rejects_file.read_bytes() == parallel.rejects_file.read_bytes()
    assert serial.counts == parallel.counts


def test_read_pool_in_worker_processes_equals_one_process(tmp_path):
    ov = _write(tmp_path / "ov.jsonl", _rows(IMAGE_ROWS * 3) + BAD_LINES)
    vv = _write(tmp_path / "vv.jsonl", _rows(VIDEO_ROWS * 3))
    one = PR.read_pool(ov, vv, chunk_lines=2, workers=1, fast=False)
    two = PR.read_pool(ov, vv, chunk_lines=2, workers=2, fast=False)
    assert one.qa.equals(two.qa) and one.rejects.equals(two.rejects)
