"""The fast path of pool parsing (Arrow's JSON reader) gives exactly what the exact parser gives, odd rows included."""

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gdo_core.pool_fast as F
from gdo_core import pool as P
from gdo_core import pool_read as PR
from gdo_core.pool_fast import parse_file_fast


def _msgs(*texts, keys=("role", "content"), roles=("user", "assistant")):
    return [{keys[0]: roles[i % 2], keys[1]: t} for i, t in enumerate(texts)]


def _frames(prefix: str, n: int) -> list[str]:
    return [f"{prefix}/{i:04d}.jpg" for i in range(n)]


# Rows the fast path takes, and rows it must hand to the exact parser; both kinds mixed in one file.
COMMON = [
    {
        "id": "c1",
        "images": ["a.jpg"],
        "data_source": "GEOS(MathV360K)",
        "messages": _msgs("<image>\nWhich?\nA. x\nB. y", "A", "Why  so?\t", "because"),
    },
    {
        "id": "c2",
        "image": "b.jpg",
        "conversations": _msgs(
            "<image>\n Describe.", "A dog.", keys=("from", "value"), roles=("human", "gpt")
        ),
    },
    {
        "id": "c3",
        "images": ["c.jpg", "d.jpg"],
        "data_source": None,
        "messages": [{"role": "system", "content": "s"}]
        + _msgs("q1", "a1")
        + [{"role": "user", "content": "dangling"}],
    },
    {
        "id": "c4",
        "images": ["e.jpg"],
        "messages": _msgs("<image>", "empty question", "Choices: 1, 2", "1"),
    },
    {
        "id": "c5",
        "images": ["f.jpg"],
        "messages": [
            {"role": "USER", "content": "Q?"},
            {"role": "Assistant", "content": "A."},
            {"role": "assistant", "content": "again"},
        ],
    },
    {
        "id": "c6",
        "images": ["g.jpg"],
        "messages": [
            {"role": "user", "content": None, "value": "from value"},
            {"role": None, "from": "gpt", "content": "ok"},
        ],
    },
    {
        "id": "c7",
        "images": ["h.jpg"],
        "extra": {"nested": [1, 2]},
        "video_id": 12,
        "messages": _msgs("Q \u00e9t\u00e9 \u212a", "A \U0001f600 caf\u00e9"),
    },
    {
        "id": "c8",
        "images": None,
        "image": "i.jpg",
        "messages": _msgs("q", "a"),
        "data_source": "x_y_z_w_v",
    },
    {"id": "c9", "images": ["j.jpg", None], "messages": _msgs("q", "a")},
]
ODD = [
    {"id": 5, "images": ["a.jpg"], "messages": _msgs("int id", "a")},
    {"id": "", "images": ["a.jpg"], "messages": _msgs("empty id", "a")},
    {"id": True, "images": ["a.jpg"], "messages": _msgs("bool id", "a")},
    {
        "id": "o1",
        "images": ["a.jpg"],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": "a"},
        ],
    },
    {"id": "o2", "images": ["a.jpg"], "messages": _msgs("q", 7)},
    {"id": "o3", "images": "single.jpg", "messages": _msgs("string images", "a")},
    {"id": "o4", "images": [], "messages": _msgs("q", "a")},
    {"id": "o5", "images": [None], "messages": _msgs("q", "a")},
    {"id": "o6", "image": "", "messages": _msgs("q", "a")},
    {"id": "o7", "images": ["a.jpg"], "messages": []},
    {"id": "o8", "images": ["a.jpg"], "messages": None, "conversations": _msgs("q", "a")},
    {"id": "o9", "images": ["a.jpg"]},
    {"id": "o10", "images": ["a.jpg"], "messages": ["not an object"]},
    {"id": "o11", "images": ["a.jpg"], "messages": _msgs("q", "a"), "data_source": 3},
    {"id": "o12", "images": ["a.jpg", 4], "messages": _msgs("q", "a")},
    {"id": "o13", "images": ["a.jpg"], "messages": [{"role": "user", "content": "q"}]},
    {
        "id": "o14",
        "images": ["a.jpg"],
        "messages": [{"role": 1, "content": "q"}, {"role": "assistant", "content": "a"}],
    },
    {"id": "o15", "images": ["a.jpg"], "messages": [_msgs("q", "a")[0], None, _msgs("q", "a")[1]]},
]
_OK = '"images": ["a.jpg"], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
# Numbers that orjson rejects and Python's json takes (both paths read these rows), lower-case nan
# (both reject it), and NaN inside a text.
LAX_JSON = [
    '{"id": "n1", ' + _OK + ', "score": NaN}',
    '{"id": "n2", ' + _OK + ', "score": -Infinity}',
    '{"id": "n3", ' + _OK + ', "score": 1e400}',
    '{"id": "n4", ' + _OK + ', "score": 123456789012345678901234567890}',
    '{"id": "n5", ' + _OK + ', "scores": [0.5, nan, 2]}',
    '{"id": "n6", "note": "a,} and ,] in text: NaN, inf", "w": 0.25, ' + _OK + "}",
]
RAW_ODD = [
    *LAX_JSON,
    "{not json",
    "[1, 2]",
    "null",
    '"text"',
    '{"id": "d1"}{"id": "d2"}',
    "   ",
    "",
    '{"id": "t1", ' + _OK + ",}",  # trailing comma: bad JSON
    '{"id": "k1", "id": "k2", ' + _OK + "}",  # repeated key: the last one counts
    '{"id": "k3", ' + _OK.replace('"q"', '"q", "content": "q2"') + "}",
    '\ufeff{"id": "b1", ' + _OK + "}",  # byte order mark
    '  {"id": "s1", ' + _OK + "}",  # indented line
    '{"id": "w1", ' + _OK + '} {"id": "w2", ' + _OK + "}",
    '{"id": "w3", ' + _OK + "}  ",  # trailing spaces
    '{"id": "sp1",\n' + _OK + "}",  # one object over two lines
    '{"id": "sp2", "extra": {}\n}',
    '{"id": "u1", "images": ["a.jpg"], "messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
]


