"""Candidate pool ingestion: JSONL rows in, one QA row per turn pair out
(docs/method.md, Pool ingestion).

Rows are streamed in chunks of a fixed number of lines; each chunk becomes a polars frame of
QA rows (QA_SCHEMA) plus a frame of rejects (REJECT_SCHEMA). Only the per-row pairing walks
Python objects; the stratum fields are computed vectorised over the chunk.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from gdo_core import schema as S
from gdo_core.pool_lines import (  # noqa: F401
    _KEY_SAFE,
    DEFAULT_CHUNK_LINES,
    PoolError,
    _is_json_array_file,
    _JSONError,
    _loads,
    _open_binary,
    chunk_fingerprints,
    chunk_key,
    iter_line_chunks,
    iter_lines,
    pool_name,
)
from gdo_core.pool_rows import (  # noqa: F401
    ASSISTANT_ROLES,
    USER_ROLES,
    VideoFrameStore,
    _decode_video,
    _media_of,
    _Reject,
    _resample_indices,
    _resolve,
    _str_list,
    _text_of,
    _turn_pairs,
    resample_frames,
    resample_indices,
)
from gdo_core.strata import clean_question_expr, collapse_ws_expr, with_stratum_fields

PoolKind = Literal["onevision", "video"]
UID_PREFIX: dict[str, str] = {"onevision": "ov", "video": "vv"}
BUCKET_OF: dict[str, str] = {"onevision": S.BUCKET_IMAGE, "video": S.BUCKET_VIDEO}

DEFAULT_TARGET_FRAMES = 32
PARALLEL_INGEST_BYTES = 32 * 2**20


TextSink = Callable[[pl.DataFrame], pl.DataFrame]
"""Takes a part of the QA table, keeps its question and answer elsewhere, and returns the part with
other columns standing in for them (`pool_cache.TextSpill` is one). Called from several threads."""


@dataclass
class PoolResult:
    """QA rows and rejects of one pool, chunk or file.

    With row frames (`read_pool(row_frames=True)`) `qa` has no `frames` column; `frames` holds the
    frame list once per input line (source_file, line, frames) instead of once per QA.
    """

    qa: pl.DataFrame
    rejects: pl.DataFrame
    frames: pl.DataFrame | None = None

    @property
    def counts(self) -> dict[str, Any]:
        """QA counts per bucket and reject counts per reason."""
        return summarize(self.qa, self.rejects)


@dataclass(frozen=True)
class PoolFile:
    """One pool input file and the kind of QAs it holds."""

    path: Path
    kind: PoolKind

    @property
    def pool_name(self) -> str:
        """Partition-key-safe name of the file: its stem without JSON suffixes."""
        return pool_name(self.path)


@dataclass
class _Pairs:
    """Column buffers of one chunk's raw turn pairs (filled row by row, then cleaned in polars)."""

    row_id: list[str] = field(default_factory=list)
    video_uid: list[str | None] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    user_raw: list[str] = field(default_factory=list)
    answer_raw: list[str] = field(default_factory=list)
    frames: list[list[str]] = field(default_factory=list)
    data_source: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)


# ---- parsing a chunk ----------------------------------------------------------------------


@dataclass(frozen=True)
class ParseOptions:
    """Settings that change what a pool row yields."""

    target_frames: int = DEFAULT_TARGET_FRAMES
    mcq_on_raw: bool = True  # the fix; False reproduces the published quirk
    media_root: Path | None = None  # None keeps paths as written in the file
    video_frame_dir: Path | None = None  # where decoded video-file frames go


