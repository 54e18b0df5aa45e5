"""The metric terms of the candidate score and budget: vds3' and q' per QA from the metrics rows
(docs/method.md, Budget and Candidate score).

`prepare_metrics` does the part that needs the metrics rows alone (one row per qa_uid, z-stats,
z-terms), once per metrics file; `_metric_match` then finds each pool QA's metrics row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from gdo_core.candidate_score import metric_columns, metric_stats_of, metric_z_terms_of
from gdo_core.modes import Mode


def _has_duplicates(values: pl.Series) -> bool:
    """Whether a column repeats a value (distinct 64-bit hashes settle it without the strings)."""
    if values.hash(seed=0).n_unique() == values.len():
        return False
    return values.n_unique() < values.len()


@dataclass
class PreparedMetrics:
    """What the metric terms need from the metrics rows alone (no pool): one row per qa_uid (the
    last wins, as in a dict keyed by qa_uid), the z-stats over every row and the z-terms per row.

    `prepare_metrics` builds it; `gdo build` does so on a side thread while the pool is parsed.
    """

    mode: Mode
    rows: int
    uids: pl.DataFrame  # qa_uid of the unique rows, in their order
    stats: dict[str, tuple[float, float]]
    vds3: np.ndarray  # per unique row
    quality: np.ndarray  # per unique row


def prepare_metrics(metrics: pl.DataFrame, mode: Mode) -> PreparedMetrics:
    """`PreparedMetrics` of metrics rows (file order; duplicates count in the stats)."""
    columns = metric_columns(metrics)
    uids = metrics.select("qa_uid")
    # The last row of each qa_uid, in the order of those rows.
    if _has_duplicates(metrics["qa_uid"]):
        kept = (
            uids.with_row_index("row")
            .unique(subset="qa_uid", keep="last", maintain_order=True)["row"]
            .to_numpy()
        )
        uids = uids[kept]
        columns_kept = {col: values[kept] for col, values in columns.items()}
    else:
        columns_kept = columns
    stats = metric_stats_of(columns, running=(mode == "published"))
    vds3, quality = metric_z_terms_of(columns_kept, uids.height, stats)
    return PreparedMetrics(mode, metrics.height, uids, stats, vds3, quality)


def _metric_match(qa: pl.DataFrame, prepared: PreparedMetrics) -> np.ndarray:
    """Per QA row: its row among the unique metrics rows, -1 without one."""
    uids, metric_uids = qa["qa_uid"], prepared.uids["qa_uid"]
    if (
        uids.len() == metric_uids.len()
        and uids.null_count() == 0
        and uids.equals(metric_uids, check_names=False)
    ):  # metrics in the pool's order, one row per QA: no join (at 1M QAs ~0.4 s and ~170 MB less)
        return np.arange(qa.height, dtype=np.int64)
    # An unordered inner join (parallel) scattered back by QA row: at most one match per row. It
    # joins the uids' 64-bit hashes (at 230k QAs ~30 MB less than joining the strings), then
    # checks each matched pair's strings; a hash shared by different uids joins the strings.
    keys = [u.cast(pl.String).hash(seed=0).to_frame("key") for u in (uids, metric_uids)]
    pairs = (
        keys[0]
        .with_row_index("qa_row")
        .join(keys[1].with_row_index("match"), on="key", how="inner")
        .drop("key")
    )
    del keys
    if not _same_strings(uids, metric_uids, pairs):
        pairs = (
            qa.select("qa_uid")
            .with_row_index("qa_row")
            .join(prepared.uids.with_row_index("match"), on="qa_uid", how="inner")
        )
    match = np.full(qa.height, -1, dtype=np.int64)
    match[pairs["qa_row"].to_numpy()] = pairs["match"].to_numpy()
    return match


def _same_strings(
    left: pl.Series, right: pl.Series, pairs: pl.DataFrame, chunk: int = 2**16
) -> bool:
    """Whether every (qa_row, match) pair holds equal non-null strings, each qa_row once (compared
    `chunk` pairs at a time)."""
    if pairs["qa_row"].n_unique() != pairs.height:
        return False
    for start in range(0, pairs.height, chunk):
        part = pairs.slice(start, chunk)
        a, b = left.gather(part["qa_row"]), right.gather(part["match"])
        if a.null_count() or b.null_count() or not a.equals(b, check_names=False):
            return False
    return True


def _metric_terms(
    prepared: PreparedMetrics | None, match: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(vds3', q', has_metrics per QA row; vds3' per unique metrics row; stats) from the metrics rows."""
    if prepared is None or match is None:
        zeros = np.zeros(n)
        return zeros, zeros.copy(), np.zeros(n, dtype=bool), np.zeros(0), {}
    has = match >= 0
    at = np.where(has, match, 0)
    vds3 = np.where(has, prepared.vds3[at], 0.0)
    quality = np.where(has, prepared.quality[at], 0.0)
    info = {
        "metric_rows": prepared.rows,
        "metric_unique_qa": prepared.uids.height,
        "coverage_ratio": float(has.mean()) if n else 0.0,
        "z_stats": {k: {"mean": m, "std": s} for k, (m, s) in prepared.stats.items()},
    }
    return vds3, quality, has, prepared.vds3, info


def _metric_terms_for_pool(
    qa: pl.DataFrame, metrics: pl.DataFrame | PreparedMetrics | None, mode: Mode
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(vds3', q', has_metrics per QA row; vds3' per unique metrics row; stats) from the metrics rows."""
    prepared = _prepared(metrics, mode)
    match = _metric_match(qa, prepared) if prepared is not None else None
    return _metric_terms(prepared, match, qa.height)


def _prepared(metrics: pl.DataFrame | PreparedMetrics | None, mode: Mode) -> PreparedMetrics | None:
    """Prepared metrics (None without rows); prepared ones must be for this mode's stats."""
    if isinstance(metrics, PreparedMetrics):
        if metrics.mode != mode:
            raise ValueError(f"metrics were prepared for {metrics.mode} mode, not {mode}")
        return metrics if metrics.rows else None
    if metrics is None or metrics.height == 0:
        return None
    return prepare_metrics(metrics, mode)
