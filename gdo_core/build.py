"""`gdo build`: read the pool and metrics, select GDO 1x and Uni-10x, write the SFT files and report.

Also `gdo resample` (frame lists of SFT JSONL rows resampled to a new training frame count) and
the published-compatibility glue: `compat="published"` feeds the selection exactly what the
published build step saw (MCQ tested case-insensitively on the collapsed question, data_source
whitespace-collapsed) and switches the selection to the published seeded stream.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import io
import json
import math
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import polars as pl

from gdo_core import pool as P
from gdo_core.candidate_score import METRIC_COLUMNS, Ablations
from gdo_core.pool import resample_indices
from gdo_core.pool_cache import (
    StoredTexts,
    cached_read_pool,
    default_cache_dir,
    entry_key,
    keep_newest,
    writing_entry,
)
from gdo_core.pool_fast import LOW_MEMORY_BLOCK_BYTES
from gdo_core.profiles import GoalProfile, load_profile
from gdo_core.schema import (
    BUCKET_IMAGE,
    BUCKET_VIDEO,
    STRATUM_FIELDS,
    SUBSET_MEMBER_SCHEMA,
    TEXT_CODE,
)
from gdo_core.select import (
    ANSWER_DISTINCT,
    ExcludeMode,
    Mode,
    PreparedMetrics,
    SelectionResult,
    SelectOptions,
    answer_distinct_tokens,
    load_exclusion_reference,
    prepare_metrics,
    select_subsets,
    sft_rows,
    text_codes,
)
from gdo_core.strata import MCQ, MCQ_PATTERN, OPEN, WS_RUN_PATTERN, source_group_expr

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is installed with polars' extras here
    orjson = None  # type: ignore[assignment]

Compat = Literal["published"]
ARM_GDO, ARM_UNI = "gdo", "uni10x"
# The published reader's data_source when a row has none.
PUBLISHED_DEFAULT_SOURCE = {BUCKET_IMAGE: "onevision", BUCKET_VIDEO: "llava_video"}
# Published metrics files name the shared score quality_score; gdo's descriptors table says quality.
METRIC_ALIASES = {"quality_score": "quality"}
DUCKDB_TABLE = "descriptors"
# QA columns `select.sft_rows` reads besides `frames` (gathered only for the selected rows).
SFT_QA_COLUMNS = frozenset(
    {"qa_uid", "video_uid", "question_form", "question", "answer", "n_frames"}
    | {"temporal_category", "bucket", "data_source"}
)
BAD_EXAMPLES_KEPT = 5
# SFT rows are built and written a slice at a time (bounding the output's memory): a file in about
# OUTPUT_SLICES slices, each of MIN_OUTPUT_SLICE_ROWS to OUTPUT_SLICE_ROWS rows. At 230k QAs the
# Uni file's 41,400 rows in 8 slices, not 3, lowered the peak by about 40 MB, and 16, not 8, by
# about 10 MB more; each slice costs about 10 ms more, so a million QAs' file (180,000 rows) goes
# in 16 slices of 11,250 rows, not in 4,096-row ones.
OUTPUT_SLICE_ROWS = 16_384
MIN_OUTPUT_SLICE_ROWS = 2_048
OUTPUT_SLICES = 16
# The Uni-10x file's slices are built and serialised on WRITE_WORKERS threads and written in
# order, each slice 1/WRITE_WORKERS of the size above (as many bytes in flight as one slice): at
# 1M QAs the write took ~0.3 s less (interleaved), at the same peak.
WRITE_WORKERS = 2


class MetricsError(ValueError):
    """A metrics file that cannot be used (the message names file, line and key)."""


class BuildError(ValueError):
    """Invalid build arguments."""


# ---- metrics --------------------------------------------------------------------------------


@dataclass
class MetricsTable:
    """Metrics rows in file order (duplicates kept: the published stats count every row)."""

    # qa_uid + METRIC_COLUMNS (Float64, null = missing); None once dropped (`prepared_only`)
    rows: pl.DataFrame | None
    path: str
    format: str
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    prepared: PreparedMetrics | None = None  # `with_prepared`: the pool-free part of the metric terms

    @property
    def row_count(self) -> int:
        """Rows of the metrics file that were read (bad rows not counted)."""
        if self.rows is not None:
            return self.rows.height
        assert self.prepared is not None  # `prepared_only` keeps the rows of an unprepared table
        return self.prepared.rows

    def with_prepared(self, mode: Mode) -> MetricsTable:
        """The table with its metric terms prepared for a selection mode (`select.prepare_metrics`)."""
        if self.prepared is None or self.prepared.mode != mode:
            self.prepared = prepare_metrics(self._rows(), mode) if self.row_count else None
        return self

    def prepared_only(self) -> MetricsTable:
        """The table without its rows once its terms are prepared (all a build's selection reads)."""
        if self.prepared is not None:
            self.rows = None
        return self

    def for_selection(self, mode: Mode) -> pl.DataFrame | PreparedMetrics:
        """What `select_subsets` takes: the prepared terms when they fit the mode, else the rows."""
        if self.prepared is not None and self.prepared.mode == mode:
            return self.prepared
        return self._rows()

    def _rows(self) -> pl.DataFrame:
        if self.rows is None:
            mode = self.prepared.mode if self.prepared is not None else None
            raise ValueError(f"{self.path}: only the terms prepared for mode {mode!r} were kept")
        return self.rows

    def info(self) -> dict[str, Any]:
        """What the report says about the metrics input."""
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.row_count,
            "bad_rows": self.bad_rows,
            "bad_examples": self.bad_examples,
        }


