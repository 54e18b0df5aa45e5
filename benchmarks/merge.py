"""Merge benchmark: a synthetic 1-million-row shard set merged into DuckDB; wall time, peak RSS, predict speed.

Usage: python benchmarks/merge.py [--rows 1000000] [--shards 20] [--runs 2] [--clusters 4096]

Each merge runs in a fresh subprocess that reports its own peak RSS (ru_maxrss), so runs do
not inherit each other's memory. The predict comparison fits the same k-means once in this
process, then times batched assign_clusters on every row and the published style (one
`predict` call per row, plus that row's distance) on a seeded sample of rows; the one-row
total for the pool is the sample's per-row time times the row count (stated as extrapolated).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from gdo_core import merge
from gdo_core.schema import DESCRIPTOR_SCHEMA, QA_SCHEMA, REJECT_SCHEMA, STRATUM_FIELDS

DEFAULT_ROWS = 1_000_000
DEFAULT_SHARDS = 20
DEFAULT_RUNS = 2
ROWWISE_SAMPLE = 2_000
VIDEO_FRAMES = 8
ERROR_SHARE = 0.02
SEED = 42


def descriptor_shard(start: int, rows: int, rng: np.random.Generator) -> pl.DataFrame:
    """Synthetic descriptor rows with realistic ranges (losses ~1, PPL = exp(loss), half without SC)."""
    failed = rng.random(rows) < ERROR_SHARE
    loss_video = rng.normal(1.0, 0.35, rows)
    loss_blind = loss_video + rng.normal(0.15, 0.25, rows)
    frame = pl.DataFrame(
        {
            "amm": rng.gamma(2.0, 0.8, rows),
            "frame_diversity": rng.beta(2.0, 12.0, rows),
            "loss_video": np.where(failed, np.nan, loss_video),
            "loss_blind": np.where(failed, np.nan, loss_blind),
            "vds": np.where(failed, np.nan, loss_blind - loss_video),
            "ppl": np.where(failed, np.nan, np.exp(np.clip(loss_video, -30, 30))),
            "tnc_score": rng.choice(np.array([0.0, 0.5, 1.0]), rows, p=[0.5, 0.1, 0.4]),
            "sc": np.where(rng.random(rows) < 0.5, -1.0, rng.random(rows)),
            "text_feature": rng.random((rows, 16), dtype=np.float32),
            "vision_feature": rng.random((rows, 6), dtype=np.float32),
            "failed": failed,
        }
    )
    index = pl.int_range(start, start + rows, eager=True)
    return (
        frame.with_columns(
            [pl.col(c).fill_nan(None) for c in ("loss_video", "loss_blind", "vds", "ppl")],
            qa_uid=pl.format("vv::row{}::t0", index),
            n_frames=pl.lit(VIDEO_FRAMES),
            question_len=pl.Series(rng.integers(3, 40, rows)),
            answer_len=pl.Series(rng.integers(1, 60, rows)),
            frames_unreadable=pl.lit(0),
            error=pl.when(pl.col("failed")).then(pl.lit("model pass failed: synthetic")),
            cache_key=pl.format("key{}", index),
        )
        .select(list(DESCRIPTOR_SCHEMA))
        .cast(DESCRIPTOR_SCHEMA)  # type: ignore[arg-type]
    )


def qa_shard(start: int, rows: int) -> pl.DataFrame:
    """Synthetic ingested QA rows matching the descriptor shard's qa_uids."""
    index = pl.int_range(start, start + rows, eager=True)
    group = pl.format("group_{}", index % 24)
    temporal = pl.when(index % 3 == 0).then(pl.lit("Temporal")).otherwise(pl.lit("Mixed"))
    frame = pl.DataFrame({"i": index}).with_columns(
        qa_uid=pl.format("vv::row{}::t0", pl.col("i")),
        row_id=pl.format("row{}", pl.col("i")),
        video_uid=pl.format("video{}", pl.col("i") // 4),
        turn=pl.col("i") % 4,
        question=pl.format("What happens after event {} in the clip?", pl.col("i")),
        answer=pl.format("The person picks up object {}.", pl.col("i")),
        frames=pl.concat_list(
            [
                pl.format("frames/{}/{}.jpg", pl.col("i") // 4, pl.lit(j))
                for j in range(VIDEO_FRAMES)
            ]
        ),
        n_frames=pl.lit(VIDEO_FRAMES),
        data_source=pl.format("{}_source (v1)", group),
        source_group=group,
        bucket=pl.lit("short_video"),
        duration_bucket=pl.lit("very_short"),
        temporal_category=temporal,
        question_form=pl.lit("Open"),
        q_len_bucket=pl.lit("q_short"),
        a_len_bucket=pl.lit("a_short"),
        question_len=pl.lit(8),
        answer_len=pl.lit(6),
        source_file=pl.lit("video.jsonl"),
        line=pl.col("i") // 4 + 1,
    )
    stratum = pl.concat_str(
        list(STRATUM_FIELDS),
        separator="|",
    )
    return frame.with_columns(stratum=stratum).select(list(QA_SCHEMA)).cast(QA_SCHEMA)  # type: ignore[arg-type]


def write_shard_set(root: Path, rows: int, shards: int) -> dict[str, list[Path]]:
    """Write `shards` descriptor and qa files holding `rows` rows in all, plus a rejects file."""
    rng = np.random.default_rng(SEED)
    (root / "descriptors").mkdir(parents=True, exist_ok=True)
    (root / "qa").mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"shards": [], "qa": [], "rejects": [root / "rejects.parquet"]}
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        shard, qa = (
            root / "descriptors" / f"chunk-{i:04d}.parquet",
            root / "qa" / f"chunk-{i:04d}.parquet",
        )
        descriptor_shard(int(lo), int(hi - lo), rng).write_parquet(shard)
        qa_shard(int(lo), int(hi - lo)).write_parquet(qa)
        out["shards"].append(shard)
        out["qa"].append(qa)
    pl.DataFrame(
        {
            "source_file": ["video.jsonl"],
            "line": [1],
            "qa_uid": [None],
            "reason": ["bad_json"],
            "detail": ["x"],
        },
        schema=REJECT_SCHEMA,
    ).write_parquet(out["rejects"][0])
    return out


MERGE_CHILD = """
import json, resource, sys, time
from pathlib import Path
from gdo_core.merge import merge_to_duckdb
root, db, clusters = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
report = merge_to_duckdb(sorted((root / "descriptors").glob("*.parquet")), sorted((root / "qa").glob("*.parquet")),
                         [root / "rejects.parquet"], db, clusters=clusters)
wall = time.perf_counter() - started
print(json.dumps({"wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "timings_s": report.timings_s, "rows": report.rows, "clusters": report.clusters,
                  "stats_sampled": report.stats_sampled, "stats_rows": report.stats_rows,
                  "kmeans_steps": report.kmeans_steps}))
"""


def run_merge(root: Path, db: Path, clusters: int) -> dict:
    """One merge in a fresh interpreter; its own wall time and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", MERGE_CHILD, str(root), str(db), str(clusters)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"merge failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def predict_speed(pool: dict[str, list[Path]], clusters: int, sample: int) -> dict:
    """Batched assign_clusters over every row vs one predict call per row on a seeded sample."""
    stats, _, _ = merge.compute_robust_stats(pool["shards"])
    model, _, _ = merge.fit_kmeans(pool["shards"], stats, clusters)
    batched_s, rows = 0.0, 0
    picked: list[np.ndarray] = []
    rng = np.random.default_rng(SEED)
    # Keep each row with a probability a bit above sample/total, then cut to `sample` rows.
    keep = min(1.0, 1.5 * sample / max(1, merge.row_count(pool["shards"])))
    for batch in merge.iter_batches(
        pool["shards"], merge.FEATURE_INPUT_COLUMNS, merge.READ_BATCH_ROWS
    ):
        features = merge.feature_matrix(batch, stats)
        started = time.perf_counter()
        merge.assign_clusters(model, features)
        batched_s += time.perf_counter() - started
        rows += len(features)
        picked.append(features[rng.random(len(features)) < keep])
    sample_features = np.concatenate(picked)[:sample]
    started = time.perf_counter()
    batched_labels, batched_dist = merge.assign_clusters(model, sample_features)
    batched_sample_s = time.perf_counter() - started
    started = time.perf_counter()
    labels = np.empty(len(sample_features), np.int64)
    dists = np.empty(len(sample_features))
    for i, row in enumerate(sample_features):  # the published loop: one predict per row
        labels[i] = model.predict(row[None, :])[0]
        dists[i] = float(np.linalg.norm(row - model.cluster_centers_[labels[i]]))
    rowwise_s = time.perf_counter() - started
    assert (labels == batched_labels).all() and np.allclose(dists, batched_dist)
    per_row = rowwise_s / len(sample_features)
    return {
        "rows": rows,
        "batched_all_rows_s": batched_s,
        "sample_rows": len(sample_features),
        "batched_sample_s": batched_sample_s,
        "rowwise_sample_s": rowwise_s,
        "rowwise_per_row_ms": per_row * 1e3,
        "rowwise_all_rows_s_extrapolated": per_row * rows,
        "speedup_vs_rowwise_all_rows": per_row * rows / batched_s,
        "speedup_vs_rowwise_same_sample": rowwise_s / batched_sample_s,
    }


def main() -> None:
    """Generate the shard set, merge it `--runs` times, time prediction, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--clusters", type=int, default=merge.DEFAULT_MAX_CLUSTERS)
    parser.add_argument("--rowwise-sample", type=int, default=ROWWISE_SAMPLE)
    parser.add_argument(
        "--no-predict", action="store_true", help="Skip the predict comparison (merge runs only)."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="Work folder (default: a temporary one, removed)."
    )
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="gdo-merge-bench-"))
    try:
        started = time.perf_counter()
        pool = write_shard_set(root, args.rows, args.shards)
        generate_s = time.perf_counter() - started
        size_mib = sum(p.stat().st_size for paths in pool.values() for p in paths) / 2**20
        print(
            f"shard set: {args.rows} rows in {args.shards} shards, {size_mib:.0f} MiB, written in {generate_s:.1f}s",
            flush=True,
        )
        runs = []
        for i in range(args.runs):
            result = run_merge(root, root / "gdo.duckdb", args.clusters)
            runs.append(result)
            print(
                f"merge run {i + 1}: {result['wall_s']:.1f}s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                f"stages {json.dumps({k: round(v, 1) for k, v in result['timings_s'].items()})}",
                flush=True,
            )
        db_mib = (root / "gdo.duckdb").stat().st_size / 2**20
        speed = (
            {}
            if args.no_predict
            else predict_speed(pool, min(args.clusters, args.rows), args.rowwise_sample)
        )
        if speed:
            print(
                f"predict: batched {speed['batched_all_rows_s']:.1f}s for {speed['rows']} rows; one row at a time "
                f"{speed['rowwise_per_row_ms']:.3f} ms/row on {speed['sample_rows']} sampled rows -> "
                f"{speed['rowwise_all_rows_s_extrapolated']:.0f}s extrapolated; speed-up "
                f"{speed['speedup_vs_rowwise_all_rows']:.0f}x (same sample: {speed['speedup_vs_rowwise_same_sample']:.0f}x)",
                flush=True,
            )
        summary = {
            "rows": args.rows,
            "shards": args.shards,
            "clusters": min(args.clusters, args.rows),
            "runs": runs,
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "db_mib": db_mib,
            "shard_set_mib": size_mib,
            "predict": speed,
            "bench_process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(json.dumps(summary, indent=2))
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