def _video_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {
            "id": f"v{i}",
            "images": _frames(f"vid{i // 2}", rng.choice([1, 5, 31, 32, 33, 64, 100, 181])),
            "data_source": rng.choice(["0_30_s_academic_v0_1", "llava_hound_255k", None]),
            "messages": _msgs(
                "<video>\nWhat happens after it falls?", "It rolls.", "How many?", "2"
            ),
        }
        if i % 3:
            row["video_id"] = rng.choice([f"clip{i // 2}", "", None])
        rows.append(row)
    return rows


def _lines(rows: list[dict], rng: random.Random, raw: list[str] = ()) -> list[str]:
    lines = [json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]
    for text in raw:
        lines.insert(rng.randrange(len(lines) + 1), text)
    return lines


def _write(path: Path, lines: list[str], newline: str = "\n", trailing: bool = True) -> Path:
    data = newline.join(lines) + (newline if trailing else "")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data.encode("utf-8")))
    else:
        path.write_bytes(data.encode("utf-8"))
    return path


def _assert_same(path: Path, kind: str, **options) -> P.PoolResult:
    opts = P.ParseOptions(**options)
    pool = P.PoolFile(path, kind)
    fast = parse_file_fast(pool, opts)
    assert fast is not None, "the fast path declined a .jsonl file"
    exact = P.parse_records(list(P.iter_lines(path)), pool, opts)
    assert fast.qa.schema == exact.qa.schema
    assert fast.qa.equals(exact.qa)
    assert fast.rejects.equals(exact.rejects)
    return fast


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_image_pool_with_odd_rows_matches_the_exact_parser(tmp_path, suffix, newline):
    rng = random.Random(3)
    lines = _lines(COMMON * 3 + ODD, rng, RAW_ODD)
    result = _assert_same(_write(tmp_path / f"ov{suffix}", lines, newline), "onevision")
    assert result.qa.height > 20 and result.rejects.height >= len(ODD)


@pytest.mark.parametrize("target", [1, 8, 32])
@pytest.mark.parametrize("mcq_on_raw", [True, False])
def test_video_pool_resampling_and_modes_match_the_exact_parser(tmp_path, target, mcq_on_raw):
    rng = random.Random(target)
    lines = _lines(_video_rows(rng, 40) + ODD[:4], rng, RAW_ODD[:3])
    _assert_same(
        _write(tmp_path / "vv.jsonl", lines, trailing=False),
        "video",
        target_frames=target,
        mcq_on_raw=mcq_on_raw,
    )


