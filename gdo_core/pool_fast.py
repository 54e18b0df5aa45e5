"""Fast path of pool parsing: Arrow's JSON reader for rows of the common shape, the exact path for the rest.

A pool file is read in blocks of whole lines (`BLOCK_BYTES`; plain files are memory-mapped), so
the reader's memory stays bounded whatever the file's size, and the next block is parsed on a
thread while this one's QA rows are built. Arrow's reader parses each block against a fixed schema:
string `id`, `data_source` and (video pools) `video_id`; `images` as a list of strings or `image`
as a string; `messages` or `conversations` as a list of objects with string-or-null
role/from/content/value. Other keys are not read. A row takes the fast path when it fits that
schema and the exact parser would read it the same way; every other line (bad JSON, other types,
repeated keys, typed content parts, video files, empty lists, a line that does not run from `{`
to `}`, ...) is handed, with its exact bytes and line number, to `pool.parse_records`, so results and
rejects are the same as the exact path's; tests/test_pool_fast.py checks that on a pool of odd
rows. A block the reader refuses is read again in parts until the refused lines are found.

Numbers in keys gdo does not read: the reader takes NaN, Infinity, -Infinity and numbers beyond a
double, and so does the exact parser (`pool._loads`). Known differences that remain, both in keys
gdo does not read: the reader also takes the tokens -NaN, Inf and -Inf, and arrays or objects
nested deeper than 1024 levels, which the exact parser rejects as bad JSON.
"""

from __future__ import annotations

import codecs
import contextlib
import mmap
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from gdo_core import schema as S
from gdo_core.pool import (
    ASSISTANT_ROLES,
    PAIRS_SCHEMA,
    ROW_FRAMES_SCHEMA,
    USER_ROLES,
    ParseOptions,
    PoolFile,
    PoolResult,
    TextSink,
    _is_json_array_file,
    _open_binary,
    _rank_within_runs,
    _resolve,
    low_card,
    parse_records,
    qa_frame,
    split_row_frames,
)

BLOCK_BYTES = 16 * 2**20  # whole lines read and parsed at a time
LOW_MEMORY_BLOCK_BYTES = 8 * 2**20  # `gdo build --low-memory`: half as much in flight, a bit slower
_BISECT_LINES = 8  # a refused run of at most this many lines goes to the exact path whole
_SPLIT = 16  # a refused run of more lines is read again in this many parts
_MESSAGE = pa.struct([(k, pa.string()) for k in ("role", "from", "content", "value")])
_NEWLINE, _CARRIAGE, _OPEN, _CLOSE = ord("\n"), ord("\r"), ord("{"), ord("}")
_MESSAGES_KEY = re.compile(rb'"messages"')
# Relative paths that pathlib would rewrite when joined ("a//b", "./a", "a/./b", "a/").
_DOT_PART = r"(^|/)\.(/|$)"


def _schema(kind: str) -> pa.Schema:
    """The fields the fast path reads (video_id only in video pools: image pools ignore it)."""
    fields = [("id", pa.string()), ("data_source", pa.string())]
    if kind == "video":
        fields.append(("video_id", pa.string()))
    fields += [
        ("images", pa.list_(pa.string())),
        ("image", pa.string()),
        ("messages", pa.list_(_MESSAGE)),
        ("conversations", pa.list_(_MESSAGE)),
    ]
    return pa.schema(fields)


