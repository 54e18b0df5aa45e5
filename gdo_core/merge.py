"""Merge descriptor shards into DuckDB: robust stats, mini-batch k-means coverage, rho(x)
(docs/method.md, Merge and the shared score).

The shards are streamed in batches three times (robust stats, k-means fit, predict + score +
write), so memory stays bounded whatever the pool size. Missing values follow gdo_core.score:
a missing signal sits at its pool centre (median) in the feature vector too, a missing TNC is
0.5, missing text/vision features are zeros.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gdo_core import score
from gdo_core.merged_db import (  # noqa: F401
    DEFAULT_SEED,
    PLOT_BINS,
    PLOT_SAMPLE_ROWS,
    PLOT_SIGNALS,
    SCORE_COLUMNS,
    TABLE_DESCRIPTORS,
    TABLE_MERGE_REPORT,
    TABLE_QA,
    TABLE_REJECTS,
    _count,
    check_counts,
    plot_descriptor_distributions,
    read_stats,
)
from gdo_core.schema import (
    DESCRIPTOR_SCHEMA,
    MERGED_EXTRA_SCHEMA,
    QA_SCHEMA,
    REJECT_SCHEMA,
    ROBUST_SIGNALS,
    TEXT_FEATURE_DIM,
    VISION_FEATURE_DIM,
)
from gdo_core.sql import create_parquet_views, create_table_sql, sql_list

if TYPE_CHECKING:
    from sklearn.cluster import MiniBatchKMeans

# k = min(DEFAULT_MAX_CLUSTERS, rows) unless configured.
DEFAULT_MAX_CLUSTERS = 4096
KMEANS_BATCH_SIZE = 8192
# Small pools get several passes so k-means takes at least this many mini-batch steps.
KMEANS_MIN_STEPS = 100
KMEANS_MAX_PASSES = 20
# Above this many rows the robust stats come from a seeded sample of this size.
STATS_SAMPLE_ROWS = 800_000
# Rows per streamed batch for stats, prediction and writing.
READ_BATCH_ROWS = 65_536
# DuckDB buffer memory of the writer: beyond it DuckDB evicts written blocks (and spills),
# which keeps a merge's peak RSS flat in the pool size (~0.7 GiB measured at 1M rows).
WRITER_MEMORY_LIMIT = "256MB"

# The scalar signals appended to the text and vision features, in the published order.
FEATURE_SIGNALS: tuple[str, ...] = ("tnc_score", "amm", "frame_diversity", "ppl", "vds")
FEATURE_DIM = TEXT_FEATURE_DIM + VISION_FEATURE_DIM + len(FEATURE_SIGNALS)

DESCRIPTOR_TABLE_SCHEMA: dict[str, pl.DataType] = {**DESCRIPTOR_SCHEMA, **MERGED_EXTRA_SCHEMA}

# Columns of the one-row `merge_report` table; `stats` holds one struct per robust signal.
STAT_STRUCT = pl.Struct(
    {
        "signal": pl.String(),
        "center": pl.Float64(),
        "scale": pl.Float64(),
        "q1": pl.Float64(),
        "q3": pl.Float64(),
        "n": pl.Int64(),
    }
)
MERGE_REPORT_SCHEMA: dict[str, pl.DataType] = {
    "rows": pl.Int64(),
    "qa_rows": pl.Int64(),
    "reject_rows": pl.Int64(),
    "clusters": pl.Int32(),
    "clusters_requested": pl.Int32(),
    "seed": pl.Int64(),
    "stats_sampled": pl.Boolean(),
    "stats_rows": pl.Int64(),
    "kmeans_passes": pl.Int32(),
    "kmeans_steps": pl.Int32(),
    "error_rows": pl.Int64(),
    "qa_without_descriptor": pl.Int64(),
    "descriptor_without_qa": pl.Int64(),
    "stats": pl.List(STAT_STRUCT),
}


class MergeError(ValueError):
    """A merge input that cannot be merged (the message names the file and what was expected)."""


@dataclass
class MergeReport:
    """What a merge wrote: row counts, the robust stats used, k, and timings."""

    db_path: Path
    rows: int
    qa_rows: int
    reject_rows: int
    clusters: int
    clusters_requested: int
    seed: int
    stats: dict[str, score.RobustStat]
    stats_sampled: bool
    stats_rows: int
    kmeans_passes: int
    kmeans_steps: int
    error_rows: int
    qa_without_descriptor: int
    descriptor_without_qa: int
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def error_share(self) -> float:
        """Share of descriptor rows whose model pass failed."""
        return self.error_rows / self.rows if self.rows else 0.0

    def as_dict(self) -> dict:
        """The report as plain JSON-able values."""
        return {
            "db_path": str(self.db_path),
            "rows": self.rows,
            "qa_rows": self.qa_rows,
            "reject_rows": self.reject_rows,
            "clusters": self.clusters,
            "clusters_requested": self.clusters_requested,
            "seed": self.seed,
            "stats": {name: stat.as_dict() for name, stat in self.stats.items()},
            "stats_sampled": self.stats_sampled,
            "stats_rows": self.stats_rows,
            "kmeans_passes": self.kmeans_passes,
            "kmeans_steps": self.kmeans_steps,
            "error_rows": self.error_rows,
            "error_share": self.error_share,
            "qa_without_descriptor": self.qa_without_descriptor,
            "descriptor_without_qa": self.descriptor_without_qa,
            "timings_s": dict(self.timings_s),
        }


def _sorted_existing(paths: Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Paths sorted (so glob order never changes a merge), each checked to exist."""
    out = sorted({Path(p) for p in paths}, key=str)
    for path in out:
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
    return out


