"""Reading a merged database back (docs/method.md, Merge and the shared score): its table names,
the counts the quality checks need, the descriptor distribution plot and the robust stats it was
scored with. Plain reads (read-only connections); gdo_core.merge writes the database.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from gdo_core import score

# Seed of k-means, of the robust-stats sample and of the plot sample.
DEFAULT_SEED = 42

TABLE_QA = "qa"
TABLE_DESCRIPTORS = "descriptors"
TABLE_REJECTS = "rejects"
TABLE_MERGE_REPORT = "merge_report"


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


# Columns that enter rho(x) or are derived for it: none may be null, NaN or infinite.
SCORE_COLUMNS: tuple[str, ...] = (
    "sc_filled",
    "vds3",
    "ppl_mid",
    "amm_mid",
    "cluster_dist",
    "cluster_rep",
    "cluster_hard",
    "quality",
)


def check_counts(db_path: str | os.PathLike) -> dict[str, int]:
    """Counts the quality checks need, read from a merged database (read-only)."""
    nonfinite = " OR ".join(f"{c} IS NULL OR NOT isfinite({c})" for c in SCORE_COLUMNS)
    queries = {
        "rows": f"SELECT count(*) FROM {TABLE_DESCRIPTORS}",
        "qa_rows": f"SELECT count(*) FROM {TABLE_QA}",
        "qa_without_descriptor": f"SELECT count(*) FROM {TABLE_QA} ANTI JOIN {TABLE_DESCRIPTORS} USING (qa_uid)",
        "nonfinite_score_rows": f"SELECT count(*) FROM {TABLE_DESCRIPTORS} WHERE {nonfinite}",
        "error_rows": f"SELECT count(*) FROM {TABLE_DESCRIPTORS} WHERE error IS NOT NULL",
        "distinct_clusters": f"SELECT count(DISTINCT cluster_id) FROM {TABLE_DESCRIPTORS}",
        "max_cluster_id": f"SELECT coalesce(max(cluster_id), -1) FROM {TABLE_DESCRIPTORS}",
        "clusters": f"SELECT clusters FROM {TABLE_MERGE_REPORT}",
        "clusters_requested": f"SELECT clusters_requested FROM {TABLE_MERGE_REPORT}",
    }
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return {name: _count(con, query) for name, query in queries.items()}
    finally:
        con.close()


# Descriptors drawn in the distribution plot (PPL on a log axis), from a sample of the pool.
PLOT_SIGNALS: tuple[str, ...] = (
    "vds",
    "ppl",
    "amm",
    "frame_diversity",
    "sc_filled",
    "tnc_score",
    "quality",
)
PLOT_SAMPLE_ROWS = 200_000
PLOT_BINS = 40


def plot_descriptor_distributions(db_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """A PNG with one histogram per descriptor, one series per bucket (a seeded sample of QAs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = ", ".join(f"d.{c}" for c in PLOT_SIGNALS)
    query = (
        f"SELECT * FROM (SELECT coalesce(q.bucket, 'no qa row') AS bucket, {columns} "
        f"FROM {TABLE_DESCRIPTORS} d LEFT JOIN {TABLE_QA} q USING (qa_uid)) "
        f"USING SAMPLE reservoir({PLOT_SAMPLE_ROWS} ROWS) REPEATABLE ({DEFAULT_SEED})"
    )
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        frame = con.sql(query).pl()
    finally:
        con.close()
    figure = Figure(figsize=(4 * len(PLOT_SIGNALS) / 2, 6.5), layout="constrained")
    axes = figure.subplots(2, math.ceil(len(PLOT_SIGNALS) / 2)).ravel()
    for ax, signal in zip(axes, PLOT_SIGNALS):
        for bucket in sorted(frame["bucket"].unique().to_list()):
            values = (
                frame.filter(pl.col("bucket") == bucket)[signal].drop_nulls().drop_nans().to_numpy()
            )
            if signal == "ppl":
                values = np.log10(values[values > 0])
            if values.size:
                ax.hist(values, bins=PLOT_BINS, alpha=0.55, label=bucket, density=True)
        ax.set_title("log10 ppl" if signal == "ppl" else signal)
        ax.tick_params(labelsize=7)
    for ax in axes[len(PLOT_SIGNALS) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    figure.suptitle(f"descriptor distributions by bucket ({frame.height} QAs)")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    FigureCanvasAgg(figure).print_png(str(tmp))
    os.replace(tmp, out)
    return out


def read_stats(db_path: str | os.PathLike) -> dict[str, score.RobustStat]:
    """The robust stats a merged database was scored with (read-only)."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        (stats,) = con.execute(f"SELECT stats FROM {TABLE_MERGE_REPORT}").fetchall()[0]
    finally:
        con.close()
    return {
        s["signal"]: score.RobustStat(s["center"], s["scale"], s["q1"], s["q3"], s["n"])
        for s in stats
    }