def _blocks(path: Path, block_bytes: int | None = None) -> Iterator[memoryview]:
    """The file in blocks of whole newline-terminated lines (a last line without one gets one) of
    about block_bytes (default BLOCK_BYTES).

    Plain files are memory-mapped and each block's pages are dropped once the caller is done with it.
    """
    size_wanted = block_bytes or BLOCK_BYTES
    if path.name.endswith(".gz") or path.stat().st_size == 0:
        yield from _read_blocks(path, size_wanted)
        return
    with open(path, "rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    drop = getattr(mmap, "MADV_DONTNEED", None) if hasattr(data, "madvise") else None
    start, size = 0, len(data)
    try:
        while start < size:
            cut = data.rfind(b"\n", start, start + size_wanted) + 1
            if cut <= start:  # a line longer than a block: up to its end
                cut = data.find(b"\n", start) + 1 or size
            if cut == size and data[size - 1 : size] != b"\n":
                yield memoryview(data[start:size] + b"\n")
            else:
                yield memoryview(data)[start:cut]
            if drop is not None:  # the pages are read again from the file if still needed
                page = start - start % mmap.PAGESIZE
                data.madvise(drop, page, cut - page)
            start = cut
    finally:
        with contextlib.suppress(BufferError):  # a block still in use keeps the map open
            data.close()


def _read_blocks(path: Path, block_bytes: int) -> Iterator[memoryview]:
    """`_blocks` of a compressed (or empty) file, read through `pool._open_binary`."""
    with _open_binary(path) as fh:
        while data := fh.read(block_bytes):
            data += fh.readline()
            yield memoryview(data if data.endswith(b"\n") else data + b"\n")


def _newlines(block: memoryview, step: int = 2**20) -> np.ndarray:
    """Offsets of the block's newlines, found `step` bytes at a time in one reused flag array (no
    block-sized one, and no fresh one per step to page-fault)."""
    view = np.frombuffer(block, dtype=np.uint8)
    flags = np.empty(min(step, view.size), dtype=bool)
    parts = []
    for i in range(0, view.size, step):
        part = view[i : i + step]
        parts.append(np.flatnonzero(np.equal(part, _NEWLINE, out=flags[: part.size])) + i)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _is_utf8(block: memoryview) -> bool:
    """Whether the block is valid UTF-8 (Arrow's check in place: no copy, about 15x faster than bytes.decode)."""
    offsets = pa.py_buffer(np.array([0, len(block)], dtype=np.int64))
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)])
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:  # "Invalid UTF8 sequence at string index 0"
        return False
    return True


def _read_lines(
    block: memoryview, numbers: np.ndarray, offsets: np.ndarray, options: pj.ParseOptions
) -> Iterator[tuple[pa.Table | None, np.ndarray]]:
    """(table, its line numbers) of lines the reader takes; (None, line numbers) of lines it refuses.

    block holds the lines; offsets their start offsets in it plus the end (len(numbers) + 1 values).
    """
    table = _read(block, numbers.size, options)
    if table is not None:
        yield table, numbers
    else:
        yield from _split(block, numbers, offsets, options)


def _read(block: memoryview, rows: int, options: pj.ParseOptions) -> pa.Table | None:
    """The reader's table of the block, or None when it refuses the block or finds another row count."""
    whole = pj.ReadOptions(use_threads=False, block_size=max(len(block) + 1, 2**20))
    try:
        table = pj.read_json(pa.py_buffer(block), read_options=whole, parse_options=options)
    except pa.ArrowException:  # bad JSON, other types, ...
        return None
    finally:  # the reader's scratch pages go back now: Arrow's allocator kept ~50 MB a block per thread
        pa.default_memory_pool().release_unused()
    return table if table.num_rows == rows else None


def _split(
    block: memoryview, numbers: np.ndarray, offsets: np.ndarray, options: pj.ParseOptions
) -> Iterator[tuple[pa.Table | None, np.ndarray]]:
    """`_read_lines` of a run the reader refused: read again in `_SPLIT` parts, and so on."""
    if numbers.size <= _BISECT_LINES:
        yield None, numbers
        return
    bounds = np.linspace(0, numbers.size, min(_SPLIT, numbers.size) + 1).astype(np.int64)
    parts = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        part = block[int(offsets[lo] - offsets[0]) : int(offsets[hi] - offsets[0])]
        parts.append((part, lo, hi, _read(part, hi - lo, options)))
    if all(table is None for *_, table in parts):  # refused throughout (say, every id a number)
        yield None, numbers
        return
    for part, lo, hi, table in parts:
        if table is not None:
            yield table, numbers[lo:hi]
        else:
            yield from _split(part, numbers[lo:hi], offsets[lo : hi + 1], options)


def _media(table: pa.Table) -> pa.ListArray:
    """Each row's media list: `images`, else `[image]` when that is a non-empty string, else null."""
    images = table.column("images").combine_chunks()
    image = table.column("image").combine_chunks()
    if image.null_count == len(image):
        return images
    frame = pl.from_arrow(pa.table({"images": images, "image": image}))
    assert isinstance(frame, pl.DataFrame)
    media = (
        pl.when(pl.col("images").is_not_null())
        .then(pl.col("images"))
        .when(pl.col("image") != "")
        .then(pl.concat_list("image"))
    )
    return frame.select(media)["images"].to_arrow().cast(pa.list_(pa.string()))