def _castable(actual: pl.DataType, expected: pl.DataType) -> bool:
    """Whether a file's column type can be read as the schema's type."""
    if actual == pl.Null():
        return True
    if expected.is_numeric():
        return actual.is_numeric()
    if isinstance(expected, (pl.Array, pl.List)):
        return isinstance(actual, (pl.Array, pl.List)) and _castable(actual.inner, expected.inner)
    if expected == pl.String():
        return actual in (pl.String(), pl.Categorical())
    return actual == expected


def _check_columns(paths: Sequence[Path], schema: Mapping[str, pl.DataType], what: str) -> None:
    """Fail naming the first file that lacks a column of `schema` or holds it with an unreadable type."""
    for path in paths:
        try:
            actual = pl.read_parquet_schema(path)
        except (pa.ArrowException, OSError, pl.exceptions.PolarsError) as exc:
            raise MergeError(f"{path}: not a readable Parquet {what} file ({exc})") from None
        missing = [name for name in schema if name not in actual]
        if missing:
            raise MergeError(
                f"{path}: {what} file lacks columns {missing} (expected the columns of gdo_core.schema)"
            )
        for name, dtype in schema.items():
            if not _castable(actual[name], dtype):
                raise MergeError(
                    f"{path}: {what} column {name!r} has type {actual[name]}, expected {dtype}"
                )