def parse_records(
    records: list[tuple[int, bytes]], pool: PoolFile, options: ParseOptions = ParseOptions()
) -> PoolResult:
    """Parse (line number, raw JSON) records of one pool file into QA rows and rejects."""
    kind = pool.kind
    source_file = str(pool.path)
    base_dir = Path(pool.path).resolve().parent
    videos = (
        VideoFrameStore(options.video_frame_dir, options.target_frames)
        if options.video_frame_dir is not None
        else None
    )
    cols = _Pairs()
    rejects: dict[str, list[Any]] = {name: [] for name in S.REJECT_SCHEMA}

    def reject(line: int, reason: str, detail: str, qa_uid: str | None = None) -> None:
        rejects["source_file"].append(source_file)
        rejects["line"].append(line)
        rejects["qa_uid"].append(qa_uid)
        rejects["reason"].append(reason)
        rejects["detail"].append(detail)

    for line, raw in records:
        try:
            obj = _loads(raw)
        except _JSONError as exc:
            reject(line, S.REJECT_BAD_JSON, str(exc)[:200])
            continue
        if not isinstance(obj, dict):
            reject(line, S.REJECT_NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
            continue
        raw_id = obj.get("id")
        if raw_id is None or isinstance(raw_id, (dict, list)) or raw_id == "":
            reject(line, S.REJECT_WRONG_TYPE, "'id' missing or not a scalar")
            continue
        row_id = str(raw_id)
        try:
            pairs = _turn_pairs(obj)
            if not pairs:
                raise _Reject(S.REJECT_NO_PAIR, "no user turn followed by an assistant turn")
            frames = _media_of(obj, kind, options.target_frames, options.media_root, videos, base_dir)
        except _Reject as exc:
            reject(line, exc.reason, exc.detail)
            continue
        data_source = obj.get("data_source")
        data_source = "" if data_source is None else str(data_source)
        video_uid = None
        if kind == "video":
            video_id = obj.get("video_id")
            video_uid = str(video_id) if video_id not in (None, "") else row_id
        for position, (user_raw, answer_raw) in enumerate(pairs):
            cols.row_id.append(row_id)
            cols.video_uid.append(video_uid)
            cols.position.append(position)
            cols.user_raw.append(user_raw)
            cols.answer_raw.append(answer_raw)
            cols.frames.append(frames)
            cols.data_source.append(data_source)
            cols.line.append(line)
    qa, empty = qa_frame(_pairs_frame(cols), kind, source_file, options.mcq_on_raw)
    reject_frame = pl.concat([pl.DataFrame(rejects, schema=S.REJECT_SCHEMA), empty]).sort("line", maintain_order=True)
    return PoolResult(qa, reject_frame)


def _list_column(lists: list[list[str]]) -> pl.Series:
    """A List[String] column built through Arrow offsets (polars' per-list path is ~10x slower).

    No `pa.array`: it makes pyarrow import pandas (about 0.3 s), which a build never needs.
    """
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(item) for item in lists], out=offsets[1:])
    flat = pl.Series([v for item in lists for v in item], dtype=pl.String()).to_arrow()
    starts = pa.Array.from_buffers(pa.int64(), offsets.size, [None, pa.py_buffer(offsets)])
    array = pa.LargeListArray.from_arrays(starts, flat)
    return pl.Series("frames", array, dtype=pl.List(pl.String()))