def _kept_frames(media: pa.ListArray, kind: str, target_frames: int) -> pa.ListArray:
    """The frames each QA keeps: the first image, or `target_frames` picked as `pool.resample_indices`."""
    t = 1 if kind == "onevision" else max(target_frames, 1)
    offsets = _numpy(media.offsets).astype(np.int64)
    valid = _numpy(media.is_valid())
    n = np.where(valid, np.diff(offsets), 0)
    keep = np.minimum(n, t)
    new_offsets = np.concatenate(([0], np.cumsum(keep))).astype(np.int32)
    within = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1], keep)
    if t > 1:
        length = np.repeat(n, keep)
        long = length > t  # i -> round(i * (n - 1) / (t - 1)), Python's round (half to even)
        within[long] = np.round(within[long] * (length[long] - 1) / (t - 1)).astype(np.int64)
    values = media.values.take(_arrow(np.repeat(offsets[:-1], keep) + within))
    mask = None if valid.all() else _arrow(~valid)
    return pa.ListArray.from_arrays(_arrow(new_offsets), values, mask=mask)


def _numpy(array: pa.Array) -> np.ndarray:
    """A null-free int32, int64 or boolean Arrow array as numpy, read from its buffers.

    (`to_numpy` and `pa.array` make pyarrow import pandas, about 0.3 s, which a build never needs.)
    """
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[array.offset : array.offset + len(array)].astype(bool)
    width = np.int64 if pa.types.is_int64(array.type) else np.int32
    return np.frombuffer(data, dtype=width)[array.offset : array.offset + len(array)]