def row_count(paths: Sequence[Path]) -> int:
    """Total rows of Parquet files, from their footers."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def iter_batches(
    paths: Sequence[Path],
    columns: Sequence[str],
    batch_rows: int,
    schema: Mapping[str, pl.DataType] = DESCRIPTOR_SCHEMA,
) -> Iterator[pl.DataFrame]:
    """Stream `columns` of the files in order as frames of exactly `batch_rows` rows (the last may be short)."""
    target = {name: schema[name] for name in columns}
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    for path in paths:
        for record_batch in pq.ParquetFile(path).iter_batches(
            batch_size=batch_rows, columns=list(columns)
        ):
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            try:
                pending.append(frame.cast(target))  # type: ignore[arg-type]
            except pl.exceptions.PolarsError as exc:
                detail = str(exc).splitlines()[0]
                raise MergeError(f"{path}: values do not fit gdo_core.schema ({detail})") from None
            pending_rows += frame.height
            while pending_rows >= batch_rows:
                joined = pl.concat(pending, rechunk=True)
                yield joined.slice(0, batch_rows)
                rest = joined.slice(batch_rows)
                pending, pending_rows = ([rest] if rest.height else []), rest.height
    if pending_rows:
        yield pl.concat(pending, rechunk=True)


def _quartiles_sql(source: str) -> str:
    """One query giving q1, median, q3 and the count of valid values of every robust signal."""
    parts = []
    for signal in ROBUST_SIGNALS:
        valid = f"isfinite({signal})" + (
            f" AND {signal} >= 0" if signal in score.NONNEGATIVE_ONLY_SIGNALS else ""
        )
        parts.append(f"quantile_cont({signal}, [0.25, 0.5, 0.75]) FILTER (WHERE {valid})")
        parts.append(f"count({signal}) FILTER (WHERE {valid})")
    return f"SELECT {', '.join(parts)} FROM {source}"


def _stats_from_row(row: tuple) -> dict[str, score.RobustStat]:
    """Robust stats from the row of _quartiles_sql."""
    stats = {}
    for i, signal in enumerate(ROBUST_SIGNALS):
        quartiles, n = row[2 * i], int(row[2 * i + 1])
        q1, median, q3 = quartiles if quartiles is not None else (None, None, None)
        stats[signal] = score.robust_stat_from_quartiles(q1, median, q3, n)
    return stats


def compute_robust_stats(
    shard_paths: Sequence[Path], *, seed: int = DEFAULT_SEED, sample_rows: int = STATS_SAMPLE_ROWS
) -> tuple[dict[str, score.RobustStat], bool, int]:
    """Robust stats of every signal: exact over the pool, or over a seeded sample of `sample_rows` rows.

    Returns (stats, sampled, rows the stats were taken over). Quartiles are DuckDB's
    quantile_cont (linear interpolation) on both paths.
    """
    total = row_count(shard_paths)
    con = duckdb.connect()
    try:
        if total <= sample_rows:
            if total == 0:
                return _stats_from_row((None, 0) * len(ROBUST_SIGNALS)), False, 0
            source = f"read_parquet({sql_list(shard_paths)})"
            return _stats_from_row(con.execute(_quartiles_sql(source)).fetchall()[0]), False, total
        # Sample by row position (files sorted, rows in file order), so the sample is the same
        # in every process whatever the thread count.
        positions = np.sort(
            np.random.default_rng(seed).choice(total, size=sample_rows, replace=False)
        )
        picked: list[pl.DataFrame] = []
        offset = 0
        for batch in iter_batches(shard_paths, ROBUST_SIGNALS, READ_BATCH_ROWS):
            lo, hi = np.searchsorted(positions, [offset, offset + batch.height])
            if hi > lo:
                picked.append(batch[positions[lo:hi] - offset])
            offset += batch.height
        sample = pl.concat(picked).to_arrow()
        con.register("stats_sample", sample)
        return (
            _stats_from_row(con.execute(_quartiles_sql("stats_sample")).fetchall()[0]),
            True,
            sample_rows,
        )
    finally:
        con.close()


def feature_matrix(frame: pl.DataFrame, stats: Mapping[str, score.RobustStat]) -> np.ndarray:
    """The 27-d k-means features (float32): text_feature(16) + vision_feature(6) + [TNC, AMM, frame_div, PPL, VDS]."""
    text = np.nan_to_num(
        frame["text_feature"].to_numpy().astype(np.float64, copy=False),
        nan=0.0,
        posinf=0.0,
        neginf=0.0,
    )
    vision = np.nan_to_num(
        frame["vision_feature"].to_numpy().astype(np.float64, copy=False),
        nan=0.0,
        posinf=0.0,
        neginf=0.0,
    )
    signals = (
        frame.select(
            score.tnc_filled().alias("tnc_score"),
            *(score.filled_signal(name, stats[name]).alias(name) for name in FEATURE_SIGNALS[1:]),
        )
        .to_numpy()
        .astype(np.float64, copy=False)
    )
    # Single precision: k-means' distance products run about twice as fast as in double, and the
    # inputs (text and vision features) are float32 already.
    return np.ascontiguousarray(
        np.hstack(
            [
                text.reshape(len(frame), TEXT_FEATURE_DIM),
                vision.reshape(len(frame), VISION_FEATURE_DIM),
                signals,
            ]
        ),
        dtype=np.float32,
    )


FEATURE_INPUT_COLUMNS: tuple[str, ...] = ("text_feature", "vision_feature", *FEATURE_SIGNALS)


def kmeans_schedule(rows: int, batch_size: int) -> tuple[int, int]:
    """(passes over the pool, mini-batch steps per pass) for a k-means fit."""
    steps_per_pass = max(1, math.ceil(rows / batch_size))
    passes = min(KMEANS_MAX_PASSES, max(1, math.ceil(KMEANS_MIN_STEPS / steps_per_pass)))
    return passes, steps_per_pass


def fit_kmeans(
    shard_paths: Sequence[Path],
    stats: Mapping[str, score.RobustStat],
    clusters: int,
    *,
    seed: int = DEFAULT_SEED,
    batch_size: int = KMEANS_BATCH_SIZE,
) -> tuple[MiniBatchKMeans, int, int]:
    """Mini-batch k-means by partial_fit over the streamed shards (seeded, fixed batch order).

    Returns (model, passes, steps). The first batch seeds k-means++, so a batch holds at least
    `clusters` rows.
    """
    # Imported here, so that loading the Dagster definitions does not pay for sklearn.
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    rows = row_count(shard_paths)
    batch_rows = max(batch_size, clusters)
    passes, _ = kmeans_schedule(rows, batch_rows)
    model: MiniBatchKMeans | None = None
    steps = 0
    with warnings.catch_warnings():
        # Duplicate feature rows can leave fewer distinct centres than k; that is not an error here.
        warnings.filterwarnings("ignore", message=".*[Nn]umber of distinct clusters.*")
        for _ in range(passes):
            for batch in iter_batches(shard_paths, FEATURE_INPUT_COLUMNS, batch_rows):
                features = feature_matrix(batch, stats)
                if model is None:
                    # k-means++ seeds on the first batch in double precision: sklearn computes a
                    # float32 batch's seeding distances in chunks upcast to float64, twice as slow.
                    centres, _ = kmeans_plusplus(
                        features.astype(np.float64), clusters, random_state=seed
                    )
                    model = MiniBatchKMeans(
                        n_clusters=clusters,
                        init=centres.astype(np.float32),
                        batch_size=batch_rows,
                        random_state=seed,
                        n_init=1,
                        compute_labels=False,
                    )
                model.partial_fit(features)
                steps += 1
    assert model is not None  # rows >= clusters >= 1: there was a batch
    return model, passes, steps


def assign_clusters(model: MiniBatchKMeans, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised cluster_id and Euclidean distance to the assigned centre for a batch of rows."""
    labels = model.predict(features)
    dist = np.sqrt(np.square(features - model.cluster_centers_[labels]).sum(axis=1))
    return labels.astype(np.int32), dist.astype(np.float64)