def test_media_root_resolution_matches_pathlib(tmp_path):
    rows = [
        {"id": f"m{i}", "images": [p], "messages": _msgs("q", "a")}
        for i, p in enumerate(
            ["a.jpg", "/abs/b.jpg", "./c.jpg", "d//e.jpg", "f/./g.jpg", "h/", "i/../j.jpg"]
        )
    ]
    path = _write(tmp_path / "ov.jsonl", _lines(rows, random.Random(0)))
    result = _assert_same(path, "onevision", media_root=Path("/media/root"))
    assert result.qa["frames"].to_list()[0] == ["/media/root/a.jpg"]


def test_read_pool_fast_and_exact_agree_on_both_files(tmp_path):
    rng = random.Random(9)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / "vv.jsonl.gz", _lines(_video_rows(rng, 20), rng, RAW_ODD[:2]))
    fast = PR.read_pool(ov, vv)
    exact = PR.read_pool(ov, vv, fast=False, workers=1)
    assert fast.qa.equals(exact.qa) and fast.rejects.equals(exact.rejects)


def test_resampled_indices_match_pythons_round(tmp_path):
    """The fast path picks the same frames as Python's round for every length up to 400."""
    counts = list(range(1, 401))
    rows = [{"id": f"v{n}", "images": _frames("f", n), "messages": _msgs("q", "a")} for n in counts]
    path = _write(tmp_path / "vv.jsonl", [json.dumps(r) for r in rows])
    for target in (1, 2, 3, 7, 16, 32, 64):
        result = parse_file_fast(P.PoolFile(path, "video"), P.ParseOptions(target_frames=target))
        got = [[int(f[2:6]) for f in frames] for frames in result.qa["frames"].to_list()]
        assert got == [P.resample_indices(n, target) for n in counts]


@pytest.mark.parametrize("block", [1, 7, 64, 600])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_small_blocks_long_lines_and_refused_runs_match_the_exact_parser(
    tmp_path, monkeypatch, block, suffix
):
    """Lines longer than a block, blocks of one line, and bad lines found by splitting refused blocks."""
    monkeypatch.setattr(F, "BLOCK_BYTES", block)
    monkeypatch.setattr(F, "_BISECT_LINES", 1)
    rng = random.Random(block)
    lines = _lines(COMMON * 2 + ODD, rng, RAW_ODD)
    _assert_same(_write(tmp_path / f"ov{suffix}", lines, trailing=False), "onevision")
    video = _lines(_video_rows(rng, 12) + ODD[:5], rng, RAW_ODD[:4])
    _assert_same(_write(tmp_path / f"vv{suffix}", video, "\r\n"), "video", target_frames=8)