def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy int32, int64 or boolean array as an Arrow array, built from its buffer (see `_numpy`)."""
    if values.dtype == bool:
        data = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(data)])
    kind = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64()}[values.dtype]
    return pa.Array.from_buffers(
        kind, values.size, [None, pa.py_buffer(np.ascontiguousarray(values))]
    )


def _fast_rows(
    table: pa.Table,
    numbers: np.ndarray,
    kind: str,
    target_frames: int,
    block: memoryview,
    starts: np.ndarray,
    ends: np.ndarray,
) -> pl.DataFrame:
    """The reader's rows as the batch `_pairs_of_batch` takes: `msgs` (the messages or conversations
    list), `key` (which one; null where the exact path must read the row), frames and ids.

    numbers, starts, ends: each row's line number and the offsets of its line in block.
    """
    frames = _kept_frames(_media(table), kind, target_frames)
    messages, conversations = table.column("messages"), table.column("conversations")
    columns = {
        "row_id": table.column("id"),
        "data_source": table.column("data_source"),
        "video_id": table.column("video_id")
        if kind == "video"
        else pa.nulls(len(table), pa.string()),
        "messages": messages,
        "conversations": conversations,
        "frames": frames,
    }
    batch = pl.from_arrow(pa.table(columns))
    assert isinstance(batch, pl.DataFrame)
    has_messages = pl.col("messages").is_not_null()
    key = (
        pl.when(has_messages)
        .then(pl.lit("messages"))
        .when(pl.col("conversations").is_not_null())
        .then(pl.lit("conversations"))
    )
    batch = batch.with_columns(line=pl.Series(numbers), key=key)
    # "messages": null beside "conversations": the exact parser reads the (null) messages key, so
    # such rows take the exact path. Arrow cannot tell a null key from a missing one: check the text.
    maybe = (batch["key"] == "conversations").fill_null(False).to_numpy()
    if maybe.any() and _MESSAGES_KEY.search(block):
        named = np.zeros(batch.height, dtype=bool)
        for i in np.flatnonzero(maybe).tolist():
            named[i] = bool(_MESSAGES_KEY.search(block, int(starts[i]), int(ends[i])))
        batch = batch.with_columns(
            key=pl.when(pl.Series(named)).then(None).otherwise(pl.col("key"))
        )
    chosen = (
        pl.when(pl.col("key") == "messages")
        .then(pl.col("messages"))
        .otherwise(pl.col("conversations"))
    )
    batch = batch.with_columns(msgs=chosen).drop("messages", "conversations")
    msgs = pl.col("msgs")
    usable = (pl.col("row_id") != "") & (msgs.list.len() > 0) & (pl.col("frames").list.len() > 0)
    if _child_nulls(messages) or _child_nulls(conversations):  # null messages: wrong_type
        usable &= ~msgs.list.eval(pl.element().is_null()).list.any()
    if frames.values.null_count:
        usable &= pl.col("frames").list.count_matches(None) == 0
    return batch.with_columns(key=pl.when(usable.fill_null(False)).then(pl.col("key")))


def _child_nulls(column: pa.ChunkedArray) -> bool:
    """Whether any list of the column holds a null element."""
    return any(chunk.values.null_count for chunk in column.chunks)


def _block_rows(
    block: memoryview,
    ends: np.ndarray,
    first: int,
    kind: str,
    target_frames: int,
    options: pj.ParseOptions,
) -> tuple[pl.DataFrame | None, np.ndarray, np.ndarray, np.ndarray]:
    """(rows the reader took with `key` and `line`, or None; lines for the exact path; line starts; line ends).

    block: whole newline-terminated lines, the first of them line number `first`; ends: the
    offsets of its newlines.
    """
    buffer = np.frombuffer(block, dtype=np.uint8)
    starts = np.concatenate(([0], ends[:-1] + 1))
    numbers = np.arange(first, first + ends.size, dtype=np.int64)
    head = buffer[starts]
    tail = buffer[np.maximum(ends - 1, 0)]
    carriage = tail == _CARRIAGE
    tail[carriage] = buffer[np.maximum(ends[carriage] - 2, 0)]
    # A line from { to } holds whole objects only, so the reader's rows line up with the lines
    # unless one holds two, which the row count shows.
    good = (head == _OPEN) & (tail == _CLOSE)
    slow = [np.zeros(0, dtype=np.int64)]
    odd = np.flatnonzero(~good)
    if odd.size:  # blank lines are skipped; other lines not from { to } take the exact path
        slow.append(
            numbers[[i for i in odd.tolist() if bytes(block[starts[i] : ends[i] + 1]).strip()]]
        )
    if not _is_utf8(block):  # Arrow's reader does not check UTF-8: such lines go the exact way
        for i in np.flatnonzero(good).tolist():
            try:
                codecs.decode(block[starts[i] : ends[i] + 1], "utf-8")
            except UnicodeDecodeError:
                good[i] = False
                slow.append(numbers[i : i + 1])
    take = np.flatnonzero(good)
    if take.size == ends.size:
        view, offsets = block, np.append(starts, buffer.size)
    else:
        view = memoryview(b"".join(block[starts[i] : ends[i] + 1] for i in take.tolist()))
        offsets = np.concatenate(([0], np.cumsum(ends[take] + 1 - starts[take])))
    tables = []
    for table, lines in _read_lines(view, numbers[take], offsets, options):
        if table is None:
            slow.append(lines)
        else:
            at = lines - first
            tables.append(
                _fast_rows(table, lines, kind, target_frames, block, starts[at], ends[at])
            )
    rows = pl.concat(tables) if len(tables) > 1 else (tables[0] if tables else None)
    return rows, np.concatenate(slow), starts, ends


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
    batch = batch.with_row_index("fi")
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


def _parse_blocks(
    path: Path,
    pool: PoolFile,
    options: ParseOptions,
    row_frames: bool,
    categorical: bool,
    spill_texts: TextSink | None,
    block_bytes: int | None = None,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[pl.DataFrame], list[tuple[int, bytes]]]:
    """(QA parts, reject parts, row-frame parts, (line number, bytes) for the exact path) of the file.

    categorical: each block's parts get `pool.low_card` columns (held as they are built).
    spill_texts: each block's QA part goes through it as it is built.
    """
    compact = low_card if categorical else (lambda frame: frame)
    spill = spill_texts or (lambda frame: frame)
    qa_parts: list[pl.DataFrame] = []
    reject_parts: list[pl.DataFrame] = []
    frame_parts: list[pl.DataFrame] = []
    slow: list[tuple[int, bytes]] = []
    parse_options = pj.ParseOptions(
        explicit_schema=_schema(pool.kind), unexpected_field_behavior="ignore"
    )

    next_first = [1]  # line number of the next block's first line (read on the reader's thread)

    def read(
        block: memoryview,
    ) -> tuple[int, pl.DataFrame | None, np.ndarray, np.ndarray, np.ndarray]:
        """(its first line number, `_block_rows`) of the next block, on the reader's thread."""
        ends = _newlines(block)
        first = next_first[0]
        next_first[0] += ends.size
        return first, *_block_rows(
            block, ends, first, pool.kind, options.target_frames, parse_options
        )

    def finish(block: memoryview, rows: Future) -> None:
        first, batch, lines, starts, ends = rows.result()
        if batch is not None:
            lines = np.concatenate(
                [lines, batch.filter(pl.col("key").is_null())["line"].to_numpy()]
            )
            fast = batch.filter(pl.col("key").is_not_null())
            del batch
            pairs, no_pair = _pairs_of_batch(fast, pool.kind, row_frames)
            lines = np.concatenate([lines, no_pair])
            if row_frames:
                kept = fast.select(
                    source_file=pl.lit(str(path), dtype=pl.String), line="line", frames="frames"
                )
                frame_parts.append(compact(_resolved(kept, options.media_root)))
            else:
                pairs = _resolved(pairs, options.media_root)
            qa, empty = qa_frame(pairs, pool.kind, str(path), options.mcq_on_raw)
            qa_parts.append(spill(compact(qa)))
            reject_parts.append(empty)
        slow.extend(
            (n, bytes(block[starts[n - first] : ends[n - first] + 1]))
            for n in np.sort(lines).tolist()
        )

    # The reader finds the next block's lines and parses them on a thread (one block after the
    # other) while this one's QA rows are built.
    with ThreadPoolExecutor(1) as ahead:
        pending = None
        for block in _blocks(path, block_bytes):
            rows = ahead.submit(read, block)
            if pending is not None:
                finish(*pending)
            pending = (block, rows)
        if pending is not None:
            finish(*pending)
    return qa_parts, reject_parts, frame_parts, slow