def score_batch(
    frame: pl.DataFrame, model: MiniBatchKMeans | None, stats: Mapping[str, score.RobustStat]
) -> pl.DataFrame:
    """A descriptor batch with the merged columns added, in DESCRIPTOR_TABLE_SCHEMA order."""
    if model is None:
        labels, dist = np.zeros(frame.height, np.int32), np.zeros(frame.height)
    else:
        labels, dist = assign_clusters(model, feature_matrix(frame, stats))
    rep = score.cluster_rep(dist)
    clustered = frame.with_columns(
        cluster_id=pl.Series(labels, dtype=pl.Int32),
        cluster_dist=pl.Series(dist, dtype=pl.Float64),
        cluster_rep=pl.Series(rep, dtype=pl.Float64),
        cluster_hard=pl.Series(1.0 - rep, dtype=pl.Float64),
    )
    return score.add_scores(clustered, stats).select(
        [pl.col(name).cast(dtype) for name, dtype in DESCRIPTOR_TABLE_SCHEMA.items()]
    )


DESCRIPTOR_TABLE_ARROW_SCHEMA = pl.DataFrame(schema=DESCRIPTOR_TABLE_SCHEMA).to_arrow().schema


def scored_stream(
    shard_paths: Sequence[Path],
    model: MiniBatchKMeans | None,
    stats: Mapping[str, score.RobustStat],
) -> pa.RecordBatchReader:
    """The scored descriptor rows of every shard as a lazy Arrow stream (one batch in memory at a time)."""

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in iter_batches(shard_paths, list(DESCRIPTOR_SCHEMA), READ_BATCH_ROWS):
            yield from (
                score_batch(batch, model, stats)
                .to_arrow()
                .cast(DESCRIPTOR_TABLE_ARROW_SCHEMA)
                .to_batches()
            )

    return pa.RecordBatchReader.from_batches(DESCRIPTOR_TABLE_ARROW_SCHEMA, batches())


