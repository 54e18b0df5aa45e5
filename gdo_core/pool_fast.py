"""Fast path of pool parsing: DuckDB's JSON reader for rows of the common shape, the exact path for the rest.

Every line is parsed by DuckDB once. A row takes the fast path when its JSON structure (key set
and value types, from `json_structure`) is one the exact parser would read the same way: string
`id`, `messages` or `conversations` as a list of objects with string-or-null role/from/content/value,
`images` as a list of strings or `image` as a string, string-or-null `data_source` and `video_id`.
Every other line (bad JSON, other types, typed content parts, video files, empty lists, ...) is
handed, with its exact bytes and line number, to `pool.parse_records`, so results and rejects are
the same as the exact path's; tests/test_pool_fast.py checks that on a pool of odd rows.
"""

from __future__ import annotations

import functools
import json
import mmap
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from gdo_core import schema as S
from gdo_core.pool import (
    ASSISTANT_ROLES,
    PAIRS_SCHEMA,
    ROW_FRAMES_SCHEMA,
    USER_ROLES,
    ParseOptions,
    PoolFile,
    PoolResult,
    _is_json_array_file,
    _open_binary,
    _rank_within_runs,
    _resolve,
    iter_lines,
    parse_records,
    qa_frame,
    split_row_frames,
)

BATCH_ROWS = 20_000
_BLOCK_BYTES = 16 * 2**20
_MESSAGE = {"role": "VARCHAR", "from": "VARCHAR", "content": "VARCHAR", "value": "VARCHAR"}
_TRANSFORM = json.dumps(
    {
        "id": "VARCHAR",
        "data_source": "VARCHAR",
        "video_id": "VARCHAR",
        "images": ["VARCHAR"],
        "image": "VARCHAR",
        "messages": [_MESSAGE],
        "conversations": [_MESSAGE],
    }
)
_TEXT_OR_NULL = ("VARCHAR", "NULL")
# DuckDB's reader is laxer than orjson (the row-by-row parser): it takes NaN/Infinity and numbers
# out of double range, which orjson rejects. Both are typed DOUBLE by json_structure and kept as
# written in DuckDB's re-serialised text, so rows with a DOUBLE are searched for them (RE2) and
# take the exact path on a hit (a false alarm only costs speed). Known differences that remain:
# DuckDB also takes trailing commas and keeps the first of a repeated key (orjson: the last).
_LAX_NUMBER = "[:,\\[]-?(?:[Nn][Aa][Nn]|[Ii][Nn][Ff]|[0-9]+(?:\\.[0-9]+)?[eE][-+]?[0-9]{3})"
# bytes.strip() whitespace: a line of only these is blank for the exact path (and skipped by DuckDB).
_SPACE = b" \t\r\n\x0b\x0c"
_SPACE_BYTES = np.frombuffer(_SPACE, dtype=np.uint8)
_SPACE_START = {bytes([b]) for b in _SPACE}
# Relative paths that pathlib would rewrite when joined ("a//b", "./a", "a/./b", "a/").
_DOT_PART = r"(^|/)\.(/|$)"


@functools.lru_cache(maxsize=256)
def fast_messages_key(structure: str | None, kind: str) -> str | None:
    """'messages' or 'conversations' when rows of this json_structure read the same on the fast path, else None."""
    if structure is None:
        return None
    shape = json.loads(structure)
    if not isinstance(shape, dict) or shape.get("id") != "VARCHAR":
        return None
    key = "messages" if "messages" in shape else "conversations"
    messages = shape.get(key)
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)):
        return None
    if any(messages[0].get(k, "NULL") not in _TEXT_OR_NULL for k in _MESSAGE):
        return None
    images, image = shape.get("images", "NULL"), shape.get("image", "NULL")
    if images != ["VARCHAR"] and not (images == "NULL" and image == "VARCHAR"):
        return None
    if shape.get("data_source", "NULL") not in _TEXT_OR_NULL:
        return None
    if kind == "video" and shape.get("video_id", "NULL") not in _TEXT_OR_NULL:
        return None
    return key