def _rank_within_runs(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal consecutive keys (pairs arrive grouped by line)."""
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    lengths = np.diff(np.append(starts, n))
    return (np.arange(n) - np.repeat(starts, lengths)).astype(np.int32)


PAIRS_SCHEMA: dict[str, pl.DataType] = {
    "row_id": pl.String(),
    "video_uid": pl.String(),
    "position": pl.Int32(),
    "user_raw": pl.String(),
    "answer_raw": pl.String(),
    "data_source": pl.String(),
    "line": pl.Int64(),
    "frames": pl.List(pl.String()),
}


def _pairs_frame(cols: _Pairs) -> pl.DataFrame:
    """The raw turn pairs of the exact path as a PAIRS_SCHEMA frame."""
    plain = {name: getattr(cols, name) for name in PAIRS_SCHEMA if name != "frames"}
    frame = pl.DataFrame(plain, schema={k: v for k, v in PAIRS_SCHEMA.items() if k != "frames"})
    return frame.with_columns(_list_column(cols.frames))


def qa_frame(
    pairs: pl.DataFrame, kind: str, source_file: str, mcq_on_raw: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(QA rows, empty-text rejects) of raw turn pairs (PAIRS_SCHEMA); texts are cleaned vectorised.

    Pairs may carry `n_frames` instead of `frames`; the QA rows then have no `frames` column.
    """
    prefix = UID_PREFIX[kind]
    pairs = pairs.with_columns(
        question=clean_question_expr("user_raw"),
        answer=collapse_ws_expr("answer_raw"),
    )
    is_empty = (pl.col("question") == "") | (pl.col("answer") == "")
    empty = pairs.filter(is_empty).select(
        source_file=pl.lit(source_file, dtype=pl.String()),
        line=pl.col("line"),
        qa_uid=pl.lit(None, dtype=pl.String()),
        reason=pl.lit(S.REJECT_EMPTY_TEXT, dtype=pl.String()),
        detail=pl.format(
            "turn pair {}: empty {}",
            pl.col("position"),
            pl.when(pl.col("question") == "").then(pl.lit("question")).otherwise(pl.lit("answer")),
        ),
    )
    qa = pairs.filter(~is_empty)
    qa = qa.with_columns(
        # the turn index counts emitted pairs only, in row order
        turn=pl.Series(_rank_within_runs(qa["line"].to_numpy()), dtype=pl.Int32),
        n_frames=(
            pl.col("frames").list.len() if "frames" in pairs.columns else pl.col("n_frames")
        ).cast(pl.Int32),
        bucket=pl.lit(BUCKET_OF[kind], dtype=pl.String()),
        source_file=pl.lit(source_file, dtype=pl.String()),
    )
    qa = qa.with_columns(
        qa_uid=pl.format(f"{prefix}::{{}}::t{{}}", pl.col("row_id"), pl.col("turn")),
        user_text=pl.col("user_raw") if mcq_on_raw else pl.col("question"),
    )
    qa = with_stratum_fields(qa, mcq_text_col="user_text")
    columns = [pl.col(c).cast(t) for c, t in S.QA_SCHEMA.items() if c in qa.columns or c != "frames"]
    return qa.select(columns), empty


# ---- whole files --------------------------------------------------------------------------


def iter_pool_chunks(
    pool: PoolFile, chunk_lines: int = DEFAULT_CHUNK_LINES, options: ParseOptions = ParseOptions()
) -> Iterator[tuple[str, PoolResult]]:
    """(chunk key, parsed chunk) for every chunk of one pool file, streamed."""
    for index, records in iter_line_chunks(pool.path, chunk_lines):
        yield chunk_key(pool.pool_name, index), parse_records(records, pool, options)


def read_chunk(
    pool: PoolFile, index: int, chunk_lines: int = DEFAULT_CHUNK_LINES, options: ParseOptions = ParseOptions()
) -> PoolResult:
    """Parse one chunk (lines index*chunk_lines+1 .. (index+1)*chunk_lines) of a pool file."""
    for i, records in iter_line_chunks(pool.path, chunk_lines):
        if i == index:
            return parse_records(records, pool, options)
        if i > index:
            break
    return PoolResult(S.empty_frame(S.QA_SCHEMA), S.empty_frame(S.REJECT_SCHEMA))


def pool_files(onevision: Path | list[Path] | None, video: Path | list[Path] | None) -> list[PoolFile]:
    """The pool inputs as PoolFiles, image pools first; duplicate pool names are an error."""
    files: list[PoolFile] = []
    for kind, paths in (("onevision", onevision), ("video", video)):
        if paths is None:
            continue
        for path in [paths] if isinstance(paths, (str, Path)) else paths:
            files.append(PoolFile(Path(path), kind))  # type: ignore[arg-type]
    names = [f.pool_name for f in files]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise PoolError(f"two pool files share the name {clashes[0]!r}; rename one of them")
    for f in files:
        if not f.path.is_file():
            raise PoolError(f"{f.path}: pool file not found")
    return files


def _auto_workers(files: list[PoolFile], workers: int | None) -> int:
    """Worker processes for a pool: one per core for big pools, 1 where start-up would dominate."""
    if workers is not None:
        return max(1, workers)
    small = sum(f.path.stat().st_size for f in files) < PARALLEL_INGEST_BYTES
    return 1 if small else os.cpu_count() or 1


def _map_ordered(fn: Callable[..., Any], jobs: Iterable[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """fn(*job) for every job, in job order, on `workers` processes with at most 2 jobs each in flight."""
    if workers == 1:
        for job in jobs:
            yield fn(*job)
        return
    # spawn, not fork: polars' thread pool does not survive a fork
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as executor:
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append(executor.submit(fn, *job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def low_card(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its `schema.LOW_CARD_COLUMNS` cast to Categorical (same values, less memory)."""
    cast = [c for c in S.LOW_CARD_COLUMNS if c in frame.columns and frame.schema[c] != pl.Categorical]
    return frame.with_columns(pl.col(c).cast(pl.Categorical) for c in cast) if cast else frame


MAX_CHUNKS = 4


def few_chunks(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame copied into one chunk per column when a column is in more than MAX_CHUNKS.

    A parsed pool comes in one chunk per block (about 33 at 1M QAs, 8 from the cache). At 1M the
    selection then runs 8% faster and the build peaks 70-260 MB lower, which pays for the copy;
    a table in 2 chunks (230k QAs from the cache) gains nothing and keeps the copy's pages.
    """
    return frame.rechunk() if max(frame.n_chunks("all"), default=1) > MAX_CHUNKS else frame


ROW_FRAMES_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "line": pl.Int64(),
    "frames": pl.List(pl.String()),
}


def split_row_frames(result: PoolResult) -> PoolResult:
    """The result with frame lists moved from every QA to one row per (source_file, line)."""
    keys = ["source_file", "line"]
    frames = result.qa.select(*keys, "frames").unique(keys, keep="first", maintain_order=True)
    return PoolResult(result.qa.drop("frames"), result.rejects, frames)


def summarize(qa: pl.DataFrame, rejects: pl.DataFrame) -> dict[str, Any]:
    """QA counts per bucket and reject counts per reason."""
    per_bucket = dict(qa.group_by("bucket").len().sort("bucket").iter_rows()) if qa.height else {}
    per_reason = dict(rejects.group_by("reason").len().sort("reason").iter_rows()) if rejects.height else {}
    return {
        "qa": qa.height,
        "qa_per_bucket": per_bucket,
        "rejects": rejects.height,
        "rejects_per_reason": per_reason,
    }


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    """Write a frame to Parquet under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp, compression="zstd", statistics=True)
    os.replace(tmp, path)
    return path


@dataclass
class IngestSummary:
    """What `ingest` wrote: per-chunk files and the counts."""

    qa_files: list[Path]
    rejects_file: Path
    counts: dict[str, Any]


def _ingest_chunk(
    records: list[tuple[int, bytes]], pool: PoolFile, options: ParseOptions, target: Path
) -> tuple[Path, pl.DataFrame, dict[str, int]]:
    """Parse one chunk and write its QA Parquet; runs in a worker process."""
    result = parse_records(records, pool, options)
    path = write_parquet_atomic(result.qa, target)
    return path, result.rejects, summarize(result.qa, result.rejects)["qa_per_bucket"]


def ingest(
    onevision: Path | list[Path] | None,
    video: Path | list[Path] | None,
    out_dir: Path,
    *,
    target_frames: int = DEFAULT_TARGET_FRAMES,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    media_root: Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Stream pool files into `out/qa/<chunk>.parquet` and `out/rejects.parquet`, chunk by chunk.

    Chunks are parsed by `workers` processes (default: one per core for big pools) with at most two chunks
    per worker in flight, so memory stays bounded whatever the file size. Relative media
    paths are resolved against `media_root`, else the pool file's folder.
    """
    out_dir = Path(out_dir)
    files = pool_files(onevision, video)
    bar = tqdm(desc="ingest", unit=" QA", dynamic_ncols=True) if progress else None
    qa_files: list[Path] = []
    rejects: list[pl.DataFrame] = []
    per_bucket: dict[str, int] = {}

    def collect(done: tuple[Path, pl.DataFrame, dict[str, int]]) -> None:
        path, chunk_rejects, chunk_buckets = done
        qa_files.append(path)
        rejects.append(chunk_rejects)
        for bucket, n in chunk_buckets.items():
            per_bucket[bucket] = per_bucket.get(bucket, 0) + n
        if bar is not None:
            bar.update(sum(chunk_buckets.values()))

    jobs = (
        (records, pool, _ingest_options(pool, target_frames, media_root, out_dir),
         out_dir / "qa" / f"{chunk_key(pool.pool_name, index)}.parquet")
        for pool in files
        for index, records in iter_line_chunks(pool.path, chunk_lines)
    )
    for done in _map_ordered(_ingest_chunk, jobs, _auto_workers(files, workers)):
        collect(done)
    if bar is not None:
        bar.close()
    all_rejects = pl.concat(rejects) if rejects else S.empty_frame(S.REJECT_SCHEMA)
    rejects_file = write_parquet_atomic(all_rejects, out_dir / "rejects.parquet")
    counts = summarize(S.empty_frame(S.QA_SCHEMA), all_rejects)
    counts["qa"] = sum(per_bucket.values())
    counts["qa_per_bucket"] = dict(sorted(per_bucket.items()))
    return IngestSummary(qa_files, rejects_file, counts)


def _ingest_options(pool: PoolFile, target_frames: int, media_root: Path | None, out_dir: Path) -> ParseOptions:
    root = Path(media_root) if media_root else pool.path.resolve().parent
    return ParseOptions(target_frames=target_frames, media_root=root, video_frame_dir=out_dir / "video_frames")


def read_qa_files(paths: list[Path]) -> pl.DataFrame:
    """Concatenate QA Parquet files written by ingestion (schema-checked)."""
    if not paths:
        return S.empty_frame(S.QA_SCHEMA)
    return pl.concat([pl.read_parquet(p) for p in paths]).select(list(S.QA_SCHEMA))