def test_a_pool_read_in_many_blocks_comes_back_in_one_chunk(tmp_path, monkeypatch):
    """read_pool copies a table of one chunk per block into one chunk (`pool.few_chunks`)."""
    rng = random.Random(5)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON * 3, rng))
    vv = _write(tmp_path / "vv.jsonl", _lines(_video_rows(rng, 30), rng))
    whole = PR.read_pool(ov, vv, row_frames=True)
    monkeypatch.setattr(F, "BLOCK_BYTES", 256)
    blocks = [F.parse_file_fast(f, row_frames=True) for f in P.pool_files(ov, vv)]
    assert sum(b.qa.n_chunks() for b in blocks) > P.MAX_CHUNKS
    small = PR.read_pool(ov, vv, row_frames=True)
    assert small.qa.n_chunks("all") == [1] * small.qa.width
    assert small.frames.n_chunks() <= P.MAX_CHUNKS
    assert small.qa.equals(whole.qa) and small.frames.equals(whole.frames)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_block_bytes_given_to_read_pool_change_nothing(tmp_path, suffix):
    """read_pool(block_bytes=...) (what `gdo build --low-memory` sets) parses in blocks of that
    size, with the same result as the default blocks."""
    rng = random.Random(8)
    ov = _write(tmp_path / f"ov{suffix}", _lines(COMMON * 3 + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / f"vv{suffix}", _lines(_video_rows(rng, 20), rng))
    whole = PR.read_pool(ov, vv, row_frames=True)
    assert len(list(F._blocks(ov, 300))) > 3  # several blocks of that size
    small = PR.read_pool(ov, vv, row_frames=True, block_bytes=300, file_threads=1)
    assert small.qa.equals(whole.qa) and small.frames.equals(whole.frames)
    assert small.rejects.equals(whole.rejects)


@pytest.mark.parametrize("fast", [True, False])
def test_categorical_read_holds_the_same_values(tmp_path, monkeypatch, fast):
    """read_pool(categorical=True): the low-card columns as Categorical, every value unchanged
    (fast blocks, exact-path rows and an empty file alike)."""
    from gdo_core.schema import LOW_CARD_COLUMNS

    monkeypatch.setattr(F, "BLOCK_BYTES", 512)  # several blocks, each converted as it comes
    rng = random.Random(11)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON * 3 + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / "vv.jsonl", _lines(_video_rows(rng, 20) + ODD[:4], rng, RAW_ODD[:3]))
    empty = _write(tmp_path / "empty.jsonl", [])
    for video in (vv, empty):
        plain = PR.read_pool(ov, video, fast=fast, workers=1, row_frames=True)
        cat = PR.read_pool(ov, video, fast=fast, workers=1, row_frames=True, categorical=True)
        for table, before in ((cat.qa, plain.qa), (cat.frames, plain.frames)):
            low = [c for c in LOW_CARD_COLUMNS if c in table.columns]
            assert low and all(table.schema[c] == pl.Categorical for c in low)
            assert table.with_columns(pl.col(low).cast(pl.String)).equals(before)
        assert cat.rejects.equals(plain.rejects)
    assert P.low_card(cat.qa) is cat.qa  # already converted: nothing to do


def test_few_chunks_copies_only_a_table_in_many_chunks():
    parts = [pl.DataFrame({"a": [i, i + 1], "b": [str(i), None]}) for i in range(P.MAX_CHUNKS + 1)]
    many = pl.concat(parts)
    one = P.few_chunks(many)
    assert many.n_chunks() == P.MAX_CHUNKS + 1 and one.n_chunks("all") == [1, 1]
    assert one.equals(many)
    few = pl.concat(parts[:2])
    assert P.few_chunks(few).n_chunks() == 2
    # a later column in many chunks counts too (the cache joins Parquet and Arrow columns)
    mixed = pl.concat([many.select("a").rechunk(), many.select("b")], how="horizontal")
    assert mixed.n_chunks("all") == [1, P.MAX_CHUNKS + 1]
    assert P.few_chunks(mixed).n_chunks("all") == [1, 1]


@pytest.mark.parametrize("every", [1, 3, 40])
def test_refused_rows_everywhere_or_sparse_match_the_exact_parser(tmp_path, monkeypatch, every):
    """Rows the reader refuses (a number id) in every line, every 3rd line or every 40th line."""
    monkeypatch.setattr(F, "_BISECT_LINES", 2)
    rows = [
        {"id": i if i % every == 0 else f"r{i}", "images": ["a.jpg"], "messages": _msgs("q", "a")}
        for i in range(300)
    ]
    result = _assert_same(_write(tmp_path / "ov.jsonl", [json.dumps(r) for r in rows]), "onevision")
    assert result.qa.height == 300


def test_rows_of_the_common_shape_take_the_fast_path(tmp_path, monkeypatch):
    exact_lines: list[int] = []

    def spy(records, pool, options):
        exact_lines.extend(number for number, _ in records)
        return P.parse_records(records, pool, options)

    monkeypatch.setattr(F, "parse_records", spy)
    common = [row for row in COMMON if row["id"] != "c9"]  # c9 has a null image path
    path = _write(tmp_path / "ov.jsonl", _lines(common * 50, random.Random(1)))
    assert _assert_same(path, "onevision").qa.height > 200
    assert exact_lines == []
    # "messages": null beside "conversations" reads as no messages on both paths
    named = {"id": "m1", "images": ["a.jpg"], "messages": None, "conversations": _msgs("q", "a")}
    bare = {"id": "m2", "images": ["a.jpg"], "conversations": _msgs("q", "a")}
    path = _write(tmp_path / "ov2.jsonl", [json.dumps(named), json.dumps(bare)])
    result = _assert_same(path, "onevision")
    assert result.qa["qa_uid"].to_list() == ["ov::m2::t0"]
    assert result.rejects["reason"].to_list() == ["no_messages"]