def nonblank_line_numbers(path: Path) -> np.ndarray:
    """1-based numbers of the lines that are not blank (whitespace only)."""
    path = Path(path)
    if path.name.endswith(".gz") or path.stat().st_size == 0:
        with _open_binary(path) as fh:
            return _nonblank_in(fh.read())
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _nonblank_in(data)


def _nonblank_in(data: bytes | mmap.mmap) -> np.ndarray:
    """Non-blank line numbers of a file's bytes; files without a line that starts in whitespace
    (nearly all) are only counted."""
    size = len(data)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.concatenate(
        [
            np.flatnonzero(buffer[i : i + _BLOCK_BYTES] == ord("\n")) + i
            for i in range(0, size, _BLOCK_BYTES)
        ]
    )
    n = newlines.size
    last_partial = buffer[-1] != ord("\n")
    after = newlines[newlines + 1 < size] + 1  # the first byte of every line but the first
    if data[:1] not in _SPACE_START and not np.isin(buffer[after], _SPACE_BYTES).any():
        return np.arange(1, n + 1 + int(last_partial), dtype=np.int64)
    whole = bytes(data) + (b"\n" if last_partial else b"")
    return np.delete(
        np.arange(1, whole.count(b"\n") + 1, dtype=np.int64), _blank_line_indices(whole)
    )