def _duplicate_uid_error(
    con: duckdb.DuckDBPyConnection, table: str, paths: Sequence[Path]
) -> MergeError | None:
    """An error naming a duplicated qa_uid and the files that hold it, or None."""
    dup = con.execute(
        f"SELECT qa_uid FROM {table} GROUP BY qa_uid HAVING count(*) > 1 ORDER BY qa_uid LIMIT 1"
    ).fetchall()
    if not dup:
        return None
    uid = dup[0][0]
    files = con.execute(
        f"SELECT DISTINCT filename FROM read_parquet({sql_list(paths)}, filename = true) WHERE qa_uid = ? ORDER BY 1",
        [uid],
    ).fetchall()
    return MergeError(
        f"qa_uid {uid!r} occurs more than once in the {table} inputs: {', '.join(f[0] for f in files)}"
    )


def _insert_parquet(
    con: duckdb.DuckDBPyConnection,
    table: str,
    schema: Mapping[str, pl.DataType],
    paths: Sequence[Path],
) -> None:
    """Append Parquet files to a table, column by column in schema order (file order kept)."""
    if not paths:
        return
    columns = ", ".join(f'"{name}"' for name in schema)
    con.execute(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM read_parquet({sql_list(paths)}, union_by_name = true)"
    )


def temp_db_path(db_path: Path) -> Path:
    """The temporary file a merge writes before renaming it over `db_path` (same folder, so the rename is atomic)."""
    return db_path.with_name(f".{db_path.name}.{os.getpid()}.tmp")