def test_numbers_orjson_rejects_are_read_on_both_paths(tmp_path):
    path = _write(tmp_path / "ov.jsonl", LAX_JSON + [RAW_ODD[-1]])
    result = _assert_same(path, "onevision")
    assert result.qa["qa_uid"].to_list() == [f"ov::n{i}::t0" for i in (1, 2, 3, 4, 6)]
    assert result.rejects["line"].to_list() == [5, 7]  # lower-case nan; a lone surrogate
    assert set(result.rejects["reason"].to_list()) == {"bad_json"}


def test_the_fast_path_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas (about 0.3 s) on `pa.array` or `to_numpy`; a build never needs it."""
    rng = random.Random(2)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / "vv.jsonl", _lines(_video_rows(rng, 30), rng))
    code = (
        "import sys; from gdo_core import pool_read as PR; "
        f"r = PR.read_pool({str(ov)!r}, {str(vv)!r}, workers=1, row_frames=True); "
        "assert r.qa.height > 0; print('pandas' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_json_array_files_take_the_exact_path(tmp_path):
    path = tmp_path / "ov.json"
    path.write_text(json.dumps(COMMON))
    assert parse_file_fast(P.PoolFile(path, "onevision")) is None
    result = PR.read_pool(path, None)
    assert result.qa.height > 0 and isinstance(result.qa, pl.DataFrame)


@pytest.mark.parametrize("fast", [True, False])
def test_row_frames_hold_each_lines_frames_once(tmp_path, fast):
    rng = random.Random(4)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / "vv.jsonl", _lines(_video_rows(rng, 30) + ODD[:3], rng, RAW_ODD[:2]))
    full = PR.read_pool(ov, vv, fast=fast, workers=1, media_root=Path("/m"))
    lean = PR.read_pool(ov, vv, fast=fast, workers=1, media_root=Path("/m"), row_frames=True)
    assert "frames" not in lean.qa.columns
    assert lean.qa.equals(full.qa.drop("frames")) and lean.rejects.equals(full.rejects)
    expected = P.split_row_frames(full).frames
    assert lean.frames.equals(expected)
    joined = lean.qa.join(
        lean.frames, on=["source_file", "line"], how="left", maintain_order="left"
    )
    assert joined["frames"].equals(full.qa["frames"])


def test_invalid_utf8_lines_are_rejected_like_the_exact_parser(tmp_path):
    good = json.dumps({"id": "g", "images": ["x.jpg"], "messages": _msgs("q", "a")}).encode()
    bad = good.replace(b'"q"', b'"q\xff\xfe"').replace(b'"g"', b'"b"')
    path = tmp_path / "ov.jsonl"
    path.write_bytes(bad + b"\n" + good + b"\n")
    result = _assert_same(path, "onevision")
    assert result.rejects["reason"].to_list() == ["bad_json"] and result.qa.height == 1


@pytest.mark.parametrize("step", [1, 7, 64, 4096])
def test_newlines_found_step_by_step_match_one_scan(step):
    rng = np.random.default_rng(step)
    data = rng.choice(np.frombuffer(b"ab\n{}", dtype=np.uint8), size=1000).tobytes()
    expected = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    found = F._newlines(memoryview(data), step)
    assert found.dtype == np.int64 and np.array_equal(found, expected)
    assert F._newlines(memoryview(b""), step).size == 0


@pytest.mark.parametrize(
    "text",
    [
        b"plain\n",
        b"\x00 nul\n",
        "caf\u00e9 \U0001f600 \uffff".encode(),
        b"\xff\n",  # not a UTF-8 byte
        b"\xc0\x80\n",  # overlong NUL
        b"\xed\xa0\x80\n",  # an encoded surrogate
        b"\xf4\x90\x80\x80\n",  # beyond U+10FFFF
        b"ok \xe2\x82\n",  # cut short
        b"x" * 100 + b"\xed\xbf\xbf" + b"y" * 100,  # a surrogate inside a long run
        b"",
    ],
)
def test_utf8_check_agrees_with_python(text):
    try:
        text.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert F._is_utf8(memoryview(text)) is valid


def test_known_differences_of_the_fast_path(tmp_path):
    """Documented in pool_fast: in keys gdo does not read, Arrow's reader also takes -NaN, Inf and
    -Inf, and nesting deeper than orjson's limit of 1024 levels."""
    lines = [
        '{"id": "x1", ' + _OK + ', "w": -NaN}',
        '{"id": "x2", ' + _OK + ', "w": [Inf, -Inf]}',
        '{"id": "x3", ' + _OK + ', "deep": ' + "[" * 2000 + "]" * 2000 + "}",
    ]
    path = _write(tmp_path / "ov.jsonl", lines)
    fast = parse_file_fast(P.PoolFile(path, "onevision"))
    exact = P.parse_records(list(P.iter_lines(path)), P.PoolFile(path, "onevision"))
    assert fast.qa["qa_uid"].to_list() == ["ov::x1::t0", "ov::x2::t0", "ov::x3::t0"]
    assert exact.qa.height == 0
    assert exact.rejects["reason"].to_list() == ["bad_json"] * 3