def _blank_line_indices(whole: bytes) -> list[int]:
    """0-based indices of the whitespace-only lines among the newline-terminated lines of `whole`."""
    buffer = np.frombuffer(whole, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate(([0], ends[:-1] + 1))
    maybe = np.flatnonzero(np.isin(buffer[starts], _SPACE_BYTES))
    return [i for i in maybe.tolist() if not whole[starts[i] : ends[i]].strip()]


def _sql(path: Path, kind: str, target_frames: int) -> str:
    """The DuckDB query: per line, its structure and the fields the fast path reads, frames resampled."""
    src = str(path).replace("'", "''")
    if kind == "onevision":
        kept = "media[1:1]"
    elif target_frames <= 1:
        kept = "CASE WHEN len(media) <= 1 THEN media ELSE media[1:1] END"
    else:
        t = target_frames
        kept = (
            f"CASE WHEN len(media) <= {t} THEN media ELSE list_transform(range({t}), "
            f"lambda i: media[round_even(i * (len(media) - 1) / {t - 1}, 0)::BIGINT + 1]) END"
        )
    return f"""
        WITH raw AS (
            SELECT json, json_structure(json)::VARCHAR AS shape
            FROM read_json('{src}', columns={{json: 'JSON'}}, records=false,
                           format='newline_delimited', ignore_errors=true)
        ), src AS (
            SELECT CASE WHEN contains(shape, 'DOUBLE')
                         AND regexp_matches(json::VARCHAR, '{_LAX_NUMBER}') THEN NULL
                        ELSE shape END AS shape,
                   json_transform(json, '{_TRANSFORM}') AS x
            FROM raw
        ), fields AS (
            SELECT shape, x.id AS row_id, x.data_source, x.video_id, x.messages, x.conversations,
                   CASE WHEN x.images IS NOT NULL THEN x.images
                        WHEN x.image <> '' THEN [x.image] END AS media
            FROM src
        )
        SELECT shape, row_id, data_source, video_id, messages, conversations, {kept} AS frames
        FROM fields
    """


def _resolve_expr(media_root: Path | None) -> pl.Expr:
    """Frames joined to media_root like `pool._resolve` (str(root / p)); odd relative paths go through pathlib."""
    frames = pl.col("frames")
    if media_root is None:
        return frames
    root = str(media_root)

    joined = pl.element().map_elements(
        lambda p: _resolve([p], media_root)[0], return_dtype=pl.String
    )
    path = pl.element()
    odd = (
        path.str.contains("//", literal=True)
        | path.str.contains(_DOT_PART)
        | path.str.ends_with("/")
        | (path.str.len_bytes() == 0)
    )
    prefix = root if root.endswith("/") else root + "/"
    return frames.list.eval(
        pl.when(pl.element().str.starts_with("/"))
        .then(pl.element())
        .when(~odd)
        .then(pl.lit(prefix) + pl.element())
        .otherwise(joined)
    )


def _pairs_of_batch(
    batch: pl.DataFrame, kind: str, row_frames: bool
) -> tuple[pl.DataFrame, np.ndarray]:
    """(PAIRS_SCHEMA rows of the batch's fast rows, lines of fast rows that gave no pair).

    row_frames: the pairs carry `n_frames` instead of the frame list.
    """
    batch = batch.with_columns(
        msgs=pl.when(pl.col("key") == "messages")
        .then(pl.col("messages"))
        .otherwise(pl.col("conversations"))
    ).with_row_index("fi")
    msgs = batch.select("fi", "msgs").explode("msgs").unnest("msgs")
    role = pl.coalesce("role", "from").str.to_lowercase()
    msgs = msgs.select(
        "fi",
        is_user=role.is_in(list(USER_ROLES)),
        is_assistant=role.is_in(list(ASSISTANT_ROLES)),
        text=pl.coalesce("content", "value", pl.lit("")),
    ).filter(pl.col("is_user") | pl.col("is_assistant"))
    pairs = msgs.with_columns(
        user_raw=pl.col("text").shift(1),
        paired=pl.col("is_assistant")
        & pl.col("is_user").shift(1, fill_value=False)
        & (pl.col("fi").shift(1) == pl.col("fi")),
    ).filter(pl.col("paired"))
    pairs = pairs.select("fi", user_raw="user_raw", answer_raw="text").with_columns(
        position=pl.Series(_rank_within_runs(pairs["fi"].to_numpy()), dtype=pl.Int32)
    )
    has_pair = np.zeros(batch.height, dtype=bool)
    has_pair[pairs["fi"].to_numpy()] = True
    rows = batch.select(
        row_id=pl.col("row_id"),
        video_uid=(
            pl.when(pl.col("video_id").is_null() | (pl.col("video_id") == ""))
            .then(pl.col("row_id"))
            .otherwise(pl.col("video_id"))
            if kind == "video"
            else pl.lit(None, dtype=pl.String)
        ),
        data_source=pl.col("data_source").fill_null(""),
        line=pl.col("line"),
        **(
            {"n_frames": pl.col("frames").list.len()}
            if row_frames
            else {"frames": pl.col("frames")}
        ),
    )
    idx = pairs["fi"]
    out = pl.concat([rows[idx], pairs.drop("fi")], how="horizontal")
    columns = [c for c in PAIRS_SCHEMA if c != "frames"] + ["n_frames" if row_frames else "frames"]
    out = out.select(columns)
    return out, batch["line"].to_numpy()[~has_pair]


def _records_of_lines(path: Path, lines: np.ndarray) -> list[tuple[int, bytes]]:
    """(line number, raw bytes) of the given lines, in file order."""
    if not lines.size:
        return []
    wanted = set(lines.tolist())
    last = int(lines.max())
    out = []
    for number, raw in iter_lines(path):
        if number in wanted:
            out.append((number, raw))
        if number >= last:
            break
    return out


def _with_fast_key(batch: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The batch with `key`: the messages key of rows that take the fast path, null for the others."""
    shapes = batch["shape"].unique().to_list()
    keys = {shape: fast_messages_key(shape, kind) for shape in shapes if shape is not None}
    key = pl.col("shape").replace_strict(keys, default=None, return_dtype=pl.String)
    messages = pl.when(key == "messages").then(pl.col("messages")).otherwise(pl.col("conversations"))
    usable = (
        (pl.col("row_id") != "")
        & ~messages.list.eval(pl.element().is_null()).list.any()  # null messages: wrong_type
        & pl.col("frames").is_not_null()
        & (pl.col("frames").list.len() > 0)
        & (pl.col("frames").list.count_matches(None) == 0)
    ).fill_null(False)
    return batch.with_columns(key=pl.when(usable).then(key))


def _parse_batches(
    path: Path,
    pool: PoolFile,
    options: ParseOptions,
    lines: np.ndarray,
    threads: int | None,
    row_frames: bool,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[pl.DataFrame], list[np.ndarray]] | None:
    """(QA parts, reject parts, row-frame parts, lines for the exact path) of DuckDB's batches;
    None when DuckDB's records do not line up with the file's lines."""
    qa_parts: list[pl.DataFrame] = []
    reject_parts: list[pl.DataFrame] = []
    frame_parts: list[pl.DataFrame] = []
    slow: list[np.ndarray] = []
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        reader = con.sql(_sql(path, pool.kind, options.target_frames)).to_arrow_reader(BATCH_ROWS)
        seen = 0
        for record_batch in reader:
            batch = pl.from_arrow(record_batch)
            assert isinstance(batch, pl.DataFrame)
            n = batch.height
            if seen + n > lines.size:
                return None  # DuckDB saw more records than there are lines
            batch = batch.with_columns(line=pl.Series(lines[seen : seen + n]))
            seen += n
            batch = _with_fast_key(batch, pool.kind)
            slow.append(batch.filter(pl.col("key").is_null())["line"].to_numpy())
            fast = batch.filter(pl.col("key").is_not_null())
            del batch
            pairs, no_pair = _pairs_of_batch(fast, pool.kind, row_frames)
            slow.append(no_pair)
            if row_frames:
                kept = fast.select(
                    source_file=pl.lit(str(path), dtype=pl.String), line="line", frames="frames"
                )
                frame_parts.append(_resolved(kept, options.media_root))
            else:
                pairs = _resolved(pairs, options.media_root)
            qa, empty = qa_frame(pairs, pool.kind, str(path), options.mcq_on_raw)
            qa_parts.append(qa)
            reject_parts.append(empty)
        if seen != lines.size:
            return None  # DuckDB skipped or merged lines: line numbers would not line up
    finally:
        con.close()
    return qa_parts, reject_parts, frame_parts, slow


def parse_file_fast(
    pool: PoolFile,
    options: ParseOptions | None = None,
    *,
    threads: int | None = None,
    row_frames: bool = False,
) -> PoolResult | None:
    """QA rows and rejects of a whole .jsonl[.gz] pool file; None when the file must take the exact path.

    threads: DuckDB threads (default: all cores). row_frames: see `pool.read_pool`.
    """
    options = options or ParseOptions()
    path = Path(pool.path)
    if _is_json_array_file(path):
        return None
    lines = nonblank_line_numbers(path)
    try:
        parsed = _parse_batches(path, pool, options, lines, threads, row_frames)
    except duckdb.Error:  # a file DuckDB cannot read at all: every line takes the exact path
        return None
    if parsed is None:
        return None
    qa_parts, reject_parts, frame_parts, slow = parsed
    slow_lines = np.sort(np.concatenate(slow)) if slow else np.zeros(0, dtype=np.int64)
    if slow_lines.size:
        exact = parse_records(_records_of_lines(path, slow_lines), pool, options)
        if row_frames:
            exact = split_row_frames(exact)
            frame_parts.append(exact.frames)
        qa_parts.append(exact.qa)
        reject_parts.append(exact.rejects)
    empty_qa = S.empty_frame(S.QA_SCHEMA)
    qa = pl.concat(qa_parts) if qa_parts else (empty_qa.drop("frames") if row_frames else empty_qa)
    rejects = pl.concat(reject_parts) if reject_parts else S.empty_frame(S.REJECT_SCHEMA)
    frames = None
    if row_frames:
        frames = pl.concat(frame_parts) if frame_parts else S.empty_frame(ROW_FRAMES_SCHEMA)
        # only lines that gave a QA (as split_row_frames keeps them)
        frames = frames.join(
            qa.select("line").unique(), on="line", how="semi", maintain_order="left"
        )
    if slow_lines.size:
        qa = qa.sort("line", maintain_order=True)
        frames = frames.sort("line", maintain_order=True) if frames is not None else None
    return PoolResult(qa, rejects.sort("line", maintain_order=True), frames)


def _resolved(frame: pl.DataFrame, media_root: Path | None) -> pl.DataFrame:
    """The frame with its `frames` paths joined to media_root (unchanged without one)."""
    if media_root is None:
        return frame
    return frame.with_columns(_resolve_expr(media_root).alias("frames"))