_METRIC_SCHEMA = {"qa_uid": pl.String(), **{c: pl.Float64() for c in METRIC_COLUMNS}}


def _file_kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    return "jsonl"


def _normalise_columns(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    frame = frame.rename(
        {k: v for k, v in METRIC_ALIASES.items() if k in frame.columns and v not in frame.columns}
    )
    if "qa_uid" not in frame.columns:
        raise MetricsError(f"{where}: missing key 'qa_uid' (columns: {', '.join(frame.columns)})")
    present = [c for c in METRIC_COLUMNS if c in frame.columns]
    if not present:
        raise MetricsError(
            f"{where}: none of the metric keys {', '.join(METRIC_COLUMNS)} (or quality_score) is present"
        )
    out = []
    for col in METRIC_COLUMNS:
        if col not in frame.columns:
            out.append(pl.lit(None, dtype=pl.Float64).alias(col))
            continue
        dtype = frame.schema[col]
        if not (dtype.is_numeric() or dtype == pl.Null):
            raise MetricsError(f"{where}: key {col!r} must be numeric, got column type {dtype}")
        value = pl.col(col).cast(pl.Float64)
        out.append(pl.when(value.is_finite()).then(value).otherwise(None).alias(col))
    uid = pl.col("qa_uid").cast(pl.String).str.replace_all(WS_RUN_PATTERN, " ").str.strip_chars()
    return frame.select(uid, *out)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _read_metrics_jsonl_rows(raw: bytes, where: str, strict: bool) -> MetricsTable:
    """Line-by-line reader: nested `data_quality_metrics` allowed; strict raises, lenient counts bad rows."""
    loads = orjson.loads if orjson is not None else json.loads
    cols: dict[str, list[Any]] = {name: [] for name in _METRIC_SCHEMA}
    bad, examples = 0, []

    def fail(line: int, message: str) -> None:
        nonlocal bad
        if strict:
            raise MetricsError(f"{where}:{line}: {message}")
        bad += 1
        if len(examples) < BAD_EXAMPLES_KEPT:
            examples.append(f"line {line}: {message}")

    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = loads(line)
        except ValueError as exc:
            try:  # json also takes NaN / Infinity tokens, as the published reader did
                item = json.loads(line)
            except ValueError:
                fail(number, f"not valid JSON ({exc})")
                continue
        if not isinstance(item, dict):
            fail(number, "expected a JSON object")
            continue
        uid = item.get("qa_uid", item.get("id", ""))
        uid = " ".join(str(uid).split()) if uid is not None else ""
        if not uid:
            fail(number, "missing key 'qa_uid'")
            continue
        nested = item.get("data_quality_metrics")
        source = nested if isinstance(nested, dict) else item
        cols["qa_uid"].append(uid)
        for col in METRIC_COLUMNS:
            keys = [col] + [alias for alias, target in METRIC_ALIASES.items() if target == col]
            value = None
            for key in keys:
                value = source.get(key, item.get(key))
                if value is not None:
                    break
            number_value = _as_float(value)
            if (
                number_value is None
                and value is not None
                and strict
                and not isinstance(value, float)
            ):
                raise MetricsError(
                    f"{where}:{number}: key {keys[-1]!r} must be a number, got {value!r}"
                )
            cols[col].append(number_value)
    table = pl.DataFrame(cols, schema=_METRIC_SCHEMA)
    return MetricsTable(table, where, "jsonl", bad, examples)


def load_metrics(path: Path | str, *, strict: bool = True) -> MetricsTable:
    """Metrics from gdo's DuckDB file (table `descriptors`), a Parquet file, or merged-metrics JSONL(.gz).

    strict: bad rows raise an error naming file, line and key; otherwise they are skipped and counted
    (the published reader's behaviour, used in compat mode).
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise MetricsError(f"{where}: metrics file not found")
    kind = _file_kind(path)
    if kind == "parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several error types for corrupt files
            raise MetricsError(f"{where}: unreadable Parquet file ({exc})") from exc
        return MetricsTable(P.few_chunks(_normalise_columns(frame, where)), where, "parquet")
    if kind == "duckdb":
        import duckdb

        try:
            con = duckdb.connect(str(path), read_only=True)
        except Exception as exc:  # duckdb.IOException and friends
            raise MetricsError(f"{where}: cannot open DuckDB file ({exc})") from exc
        try:
            tables = {
                r[0]
                for r in con.execute("select table_name from information_schema.tables").fetchall()
            }
            if DUCKDB_TABLE not in tables:
                raise MetricsError(
                    f"{where}: no table {DUCKDB_TABLE!r} (tables: {', '.join(sorted(tables)) or 'none'})"
                )
            columns = [
                r[0]
                for r in con.execute(
                    "select column_name from information_schema.columns where table_name = ? order by ordinal_position",
                    [DUCKDB_TABLE],
                ).fetchall()
            ]
            wanted = [
                c for c in columns if c == "qa_uid" or c in METRIC_COLUMNS or c in METRIC_ALIASES
            ]
            frame = con.sql(f"select {', '.join(wanted) or '*'} from {DUCKDB_TABLE}").pl()
        finally:
            con.close()
        return MetricsTable(
            P.few_chunks(_normalise_columns(frame, f"{where} [{DUCKDB_TABLE}]")), where, "duckdb"
        )
    raw = gzip.decompress(path.read_bytes()) if kind == "jsonl.gz" else None
    try:  # fast path: flat, well-formed rows (plain files are read by polars without a copy here)
        frame = pl.read_ndjson(io.BytesIO(raw) if raw is not None else path)
        if "data_quality_metrics" not in frame.columns and frame.height == _line_count(raw, path):
            frame = _normalise_columns(frame, where)
            if (
                frame["qa_uid"].null_count() == 0
                and not (frame["qa_uid"].str.strip_chars() == "").any()
            ):
                return MetricsTable(P.few_chunks(frame), where, "jsonl")
    except (pl.exceptions.PolarsError, MetricsError, ValueError):
        pass
    return _read_metrics_jsonl_rows(raw if raw is not None else path.read_bytes(), where, strict)


METRICS_ENTRY_PREFIX = "metrics-"  # entries beside the parsed pools in the cache folder
# The modules whose code decides what a metrics entry holds (reading, z-statistics, z-terms).
_METRICS_MODULES = ("build.py", "select.py", "candidate_score.py")


def _metrics_key(path: Path, strict: bool, mode: Mode) -> str:
    """Hex key of a prepared metrics file: the file (path, size, mtime), the options and the code."""
    return entry_key([("metrics", path)], {"strict": strict, "mode": mode}, _METRICS_MODULES)


def _store_metrics(entry: Path, table: MetricsTable) -> None:
    """Write a metrics entry under a temporary name, rename it into place, keep the newest ones."""
    with writing_entry(entry) as tmp:
        prepared = table.prepared
        if prepared is None:  # (no rows, or not prepared): the rows themselves
            table._rows().write_parquet(tmp / "rows.parquet", compression="lz4", statistics=False)
        info: dict[str, Any] = {
            "format": table.format,
            "bad_rows": table.bad_rows,
            "bad_examples": table.bad_examples,
            "prepared": None,
        }
        if prepared is not None:
            prepared.uids.write_parquet(tmp / "uids.parquet", compression="lz4", statistics=False)
            np.save(tmp / "vds3.npy", prepared.vds3)
            np.save(tmp / "quality.npy", prepared.quality)
            stats = {k: list(v) for k, v in prepared.stats.items()}  # floats round-trip exactly
            info["prepared"] = {"mode": prepared.mode, "rows": prepared.rows, "stats": stats}
        (tmp / "info.json").write_text(json.dumps(info))
    keep_newest(p for p in entry.parent.glob(f"{METRICS_ENTRY_PREFIX}*") if p.is_dir())


def _load_metrics_entry(entry: Path, where: str) -> MetricsTable | None:
    """A stored metrics entry (None if missing or damaged): prepared terms only, or else the rows."""
    try:
        info = json.loads((entry / "info.json").read_text())
        table = MetricsTable(
            None if info["prepared"] is not None else pl.read_parquet(entry / "rows.parquet"),
            where,
            info["format"],
            info["bad_rows"],
            info["bad_examples"],
        )
        if info["prepared"] is not None:
            p = info["prepared"]
            table.prepared = PreparedMetrics(
                p["mode"],
                p["rows"],
                pl.read_parquet(entry / "uids.parquet"),
                {k: (float(m), float(s)) for k, (m, s) in p["stats"].items()},
                np.load(entry / "vds3.npy"),
                np.load(entry / "quality.npy"),
            )
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None
    return table


def cached_metrics(
    path: Path | str, *, strict: bool, mode: Mode, cache_dir: Path | None
) -> tuple[MetricsTable, str]:
    """(`load_metrics(path).with_prepared(mode).prepared_only()`, cache status) through the cache
    in cache_dir.

    A build on an unchanged metrics file reads the prepared z-terms back from Parquet and NumPy
    files instead of parsing the file and computing the statistics again. Status is "hit", "miss"
    (loaded and stored) or "off" (no cache_dir). The rows themselves are kept only when there is
    nothing prepared (an empty file): a million rows hold about 70 MB that no selection reads.
    """
    path = Path(path)
    if cache_dir is None or not path.is_file():  # a missing file: load_metrics says so
        return load_metrics(path, strict=strict).with_prepared(mode).prepared_only(), "off"
    key = _metrics_key(path, strict, mode)
    entry = Path(cache_dir) / f"{METRICS_ENTRY_PREFIX}{key}"
    if entry.is_dir():
        loaded = _load_metrics_entry(entry, str(path))
        if loaded is not None:
            os.utime(entry)  # newest use first when old entries are dropped
            return loaded, "hit"
    table = load_metrics(path, strict=strict).with_prepared(mode).prepared_only()
    if _metrics_key(path, strict, mode) != key:
        return table, "off"  # the file changed while it was read: do not store
    with contextlib.suppress(OSError, pl.exceptions.PolarsError):  # a full cache must not fail the build
        _store_metrics(entry, table)
    return table, "miss"


def _line_count(raw: bytes | None, path: Path) -> int:
    """Lines of a file (a last line without a newline counts), from its bytes or memory-mapped."""
    if raw is None:
        if path.stat().st_size == 0:
            return 0
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = np.frombuffer(data, dtype=np.uint8)
            block = 16 * 2**20  # bounds the comparison's temporary array
            count = sum(
                int(np.count_nonzero(view[i : i + block] == ord("\n")))
                for i in range(0, view.size, block)
            )
            ends_open = view[-1] != ord("\n")
            del view  # the mmap cannot close while numpy holds its buffer
        return count + int(ends_open)
    return raw.count(b"\n") + (0 if not raw or raw.endswith(b"\n") else 1)


# ---- published-compatibility glue ---------------------------------------------------------


def published_view(qa: pl.DataFrame, *, mcq_collapsed: bool = False) -> pl.DataFrame:
    """The QA table as the published reader saw it: collapsed data_source (default name when empty),
    MCQ tested case-insensitively on the collapsed question, groups and strata recomputed.

    mcq_collapsed: question_form was already tested on the collapsed question (a pool parsed with
    mcq_on_raw=False), so only the data_source side is redone; a table it leaves unchanged is returned as is.
    """
    source = (
        pl.col("data_source")
        .cast(pl.String)  # (Categorical in a `gdo build` table)
        .fill_null("")
        .str.replace_all(WS_RUN_PATTERN, " ")
        .str.strip_chars()
    )
    default = pl.col("bucket").replace_strict(PUBLISHED_DEFAULT_SOURCE, default="")
    # data_source and its group once per distinct (data_source, bucket), then joined back
    sources = (
        qa.select("data_source", "bucket", "source_group")
        .unique(["data_source", "bucket"])
        .with_columns(published_source=pl.when(source == "").then(default).otherwise(source))
        .with_columns(published_group=source_group_expr("published_source"))
    )
    same = (pl.col("published_source") == pl.col("data_source")) & (
        pl.col("published_group") == pl.col("source_group")
    )
    if mcq_collapsed and sources.select(same.fill_null(False).all()).item():
        return qa
    sources = sources.drop("source_group")
    looked_up = qa.select("data_source", "bucket").join(
        sources, on=["data_source", "bucket"], how="left", nulls_equal=True, maintain_order="left"
    )
    out = qa.with_columns(
        data_source=looked_up["published_source"],
        source_group=looked_up["published_group"],
    )
    if not mcq_collapsed:
        out = out.with_columns(
            question_form=pl.when(pl.col("question").str.contains(MCQ_PATTERN))
            .then(pl.lit(MCQ))
            .otherwise(pl.lit(OPEN)),
        )
    return out.with_columns(
        stratum=pl.concat_str([pl.col(f) for f in STRATUM_FIELDS], separator="|")
    )


# ---- the build ------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """Paths of what a build wrote, its report, the member table and timings (seconds)."""

    out_dir: Path
    gdo_path: Path
    uni_path: Path
    report_path: Path
    profile_path: Path
    members_path: Path
    report: dict[str, Any]
    members: pl.DataFrame
    timings: dict[str, float]
    parse_cache: dict[str, Any] = field(default_factory=dict)  # not in report.json: run detail


def output_names(target_frames: int) -> tuple[str, str]:
    """File names of the GDO 1x and Uni-10x SFT files for a frame count."""
    return f"gdo_1x_{target_frames}f.jsonl", f"uni_10x_{target_frames}f.jsonl"


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`: moved into place when the block succeeds, removed when it
    fails (no partial file is left behind)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(data)


def _write_ndjson_atomic(
    frames: Iterable[Callable[[], pl.DataFrame]], path: Path, workers: int = 1
) -> None:
    """NDJSON rows of the frames (each made by its callable), one after the other, written to
    `path` atomically; workers: frames made and serialised at once, on as many threads, and
    written in order.

    polars serialises each frame straight into its own part file beside `path` (no Python buffer
    to grow and page-fault), which is then appended to the output in the kernel and removed.
    """
    parts = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".parts", dir=path.parent))
    try:
        with (
            _atomic(path) as tmp,
            open(tmp, "wb") as fh,
            ThreadPoolExecutor(max(1, workers)) as pool,
        ):
            pending: collections.deque[Future[Path]] = collections.deque()
            for i, frame in enumerate(frames):
                if len(pending) >= max(1, workers):
                    _append_file(pending.popleft().result(), fh)
                pending.append(pool.submit(_ndjson_part, frame, parts / f"{i}.jsonl"))
            while pending:
                _append_file(pending.popleft().result(), fh)
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _ndjson_part(frame: Callable[[], pl.DataFrame], part: Path) -> Path:
    """part, holding the NDJSON rows of the frame the callable makes."""
    frame().write_ndjson(part)
    return part


def _append_file(part: Path, fh: BinaryIO) -> None:
    """part's bytes appended to the open file fh (copied in the kernel where it can), then part removed."""
    fh.flush()
    with open(part, "rb") as src:
        size, copied = os.fstat(src.fileno()).st_size, 0
        with contextlib.suppress(AttributeError, OSError):  # no copy_file_range: copied below
            while copied < size and (
                n := os.copy_file_range(src.fileno(), fh.fileno(), size - copied)
            ):
                copied += n
        if copied < size:
            src.seek(copied)
            fh.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, fh)
    part.unlink()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def members_table(profile: str, result: SelectionResult) -> pl.DataFrame:
    """subset_members rows (profile, arm, qa_uid, rank, stage, score) of both arms."""
    score = result.scores["score"]
    uid = result.qa["qa_uid"]
    parts = []
    for arm, rows, stages in (
        (ARM_GDO, result.gdo.rows, result.gdo.stages),
        (ARM_UNI, result.uni_rows, ["uni_random"] * len(result.uni_rows)),
    ):
        idx = np.asarray(rows, dtype=np.int64)
        parts.append(
            pl.DataFrame(
                {
                    "profile": [profile] * idx.size,
                    "arm": [arm] * idx.size,
                    "qa_uid": uid.gather(idx) if idx.size else pl.Series([], dtype=pl.String),
                    "rank": np.arange(idx.size, dtype=np.int32),
                    "stage": list(stages),
                    "score": score.gather(idx) if idx.size else pl.Series([], dtype=pl.Float64),
                },
                schema=SUBSET_MEMBER_SCHEMA,
            )
        )
    return pl.concat(parts)