@pytest.mark.parametrize("fast", [True, False])
def test_spilled_texts_come_back_row_for_row(tmp_path, monkeypatch, fast):
    """read_pool(spill_texts=TextSpill): the table without its texts, each row pointing at its
    texts in the file (fast blocks, exact-path rows sorted in, an empty file, a JSON array file),
    with the hashes, answer counts and codes the in-memory table gives."""
    from gdo_core import pool_cache as C
    from gdo_core import select as S
    from gdo_core.candidate_score import distinct_answer_tokens

    monkeypatch.setattr(F, "BLOCK_BYTES", 512)  # many blocks, parts from both files interleaved
    monkeypatch.setattr(C, "TEXT_BATCH_ROWS", 5)  # parts that straddle record batches
    rng = random.Random(12)
    ov = _write(tmp_path / "ov.jsonl", _lines(COMMON * 3 + ODD, rng, RAW_ODD))
    vv = _write(tmp_path / "vv.jsonl", _lines(_video_rows(rng, 20) + ODD[:4], rng, RAW_ODD[:3]))
    empty = _write(tmp_path / "empty.jsonl", [])
    array = tmp_path / "arr.json"
    array.write_text(json.dumps(COMMON * 2))
    for n, (image, video) in enumerate(((ov, vv), ([ov, array], empty), (empty, None))):
        options = {"fast": fast, "workers": 1, "row_frames": True, "categorical": True}
        plain = PR.read_pool(image, video, **options)
        spill = C.TextSpill(tmp_path / f"text{n}.arrow")
        spilled = PR.read_pool(image, video, spill_texts=spill, **options)
        order = spilled.qa[C.TEXT_ROW].to_numpy()
        texts, hashes, counts = spill.close(order)
        assert sorted(order.tolist()) == list(range(plain.qa.height)) == list(range(texts.rows))
        if fast and n == 0:  # parts of both files interleaved, exact-path rows sorted in last
            assert (order != np.arange(order.size)).any()
        kept = spilled.qa.drop(C.TEXT_ROW)
        assert kept.equals(plain.qa.drop("question", "answer"))
        assert spilled.frames.equals(plain.frames) and spilled.rejects.equals(plain.rejects)
        assert texts.read().equals(plain.qa.select("question", "answer"))
        rows = np.array(
            [rng.randrange(plain.qa.height) for _ in range(9)] if plain.qa.height else []
        )
        assert texts.take(rows).equals(plain.qa.select("question", "answer")[rows.tolist()])
        answers, lengths = plain.qa["answer"], plain.qa["answer_len"].to_numpy()
        assert counts.tolist() == distinct_answer_tokens(answers, lengths).tolist()
        assert hashes.equals(S.text_hashes(plain.qa), check_names=False)
        codes = S.codes_of_text_hashes(hashes, texts.take)
        assert codes.tolist() == S.text_codes(plain.qa).tolist()
        texts.source.close()
    assert plain.qa.height == 0  # the last pair: an empty file alone