def merge_to_duckdb(
    shard_paths: Sequence[str | os.PathLike],
    qa_paths: Sequence[str | os.PathLike],
    rejects_paths: Sequence[str | os.PathLike],
    db_path: str | os.PathLike,
    *,
    clusters: int | None = None,
    seed: int = DEFAULT_SEED,
    views: Mapping[str, Sequence[str | os.PathLike] | str] | None = None,
) -> MergeReport:
    """Merge shards into `db_path`: tables qa, descriptors, rejects, merge_report, written in one transaction.

    The database is built in a temporary file and renamed over `db_path`, so a reader opening
    it read-only during a merge sees the previous complete database and never blocks the
    writer. `views` (name -> Parquet files or glob) become persistent views in the same file.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if clusters is not None and clusters < 1:
        raise MergeError(f"clusters must be at least 1, got {clusters}")
    shards = _sorted_existing(shard_paths, "descriptor shard")
    qa_files = _sorted_existing(qa_paths, "qa")
    reject_files = _sorted_existing(rejects_paths, "rejects")
    _check_columns(shards, DESCRIPTOR_SCHEMA, "descriptor shard")
    _check_columns(qa_files, QA_SCHEMA, "qa")
    _check_columns(reject_files, REJECT_SCHEMA, "rejects")

    rows = row_count(shards)
    stats, sampled, stats_rows = compute_robust_stats(shards, seed=seed)
    timings["stats"] = time.perf_counter() - started

    requested = clusters if clusters is not None else DEFAULT_MAX_CLUSTERS
    k = min(requested, rows)
    model, passes, steps = fit_kmeans(shards, stats, k, seed=seed) if k else (None, 0, 0)
    timings["kmeans_fit"] = time.perf_counter() - started - sum(timings.values())

    target = Path(db_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_db_path(target)
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp), config={"memory_limit": WRITER_MEMORY_LIMIT})
    try:
        con.execute("BEGIN TRANSACTION")
        for table, schema in (
            (TABLE_QA, QA_SCHEMA),
            (TABLE_DESCRIPTORS, DESCRIPTOR_TABLE_SCHEMA),
            (TABLE_REJECTS, REJECT_SCHEMA),
            (TABLE_MERGE_REPORT, MERGE_REPORT_SCHEMA),
        ):
            con.execute(create_table_sql(table, schema))
        _insert_parquet(con, TABLE_QA, QA_SCHEMA, qa_files)
        _insert_parquet(con, TABLE_REJECTS, REJECT_SCHEMA, reject_files)
        # One INSERT over a lazy Arrow stream: DuckDB writes full row groups to disk as they
        # come, while one INSERT per batch would hold every uncommitted row in memory.
        con.register("scored_descriptors", scored_stream(shards, model, stats))
        con.execute(f"INSERT INTO {TABLE_DESCRIPTORS} SELECT * FROM scored_descriptors")
        con.unregister("scored_descriptors")
        timings["predict_write"] = time.perf_counter() - started - sum(timings.values())

        for table, paths in ((TABLE_DESCRIPTORS, shards), (TABLE_QA, qa_files)):
            error = _duplicate_uid_error(con, table, paths)
            if error is not None:
                raise error
        qa_rows = _count(con, f"SELECT count(*) FROM {TABLE_QA}")
        reject_rows = _count(con, f"SELECT count(*) FROM {TABLE_REJECTS}")
        error_rows = _count(
            con, f"SELECT count(*) FROM {TABLE_DESCRIPTORS} WHERE error IS NOT NULL"
        )
        qa_without = _count(
            con, f"SELECT count(*) FROM {TABLE_QA} q ANTI JOIN {TABLE_DESCRIPTORS} d USING (qa_uid)"
        )
        desc_without = _count(
            con, f"SELECT count(*) FROM {TABLE_DESCRIPTORS} d ANTI JOIN {TABLE_QA} q USING (qa_uid)"
        )
        report = MergeReport(
            db_path=target,
            rows=rows,
            qa_rows=qa_rows,
            reject_rows=reject_rows,
            clusters=k,
            clusters_requested=requested,
            seed=seed,
            stats=stats,
            stats_sampled=sampled,
            stats_rows=stats_rows,
            kmeans_passes=passes,
            kmeans_steps=steps,
            error_rows=error_rows,
            qa_without_descriptor=qa_without,
            descriptor_without_qa=desc_without,
            timings_s=timings,
        )
        con.register("merge_report_row", _report_frame(report).to_arrow())
        con.execute(f"INSERT INTO {TABLE_MERGE_REPORT} SELECT * FROM merge_report_row")
        con.unregister("merge_report_row")
        if views:
            create_parquet_views(con, views)
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        con.close()
        os.replace(tmp, target)
    except BaseException:
        con.close()
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
        raise
    timings["total"] = time.perf_counter() - started
    return report


def _report_frame(report: MergeReport) -> pl.DataFrame:
    """The one-row merge_report table (no timings, so reruns give identical tables)."""
    stats = [{"signal": name, **stat.as_dict()} for name, stat in report.stats.items()]
    return pl.DataFrame(
        [
            {
                "rows": report.rows,
                "qa_rows": report.qa_rows,
                "reject_rows": report.reject_rows,
                "clusters": report.clusters,
                "clusters_requested": report.clusters_requested,
                "seed": report.seed,
                "stats_sampled": report.stats_sampled,
                "stats_rows": report.stats_rows,
                "kmeans_passes": report.kmeans_passes,
                "kmeans_steps": report.kmeans_steps,
                "error_rows": report.error_rows,
                "qa_without_descriptor": report.qa_without_descriptor,
                "descriptor_without_qa": report.descriptor_without_qa,
                "stats": stats,
            }
        ],
        schema=MERGE_REPORT_SCHEMA,
    )