def frame_rows(selected: pl.DataFrame, row_frames: pl.DataFrame) -> pl.Series:
    """Per row of `selected` (source_file, line), the row of row_frames holding its frame list
    (null without one)."""
    # Joined on one integer per (source_file, line): a file's code (few files) and the line.
    files = row_frames["source_file"].unique().to_list()
    code = pl.col("source_file").replace_strict(
        {name: i for i, name in enumerate(files)}, default=-1, return_dtype=pl.Int64
    )
    key = (code * 2**40 + pl.col("line").cast(pl.Int64)).alias("key")
    found = selected.select(key).join(
        row_frames.select(key).with_row_index("frame_row"),
        on="key",
        how="left",
        maintain_order="left",
    )
    if found.height != selected.height:
        raise ValueError("row frames hold a (source_file, line) more than once")
    return found["frame_row"]


def slice_rows(rows: int) -> int:
    """Rows per output slice of a file of `rows` SFT rows (see OUTPUT_SLICES)."""
    least = min(MIN_OUTPUT_SLICE_ROWS, OUTPUT_SLICE_ROWS)
    return max(least, min(OUTPUT_SLICE_ROWS, -(-rows // OUTPUT_SLICES)))


def gather_chunked(column: pl.Series, rows: pl.Series) -> pl.Series:
    """`column.gather(rows)` (null rows give nulls), gathered chunk by chunk.

    A gather from a list column in several chunks costs time in proportion to the whole column
    (about 20 ms a call on a million frame lists), so each chunk is gathered on its own.
    """
    lengths = column.chunk_lengths()
    if len(lengths) <= 1:
        return column.gather(rows)
    valid = rows.is_not_null().to_numpy()
    idx = rows.drop_nulls().cast(pl.Int64).to_numpy()
    starts = np.cumsum([0, *lengths])
    chunk = np.searchsorted(starts, idx, side="right") - 1
    order = np.argsort(chunk, kind="stable")  # rows grouped by chunk, in their order within
    grouped, chunk_of = idx[order], chunk[order]
    parts = [column.slice(0, 0)]
    for c in np.unique(chunk).tolist():
        local = grouped[chunk_of == c] - starts[c]
        parts.append(column.slice(int(starts[c]), lengths[c]).gather(pl.Series(local)))
    taken = pl.concat([*parts, pl.Series([None], dtype=column.dtype)]).rechunk()
    at = np.full(rows.len(), idx.size, dtype=np.int64)  # the appended null
    at[np.flatnonzero(valid)[order]] = np.arange(idx.size)
    return taken.gather(pl.Series(at)).alias(column.name)


def _selected_rows(
    result: SelectionResult, rows: Sequence[int], row_frames: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series | None]:
    """(QA columns the SFT rows need, score terms, row of row_frames per row) of the selected rows
    in their order; the third is None when the QA table has its own frame lists."""
    idx = pl.Series(np.asarray(rows, dtype=np.int64))
    keys = ["source_file", "line"] if row_frames is not None else []
    columns = [c for c in result.qa.columns if c in SFT_QA_COLUMNS or c == "frames" or c in keys]
    selected = result.qa.select(columns)[idx]
    if row_frames is None:
        return selected, result.scores[idx], None
    return selected.drop(keys), result.scores[idx], frame_rows(selected, row_frames)


def build_from_pool(
    qa: pl.DataFrame,
    profile: GoalProfile | str | Path,
    out_dir: Path | str,
    *,
    metrics: MetricsTable | Path | str | None = None,
    compat: Compat | None = None,
    target_count: int | None = None,
    target_ratio: float | None = None,
    ablations: Ablations | None = None,
    exclude_reference: Sequence[Path | str] = (),
    exclude_mode: ExcludeMode = "both",
    seed: int | None = None,
    uni_count: int | None = None,
    target_frames: int | None = None,
    pool_info: dict[str, Any] | None = None,
    progress: bool = False,
    profiles_dir: Path | str | None = None,
    row_frames: pl.DataFrame | None = None,
    mcq_collapsed: bool = False,
    answer_distinct: Future | None = None,
    texts: StoredTexts | None = None,
) -> BuildResult:
    """Select and write both subsets from an already parsed QA table (QA_SCHEMA, scan order).

    row_frames: frame lists per (source_file, line) when `qa` has no `frames` column
    (`read_pool(row_frames=True)`); only the selected rows get theirs. mcq_collapsed: the table's
    MCQ test ran on the collapsed question (parsed with mcq_on_raw=False), as compat mode wants.
    answer_distinct: `select.answer_distinct_tokens(qa)` being computed on another thread.
    texts: question and answer of `qa`'s rows when `qa` has none (a cache hit that left them on
    disk; `qa` then has `schema.TEXT_CODE`): only the rows written out are read, unless an
    exclusion list or the MCQ test needs them all.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ablations = ablations or Ablations()
    prof = load_profile(profile, profiles_dir)
    if compat not in (None, "published"):
        raise BuildError(f"compat must be 'published' or None, got {compat!r}")
    if (
        target_count is not None
        and target_ratio is not None
        and target_count > 0
        and target_ratio > 0
    ):
        raise BuildError("give either a target count or a target ratio, not both")
    if target_ratio is not None and not 0 < target_ratio <= 1:
        raise BuildError(f"target ratio must be in (0, 1], got {target_ratio}")
    if target_count is not None and target_count < 0:
        raise BuildError(f"target count must be positive, got {target_count}")
    frames = target_frames or prof.target_frames
    mode = "published" if compat == "published" else "default"
    if isinstance(metrics, (str, Path)):
        metrics = load_metrics(metrics, strict=(mode == "default"))
    timings["metrics"] = time.perf_counter() - t0
    exclusion = (
        load_exclusion_reference(list(exclude_reference), exclude_mode)
        if exclude_reference
        else None
    )
    needs_texts = exclusion is not None or (mode == "published" and not mcq_collapsed)
    if texts is not None and "question" not in qa.columns and needs_texts:
        qa, texts = pl.concat([qa, texts.read()], how="horizontal"), None
    if mode == "published":
        qa = published_view(qa, mcq_collapsed=mcq_collapsed)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=7, desc=f"build {prof.name}", unit="step", dynamic_ncols=True, leave=False)

    def step(name: str) -> None:
        timings[name] = time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)

    result = select_subsets(
        qa,
        prof,
        metrics=metrics.for_selection(mode) if metrics is not None else None,
        options=SelectOptions(
            mode=mode,
            target_count=target_count,
            target_ratio=target_ratio,
            ablations=ablations,
            seed=seed,
            uni_count=uni_count,
        ),
        exclusion=exclusion,
        step=step,
        answer_distinct=answer_distinct,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gdo_name, uni_name = output_names(frames)
    texts_of = None
    if texts is not None and "question" not in result.qa.columns:
        texts_of = texts.take  # each arm's texts, read in its order on its writer thread
    members_path = out / "subset_members.parquet"
    members = members_table(prof.name, result)
    arm_rows = {
        "gdo": np.asarray(result.gdo.rows, dtype=np.int64),
        "uni": np.asarray(result.uni_rows, dtype=np.int64),
    }
    gdo_stages = result.gdo.stages
    # The arms' rows are gathered first, and the score terms of every row let go, before their
    # texts are read and the files written (the Uni-10x file is the long one: the GDO file and
    # the members table are written beside it).
    arms = {arm: _selected_rows(result, rows, row_frames) for arm, rows in arm_rows.items()}
    selection_report = result.report
    del result

    def slices(
        arm: str, stages: Sequence[str] | None, workers: int = 1
    ) -> Iterator[Callable[[], pl.DataFrame]]:
        # SFT rows built a slice at a time from the arm's rows gathered once (one gather per
        # column, as the QA table may be in many chunks): one slice's SFT rows, and frame lists
        # (the bulk of a row, gathered a slice at a time), are in memory at once (or, with
        # `workers` threads, as many slices of 1/workers the size).
        selected, scores, at = arms.pop(arm)
        if texts_of is not None:
            selected = pl.concat([selected, texts_of(arm_rows[arm])], how="horizontal")
        size = max(1, slice_rows(selected.height) // workers)  # as much in flight as one slice

        def part(i: int, n: int) -> pl.DataFrame:
            rows = selected.slice(i, n)
            if at is not None and row_frames is not None:
                rows = rows.with_columns(gather_chunked(row_frames["frames"], at.slice(i, n)))
            return sft_rows(
                rows,
                scores.slice(i, n),
                None,
                stages[i : i + n] if stages is not None else None,
                mode=mode,
            )

        for i in range(0, selected.height, size):
            yield functools.partial(part, i, min(size, selected.height - i))

    def write_uni() -> None:
        _write_ndjson_atomic(slices("uni", None, WRITE_WORKERS), out / uni_name, WRITE_WORKERS)

    def write_gdo_and_members() -> None:
        _write_ndjson_atomic(slices("gdo", gdo_stages), out / gdo_name)
        with _atomic(members_path) as tmp:
            members.write_parquet(tmp, statistics=True)

    with ThreadPoolExecutor(2) as writers:
        uni_done = writers.submit(write_uni)
        writers.submit(write_gdo_and_members).result()
        uni_done.result()
    report = {
        **selection_report,
        "target_frames": frames,
        "max_qa_per_video": prof.max_qa_per_video,
        "outputs": {"gdo_1x": gdo_name, "uni_10x": uni_name, "members": members_path.name},
        "pool": pool_info or {"qa_rows": qa.height},
    }
    if metrics is not None:
        report["metrics"] = {**metrics.info(), **report.get("metrics", {})}
    _write_atomic(out / "report.json", _json_bytes(report))
    profile_doc = {
        **prof.to_dict(),
        "target_frames_used": frames,
        "compat": compat,
        "ablations": ablations.active(),
    }
    _write_atomic(out / "profile.json", _json_bytes(profile_doc))
    step("write")
    if bar is not None:
        bar.close()
    timings["total"] = time.perf_counter() - t0
    return BuildResult(
        out_dir=out,
        gdo_path=out / gdo_name,
        uni_path=out / uni_name,
        report_path=out / "report.json",
        profile_path=out / "profile.json",
        members_path=members_path,
        report=report,
        members=members,
        timings=timings,
    )


def _cache_dir(cache: bool, cache_dir: Path | str | None) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def build_subsets(
    profile: GoalProfile | str | Path,
    onevision: Path | str | None,
    video: Path | str | None,
    out_dir: Path | str,
    *,
    metrics: Path | str | None = None,
    compat: Compat | None = None,
    target_count: int | None = None,
    target_ratio: float | None = None,
    target_frames: int | None = None,
    no_vds: bool = False,
    no_ppl: bool = False,
    no_sc: bool = False,
    no_vds3_budget: bool = False,
    exclude_reference: Sequence[Path | str] = (),
    exclude_mode: ExcludeMode = "both",
    seed: int | None = None,
    uni_count: int | None = None,
    progress: bool = True,
    profiles_dir: Path | str | None = None,
    media_root: Path | str | None = None,
    cache: bool = True,
    cache_dir: Path | str | None = None,
    low_memory: bool = False,
) -> BuildResult:
    """`gdo build`: parse the pool files, select GDO 1x and Uni-10x, write JSONL files, report and profile.

    cache: keep the parsed pool and the prepared metrics in cache_dir (default
    `pool_cache.default_cache_dir()`), so a later build on the same files skips parsing them
    (`BuildResult.parse_cache` says hit or miss, for the metrics under "metrics").
    low_memory: parse the pool files one at a time, in smaller blocks, writing their texts into the
    new cache entry as they are parsed: a lower peak (with `memory.prefer_low_memory`, as
    `gdo build --low-memory` runs), slower. The same files either way.

    Writes gdo_1x_<frames>f.jsonl, uni_10x_<frames>f.jsonl, report.json, profile.json and
    subset_members.parquet into out_dir. compat="published" reproduces the published build step.
    """
    if onevision is None and video is None:
        raise BuildError("give at least one pool file (--onevision and/or --video)")
    t0 = time.perf_counter()
    prof = load_profile(profile, profiles_dir)
    frames = target_frames or prof.target_frames
    if frames < 1:
        raise BuildError(f"target frames must be >= 1, got {frames}")
    # The metrics file loads (and its pool-free terms are prepared) on a side thread while the
    # pool is read, both through the cache; a newly parsed pool's answers
    # are tokenised there next (overlapping the selection, which waits for them at the score), then
    # the pool, with those counts and its text codes, is stored in the cache. A hit leaves the
    # texts on disk, and so does a low-memory miss (it writes them into the new entry, and counts
    # the answers, while parsing): only the rows written out are read back.
    side = ThreadPoolExecutor(1)
    mode: Mode = "published" if compat == "published" else "default"
    folder = _cache_dir(cache, cache_dir)

    pending = (
        side.submit(
            lambda: cached_metrics(metrics, strict=(compat is None), mode=mode, cache_dir=folder)
        )
        if metrics is not None
        else None
    )
    stores: list[Callable[..., None]] = []
    cached = None
    try:
        cached = cached_read_pool(
            Path(onevision) if onevision is not None else None,
            Path(video) if video is not None else None,
            cache_dir=folder,
            defer_store=stores.append,
            target_frames=frames,
            mcq_on_raw=(compat is None),
            media_root=Path(media_root) if media_root is not None else None,
            categorical=True,
            texts_on_disk=True,
            parse_to_disk=low_memory,
            file_threads=1 if low_memory else None,
            block_bytes=LOW_MEMORY_BLOCK_BYTES if low_memory else None,
        )
        qa, texts = cached.result.qa, cached.texts
        distinct = (  # (texts on disk: the table has the counts, stored or counted while parsed)
            side.submit(answer_distinct_tokens, qa) if ANSWER_DISTINCT not in qa.columns else None
        )

        def derived() -> dict[str, pl.Series]:
            """The columns a stored entry keeps besides the parsed ones."""
            columns = {}
            if TEXT_CODE not in qa.columns:
                columns[TEXT_CODE] = pl.Series(text_codes(qa), dtype=pl.Int64)
            if distinct is not None:
                columns[ANSWER_DISTINCT] = pl.Series(distinct.result(), dtype=pl.Int32)
            return columns

        stored = [side.submit(lambda write=write: write(derived())) for write in stores]
        metrics_table, metrics_status = pending.result() if pending is not None else (None, None)
        pool = cached.result
        read_s = time.perf_counter() - t0
        rejects = pool.rejects
        pool_info = {
            "onevision": str(onevision) if onevision is not None else None,
            "video": str(video) if video is not None else None,
            "qa_rows": pool.qa.height,
            "rejects": rejects.height,
            "rejects_per_reason": dict(rejects.group_by("reason").len().sort("reason").iter_rows())
            if rejects.height
            else {},
        }
        result = build_from_pool(
            pool.qa,
            prof,
            out_dir,
            metrics=metrics_table,
            compat=compat,
            target_count=target_count,
            target_ratio=target_ratio,
            ablations=Ablations(
                no_vds=no_vds, no_ppl=no_ppl, no_sc=no_sc, no_vds3_budget=no_vds3_budget
            ),
            exclude_reference=exclude_reference,
            exclude_mode=exclude_mode,
            seed=seed,
            uni_count=uni_count,
            target_frames=frames,
            pool_info=pool_info,
            progress=progress,
            profiles_dir=profiles_dir,
            row_frames=pool.frames,
            mcq_collapsed=(compat is not None),  # the pool was parsed with mcq_on_raw=(compat is None)
            answer_distinct=distinct,
            texts=texts,
        )
        for future in stored:
            future.result()
    finally:  # a failed build leaves no work queued; a running store finishes
        side.shutdown(wait=True, cancel_futures=True)
        if cached is not None:
            cached.close()
    result.parse_cache = {**cached.info(), "metrics": metrics_status}
    result.timings = {"read_pool": read_s, **{k: v + read_s for k, v in result.timings.items()}}
    return result


# ---- resampling SFT files -------------------------------------------------------------------


def resample_row(row: dict[str, Any], target_frames: int) -> dict[str, Any]:
    """One SFT row with `images` resampled to at most target_frames and its `<image>` tokens matched."""
    images = row.get("images")
    if not isinstance(images, list) or len(images) <= target_frames:
        return row
    old_n = len(images)
    new_images = [images[i] for i in resample_indices(old_n, target_frames)]
    row = dict(row)
    row["images"] = new_images
    messages = row.get("messages")
    if isinstance(messages, list):
        new_messages = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and content.startswith("<image>" * old_n):
                m = {
                    **m,
                    "content": "<image>" * len(new_images) + content[len("<image>") * old_n :],
                }
            new_messages.append(m)
        row["messages"] = new_messages
    dqm = row.get("data_quality_metrics")
    if isinstance(dqm, dict) and "n_frames" in dqm:
        row["data_quality_metrics"] = {**dqm, "n_frames": len(new_images)}
    return row


def resample_jsonl(input: Path | str, output: Path | str, target_frames: int) -> int:
    """`gdo resample`: rewrite an SFT JSONL file with every frame list resampled; returns rows written."""
    if target_frames < 1:
        raise BuildError(f"target frames must be >= 1, got {target_frames}")
    src, dst = Path(input), Path(output)
    if not src.is_file():
        raise BuildError(f"{src}: input file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    loads = orjson.loads if orjson is not None else json.loads
    count = 0
    opener = gzip.open if src.name.endswith(".gz") else open
    with _atomic(dst) as tmp, opener(src, "rb") as fin, open(tmp, "wb") as fout:
        for number, line in enumerate(fin, start=1):
            if not line.strip():
                continue
            try:
                row = loads(line)
            except ValueError as exc:
                raise BuildError(f"{src}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise BuildError(f"{src}:{number}: expected a JSON object")
            if "images" in row and not isinstance(row["images"], list):
                raise BuildError(f"{src}:{number}: key 'images' must be a list of frame paths")
            row = resample_row(row, target_frames)
            fout.write(
                orjson.dumps(row) + b"\n"
                if orjson is not None
                else (json.dumps(row, ensure_ascii=False) + "\n").encode()
            )
            count += 1
    return count