def parse_file_fast(
    pool: PoolFile,
    options: ParseOptions | None = None,
    *,
    row_frames: bool = False,
    categorical: bool = False,
    spill_texts: TextSink | None = None,
    block_bytes: int | None = None,
) -> PoolResult | None:
    """QA rows and rejects of a whole .jsonl[.gz] pool file; None when the file must take the exact path.

    row_frames, categorical, spill_texts, block_bytes: see `pool_read.read_pool`.
    """
    options = options or ParseOptions()
    path = Path(pool.path)
    if _is_json_array_file(path):
        return None
    qa_parts, reject_parts, frame_parts, slow = _parse_blocks(
        path, pool, options, row_frames, categorical, spill_texts, block_bytes
    )
    if slow:
        slow.sort()
        exact = parse_records(slow, pool, options)
        if row_frames:
            exact = split_row_frames(exact)
            frame_parts.append(low_card(exact.frames) if categorical else exact.frames)
        exact_qa = low_card(exact.qa) if categorical else exact.qa
        qa_parts.append(spill_texts(exact_qa) if spill_texts is not None else exact_qa)
        reject_parts.append(exact.rejects)
    if not qa_parts:
        empty_qa = S.empty_frame(S.QA_SCHEMA)
        empty_qa = empty_qa.drop("frames") if row_frames else empty_qa
        qa_parts.append(spill_texts(empty_qa) if spill_texts is not None else empty_qa)
    qa = pl.concat(qa_parts)
    rejects = pl.concat(reject_parts) if reject_parts else S.empty_frame(S.REJECT_SCHEMA)
    frames = None
    if row_frames:
        frames = pl.concat(frame_parts) if frame_parts else S.empty_frame(ROW_FRAMES_SCHEMA)
        # only lines that gave a QA (as split_row_frames keeps them)
        frames = frames.join(
            qa.select("line").unique(), on="line", how="semi", maintain_order="left"
        )
    if categorical:  # the parts were converted as they came; this covers a file that gave none
        qa, frames = low_card(qa), (low_card(frames) if frames is not None else None)
    if slow:
        qa = qa.sort("line", maintain_order=True)
        frames = frames.sort("line", maintain_order=True) if frames is not None else None
    return PoolResult(qa, rejects.sort("line", maintain_order=True), frames)


def _resolved(frame: pl.DataFrame, media_root: Path | None) -> pl.DataFrame:
    """The frame with its `frames` paths joined to media_root (unchanged without one)."""
    if media_root is None:
        return frame
    return frame.with_columns(_resolve_expr(media_root).alias("frames"))
