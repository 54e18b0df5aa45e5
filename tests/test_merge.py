"""Merge of descriptor shards into DuckDB: tables, stats, k-means, determinism, atomic replace."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from gdo_core import merge, score
from gdo_core.schema import DESCRIPTOR_SCHEMA, QA_SCHEMA, REJECT_SCHEMA, ROBUST_SIGNALS

SHARD_ROWS = 300
SHARDS = 3
CLUSTERS = 12


def descriptor_rows(start: int, n: int, seed: int) -> pl.DataFrame:
    """Synthetic descriptor rows: ~5% failed model passes (nulls + error), half without SC."""
    rng = np.random.default_rng(seed)
    uids = [f"{'vv' if (start + i) % 3 else 'ov'}::row{start + i}::t0" for i in range(n)]
    failed = rng.random(n) < 0.05
    loss_video = rng.normal(1.0, 0.3, n)
    loss_blind = loss_video + rng.normal(0.2, 0.2, n)
    frame = pl.DataFrame(
        {
            "qa_uid": uids,
            "amm": rng.gamma(2.0, 1.0, n),
            "frame_diversity": rng.random(n) * 0.2,
            "loss_video": np.where(failed, np.nan, loss_video),
            "loss_blind": np.where(failed, np.nan, loss_blind),
            "vds": np.where(failed, np.nan, loss_blind - loss_video),
            "ppl": np.where(failed, np.nan, np.exp(loss_video)),
            "tnc_score": rng.choice([0.0, 0.5, 1.0], n),
            "sc": np.where(rng.random(n) < 0.5, -1.0, rng.random(n)),
            "text_feature": rng.random((n, 16)).astype(np.float32),
            "vision_feature": rng.random((n, 6)).astype(np.float32),
            "n_frames": np.full(n, 8, np.int32),
            "question_len": rng.integers(3, 40, n).astype(np.int32),
            "answer_len": rng.integers(1, 30, n).astype(np.int32),
            "frames_unreadable": np.zeros(n, np.int32),
            "error": pl.Series(
                [("model pass failed: CUDA OOM" if f else None) for f in failed], dtype=pl.String
            ),
            "cache_key": [f"key{start + i}" for i in range(n)],
        }
    )
    nan_to_null = [pl.col(c).fill_nan(None) for c in ("loss_video", "loss_blind", "vds", "ppl")]
    return frame.with_columns(nan_to_null).cast(DESCRIPTOR_SCHEMA)  # type: ignore[arg-type]


def qa_rows(uids: list[str]) -> pl.DataFrame:
    """QA rows for the given uids, stratum fields filled from the uid."""
    n = len(uids)
    video = [u.startswith("vv::") for u in uids]
    temporal = [
        "Temporal" if v and i % 2 else ("Mixed" if v else "Static") for i, v in enumerate(video)
    ]
    group = [f"group_{i % 4}" for i in range(n)]
    bucket = ["short_video" if v else "image_qa" for v in video]
    duration = ["very_short" if v else "image" for v in video]
    fields = {
        "bucket": bucket,
        "duration_bucket": duration,
        "temporal_category": temporal,
        "question_form": ["Open"] * n,
        "q_len_bucket": ["q_short"] * n,
        "a_len_bucket": ["a_short"] * n,
        "source_group": group,
    }
    stratum = ["|".join(values) for values in zip(*fields.values())]
    frame = pl.DataFrame(
        {
            "qa_uid": uids,
            "row_id": [u.split("::")[1] for u in uids],
            "video_uid": [u.split("::")[1] if v else None for u, v in zip(uids, video)],
            "turn": [0] * n,
            "question": [f"What happens in clip {i}?" for i in range(n)],
            "answer": [f"Answer {i}" for i in range(n)],
            "frames": [
                [f"f{i}_{j}.jpg" for j in range(8 if v else 1)] for i, v in enumerate(video)
            ],
            "n_frames": [8 if v else 1 for v in video],
            "data_source": [f"{g}_src (v1)" for g in group],
            **fields,
            "stratum": stratum,
            "question_len": [5] * n,
            "answer_len": [2] * n,
            "source_file": ["pool.jsonl"] * n,
            "line": list(range(1, n + 1)),
        }
    )
    return frame.cast(QA_SCHEMA)  # type: ignore[arg-type]


def write_pool(
    root: Path, shards: int = SHARDS, shard_rows: int = SHARD_ROWS, seed: int = 0
) -> dict[str, list[Path]]:
    """Write descriptor shards, qa files (all but the last 5 QAs of each shard) and a rejects file."""
    (root / "descriptors").mkdir(parents=True, exist_ok=True)
    (root / "qa").mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"shards": [], "qa": [], "rejects": []}
    for i in range(shards):
        rows = descriptor_rows(i * shard_rows, shard_rows, seed + i)
        shard = root / "descriptors" / f"chunk-{i:03d}.parquet"
        rows.write_parquet(shard)
        qa = root / "qa" / f"chunk-{i:03d}.parquet"
        qa_rows(rows["qa_uid"].to_list()[:-5]).write_parquet(qa)
        out["shards"].append(shard)
        out["qa"].append(qa)
    rejects = pl.DataFrame(
        {
            "source_file": ["pool.jsonl"] * 2,
            "line": [7, 9],
            "qa_uid": [None, "ov::x::t1"],
            "reason": ["bad_json", "empty_text"],
            "detail": ["Expecting value", "empty answer"],
        },
        schema=REJECT_SCHEMA,
    )
    rejects.write_parquet(root / "rejects.parquet")
    out["rejects"].append(root / "rejects.parquet")
    return out


def merge_pool(pool: dict[str, list[Path]], db: Path, **kwargs) -> merge.MergeReport:
    return merge.merge_to_duckdb(pool["shards"], pool["qa"], pool["rejects"], db, **kwargs)


def table(db: Path, name: str, order: str = "qa_uid") -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(f"SELECT * FROM {name} ORDER BY {order}").pl()
    finally:
        con.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_pool(tmp_path_factory.mktemp("pool"))


@pytest.fixture(scope="module")
def merged(
    pool: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, merge.MergeReport]:
    db = tmp_path_factory.mktemp("db") / "gdo.duckdb"
    return db, merge_pool(pool, db, clusters=CLUSTERS)


def all_descriptors(pool: dict[str, list[Path]]) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in pool["shards"]])


def test_merge_writes_the_four_tables(merged: tuple[Path, merge.MergeReport]) -> None:
    db, report = merged
    rows = SHARDS * SHARD_ROWS
    assert (report.rows, report.qa_rows, report.reject_rows) == (rows, rows - 5 * SHARDS, 2)
    assert report.clusters == CLUSTERS and report.clusters_requested == CLUSTERS
    assert (report.qa_without_descriptor, report.descriptor_without_qa) == (0, 5 * SHARDS)
    descriptors = table(db, "descriptors")
    assert descriptors.schema == pl.Schema(merge.DESCRIPTOR_TABLE_SCHEMA)
    assert descriptors.height == rows
    assert table(db, "qa").schema == pl.Schema(QA_SCHEMA)
    assert table(db, "rejects", order="line").schema == pl.Schema(REJECT_SCHEMA)
    report_row = table(db, "merge_report", order="rows")
    assert report_row.schema == pl.Schema(merge.MERGE_REPORT_SCHEMA)
    assert report_row["clusters"].item() == CLUSTERS and report_row["rows"].item() == rows
    assert [s["signal"] for s in report_row["stats"].item()] == list(ROBUST_SIGNALS)
    assert report.error_rows == descriptors["error"].is_not_null().sum() > 0
    assert report.error_share == pytest.approx(report.error_rows / rows)


def test_stats_are_exact_quartiles_of_the_pool(
    merged: tuple[Path, merge.MergeReport], pool: dict
) -> None:
    db, report = merged
    expected = score.robust_stats(all_descriptors(pool))
    assert not report.stats_sampled and report.stats_rows == SHARD_ROWS * SHARDS
    for signal in ROBUST_SIGNALS:
        got, want = report.stats[signal], expected[signal]
        assert got.n == want.n
        assert got.center == pytest.approx(want.center, rel=1e-12)
        assert got.scale == pytest.approx(want.scale, rel=1e-12)
    assert merge.read_stats(db) == report.stats


def test_stored_scores_are_finite_and_keep_computed_sc(
    merged: tuple[Path, merge.MergeReport],
) -> None:
    db, _ = merged
    stored = table(db, "descriptors")
    assert stored["cluster_id"].min() >= 0 and stored["cluster_id"].max() < CLUSTERS
    assert stored["cluster_rep"].to_numpy() == pytest.approx(
        np.exp(-stored["cluster_dist"].to_numpy())
    )
    assert stored["cluster_hard"].to_numpy() == pytest.approx(1 - stored["cluster_rep"].to_numpy())
    inputs = stored.select(
        "sc_filled",
        "vds3",
        "ppl_mid",
        "amm_mid",
        "tnc_score",
        "cluster_rep",
        "cluster_hard",
        "quality",
    )
    assert all(inputs[c].is_finite().all() for c in inputs.columns)
    # SC is kept where computed and replaced only where missing.
    present = stored.filter(pl.col("sc") >= 0)
    assert present["sc_filled"].to_list() == present["sc"].to_list()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_stored_scores_on_six_rows_by_hand(tmp_path: Path) -> None:
    """Six rows whose quartiles are easy to read off; every stored score against the formulas
    written out by hand (row 2 is a failed model pass: vds, ppl and TNC missing)."""
    rows = descriptor_rows(0, 6, seed=1).with_columns(
        vds=pl.Series([0.5, -1.0, None, 3.0, 0.0, 1.349]),
        ppl=pl.Series([3.0, 2.0, None, 10.0, 3.349, 1.0]),
        amm=pl.Series([1.0, 2.349, 0.0, 5.0, 1.0, 2.349]),
        frame_diversity=pl.Series([0.3, 0.1, 0.4, 0.0, 0.1, 0.3]),
        sc=pl.Series([0.9, -1.0, 0.2, -1.0, 0.5, 0.7]),
        tnc_score=pl.Series([1.0, 0.0, None, 0.5, 1.0, 0.0]),
    )
    shard = tmp_path / "chunk-000.parquet"
    rows.write_parquet(shard)
    report = merge.merge_to_duckdb([shard], [], [], tmp_path / "gdo.duckdb", clusters=2)
    # Quartiles (linear interpolation) read off the sorted valid values:
    # vds  -1, 0, 0.5, 1.349, 3           -> q1 0, median 0.5, q3 1.349: scale 1.349 / 1.349 = 1
    # ppl   1, 2, 3, 3.349, 10            -> q1 2, median 3,   q3 3.349: scale 1
    # amm   0, 1, 1, 2.349, 2.349, 5      -> q1 1, median 1.6745, q3 2.349: scale 1
    # fd    0, .1, .1, .3, .3, .4         -> q1 .1, median .2, q3 .3: scale .2 / 1.349
    # sc    .2, .5, .7, .9 (>= 0 only)    -> q1 .425, median .6, q3 .75
    stats = {s: (v.q1, v.center, v.q3, v.n) for s, v in report.stats.items()}
    assert stats["vds"] == pytest.approx((0.0, 0.5, 1.349, 5))
    assert stats["ppl"] == pytest.approx((2.0, 3.0, 3.349, 5))
    assert stats["amm"] == pytest.approx((1.0, 1.6745, 2.349, 6))
    assert stats["frame_diversity"] == pytest.approx((0.1, 0.2, 0.3, 6))
    assert stats["sc"] == pytest.approx((0.425, 0.6, 0.75, 4))
    assert report.stats["frame_diversity"].scale == pytest.approx(0.2 / 1.349)

    z_vds = [0.0, -1.5, 0.0, 2.5, -0.5, 0.849]  # v - 0.5; the missing one at the centre
    z_ppl = [0.0, -1.0, 0.0, 7.0, 0.349, -2.0]  # v - 3
    z_amm = [-0.6745, 0.6745, -1.6745, 3.3255, -0.6745, 0.6745]  # v - 1.6745
    z_fd = [0.6745, -0.6745, 1.349, -1.349, -0.6745, 0.6745]  # (v - 0.2) * 1.349 / 0.2
    # SC computed in rows 0, 2, 4, 5; rows 1 and 3 take sigma(0.6 z(vds) - 0.2 |z(ppl)|).
    sc_filled = [0.9, _sigmoid(0.6 * -1.5 - 0.2 * 1.0), 0.2, _sigmoid(0.6 * 2.5 - 0.2 * 7.0), 0.5, 0.7]
    vds3 = [a + b for a, b in zip(z_vds, z_fd)]
    ppl_mid = [math.exp(-abs(z)) for z in z_ppl]
    amm_mid = [math.exp(-abs(z)) for z in z_amm]
    tnc = [1.0, 0.0, 0.5, 0.5, 1.0, 0.0]  # a missing TNC is undecided

    stored = table(tmp_path / "gdo.duckdb", "descriptors", order="cache_key")
    assert stored["qa_uid"].to_list() == rows["qa_uid"].to_list()
    assert stored["sc_filled"].to_list() == pytest.approx(sc_filled, rel=1e-9)
    assert stored["vds3"].to_list() == pytest.approx(vds3, rel=1e-9, abs=1e-12)
    assert stored["ppl_mid"].to_list() == pytest.approx(ppl_mid, rel=1e-9)
    assert stored["amm_mid"].to_list() == pytest.approx(amm_mid, rel=1e-9)
    rep = stored["cluster_rep"].to_list()
    quality = [
        0.28 * _sigmoid(vds3[i])
        + 0.18 * sc_filled[i]
        + 0.14 * ppl_mid[i]
        + 0.12 * amm_mid[i]
        + 0.12 * tnc[i]
        + 0.10 * rep[i]
        + 0.06 * (1 - rep[i])
        for i in range(6)
    ]
    assert stored["quality"].to_list() == pytest.approx(quality, rel=1e-9)
    # Two rows written out as numbers: row 0 sits at every centre but AMM and frame diversity.
    assert sc_filled[1] == pytest.approx(0.24973989, rel=1e-7)
    assert quality[0] - 0.10 * rep[0] - 0.06 * (1 - rep[0]) == pytest.approx(0.66863214, rel=1e-7)


def test_features_put_missing_signals_at_the_centre() -> None:
    rows = descriptor_rows(0, 4, seed=1).with_columns(
        vds=pl.Series([None, 0.5, 0.1, 0.2]),
        tnc_score=pl.Series([None, 1.0, 0.0, 0.5]),
        text_feature=pl.Series(
            [None, [1.0] * 16, [0.0] * 16, [0.5] * 16], dtype=pl.Array(pl.Float32, 16)
        ),
    )
    stats = score.robust_stats(rows)
    features = merge.feature_matrix(rows, stats)
    assert features.shape == (4, merge.FEATURE_DIM) == (4, 27)
    assert features[0, :16].tolist() == [0.0] * 16
    tnc, vds = (
        merge.FEATURE_INPUT_COLUMNS.index("tnc_score") + 20,
        merge.FEATURE_INPUT_COLUMNS.index("vds") + 20,
    )
    assert features[0, tnc] == score.TNC_MISSING
    assert features[0, vds] == pytest.approx(stats["vds"].center)
    assert features[1, vds] == pytest.approx(0.5)
    assert features[1, 16:22] == pytest.approx(rows["vision_feature"][1].to_numpy())


def test_batched_prediction_matches_one_row_at_a_time(pool: dict) -> None:
    frame = all_descriptors(pool)
    stats = score.robust_stats(frame)
    model, passes, steps = merge.fit_kmeans(pool["shards"], stats, CLUSTERS, seed=7)
    assert steps >= merge.KMEANS_MIN_STEPS or passes == merge.KMEANS_MAX_PASSES
    features = merge.feature_matrix(frame, stats)
    labels, dist = merge.assign_clusters(model, features)
    one_by_one = np.array(
        [model.predict(features[i : i + 1])[0] for i in range(0, len(features), 37)]
    )
    assert labels[::37].tolist() == one_by_one.tolist()
    assert dist == pytest.approx(model.transform(features).min(axis=1))


def test_sampled_stats_are_seeded(pool: dict) -> None:
    exact, sampled_flag, _ = merge.compute_robust_stats(pool["shards"])
    first, flag, n = merge.compute_robust_stats(pool["shards"], seed=3, sample_rows=500)
    again, _, _ = merge.compute_robust_stats(pool["shards"], seed=3, sample_rows=500)
    other, _, _ = merge.compute_robust_stats(pool["shards"], seed=4, sample_rows=500)
    assert (sampled_flag, flag, n) == (False, True, 500)
    assert first == again and first != other
    assert first["amm"].center == pytest.approx(exact["amm"].center, rel=0.15)


def test_iter_batches_rebatches_across_files(pool: dict) -> None:
    sizes = [b.height for b in merge.iter_batches(pool["shards"], ["qa_uid"], 250)]
    assert sizes == [250, 250, 250, 150]
    uids = pl.concat(list(merge.iter_batches(pool["shards"], ["qa_uid"], 250)))["qa_uid"]
    assert uids.to_list() == all_descriptors(pool)["qa_uid"].to_list()


def test_rerun_gives_identical_tables(
    pool: dict, merged: tuple[Path, merge.MergeReport], tmp_path: Path
) -> None:
    db, _ = merged
    # Inputs in another order: the merge sorts them, so nothing changes.
    reversed_pool = {key: list(reversed(paths)) for key, paths in pool.items()}
    again = tmp_path / "again.duckdb"
    merge_pool(reversed_pool, again, clusters=CLUSTERS)
    for name, order in (
        ("qa", "qa_uid"),
        ("descriptors", "qa_uid"),
        ("rejects", "line"),
        ("merge_report", "rows"),
    ):
        assert table(db, name, order).equals(table(again, name, order)), name
        # Row order inside the table is the same too, not only the content.
        assert table(db, name, "rowid").equals(table(again, name, "rowid")), name


def test_k_is_capped_by_rows_and_defaults_to_4096(tmp_path: Path) -> None:
    small = write_pool(tmp_path / "small", shards=1, shard_rows=40)
    report = merge_pool(small, tmp_path / "small.duckdb")
    assert (report.clusters, report.clusters_requested) == (40, merge.DEFAULT_MAX_CLUSTERS)
    assert table(tmp_path / "small.duckdb", "descriptors")["cluster_id"].n_unique() <= 40


def test_empty_pool_writes_empty_tables(tmp_path: Path) -> None:
    report = merge.merge_to_duckdb([], [], [], tmp_path / "empty.duckdb")
    assert (report.rows, report.clusters, report.kmeans_steps) == (0, 0, 0)
    assert table(tmp_path / "empty.duckdb", "descriptors").height == 0
    assert table(tmp_path / "empty.duckdb", "merge_report", "rows")["rows"].item() == 0


def test_bad_inputs_fail_with_the_file_named(pool: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        merge.merge_to_duckdb([tmp_path / "nope.parquet"], [], [], tmp_path / "x.duckdb")
    broken = tmp_path / "broken.parquet"
    descriptor_rows(0, 3, seed=0).drop("vds").write_parquet(broken)
    with pytest.raises(merge.MergeError, match=r"broken\.parquet.*\['vds'\]"):
        merge.merge_to_duckdb([broken], [], [], tmp_path / "x.duckdb")
    wrong_type = tmp_path / "wrong_type.parquet"
    descriptor_rows(0, 3, seed=0).with_columns(vds=pl.lit("high")).write_parquet(wrong_type)
    with pytest.raises(
        merge.MergeError,
        match=r"wrong_type\.parquet: descriptor shard column 'vds' has type String",
    ):
        merge.merge_to_duckdb([wrong_type], [], [], tmp_path / "x.duckdb")
    narrow = tmp_path / "narrow.parquet"
    descriptor_rows(0, 3, seed=0).with_columns(
        text_feature=pl.Series([[1.0] * 15] * 3)
    ).write_parquet(narrow)
    with pytest.raises(
        merge.MergeError, match=r"narrow\.parquet: values do not fit gdo_core.schema \(.*width 16"
    ):
        merge.merge_to_duckdb([narrow], [], [], tmp_path / "x.duckdb")
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(merge.MergeError, match="text.parquet: not a readable Parquet"):
        merge.merge_to_duckdb([not_parquet], [], [], tmp_path / "x.duckdb")
    with pytest.raises(merge.MergeError, match="clusters must be at least 1"):
        merge_pool(pool, tmp_path / "x.duckdb", clusters=0)


def test_failed_merge_keeps_the_previous_database(pool: dict, tmp_path: Path) -> None:
    db = tmp_path / "gdo.duckdb"
    merge_pool(pool, db, clusters=4)
    before = table(db, "descriptors")
    copy = tmp_path / "copy.parquet"
    pl.read_parquet(pool["shards"][0]).head(3).write_parquet(copy)
    with pytest.raises(
        merge.MergeError, match=r"occurs more than once.*chunk-000\.parquet.*copy\.parquet"
    ):
        merge.merge_to_duckdb([*pool["shards"], copy], pool["qa"], pool["rejects"], db, clusters=4)
    assert table(db, "descriptors").equals(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.parquet", "gdo.duckdb"]


def test_views_are_created_by_the_writer(pool: dict, tmp_path: Path) -> None:
    members = tmp_path / "subsets" / "minloss" / "members.parquet"
    members.parent.mkdir(parents=True)
    pl.DataFrame(
        {
            "profile": ["minloss"] * 2,
            "arm": ["gdo", "uni10x"],
            "qa_uid": ["vv::row1::t0", "ov::row0::t0"],
            "rank": [0, 0],
            "stage": ["quota", "uni"],
            "score": [0.5, 0.1],
        }
    ).write_parquet(members)
    db = tmp_path / "gdo.duckdb"
    merge_pool(
        pool,
        db,
        clusters=4,
        views={"subset_members": str(tmp_path / "subsets" / "*" / "members.parquet")},
    )
    assert table(db, "subset_members", "arm")["qa_uid"].to_list() == [
        "vv::row1::t0",
        "ov::row0::t0",
    ]
    # The view keeps the glob: a profile built after the merge shows up without a new merge.
    later = tmp_path / "subsets" / "temp" / "members.parquet"
    later.parent.mkdir(parents=True)
    pl.read_parquet(members).with_columns(profile=pl.lit("temp")).write_parquet(later)
    assert (
        table(db, "subset_members", "profile, arm")["profile"].to_list()
        == ["minloss"] * 2 + ["temp"] * 2
    )
    empty = tmp_path / "empty.duckdb"
    merge_pool(
        pool, empty, clusters=4, views={"subset_members": str(tmp_path / "none" / "*.parquet")}
    )
    assert table(empty, "subset_members", "rank").height == 0


# A separate reader process (duckdb only, so it starts fast): it opens the database read-only
# again and again until the stop file appears, reads once more after that (so it has seen the
# database as the last merge left it), then prints what it saw as JSON.
READER_SCRIPT = """
import json, os, sys, duckdb
db, stop = sys.argv[1], sys.argv[2]
seen, errors = [], []
while True:
    stopping = os.path.exists(stop)
    try:
        con = duckdb.connect(db, read_only=True)
        try:
            count = con.execute("SELECT count(*) FROM descriptors").fetchall()[0][0]
            reported, clusters = con.execute("SELECT rows, clusters FROM merge_report").fetchall()[0]
            seen.append([count, reported, clusters])
        finally:
            con.close()
    except Exception as exc:
        errors.append(repr(exc))
    if len(seen) + len(errors) == 1:
        print("ready", flush=True)
    if stopping:
        break
print(json.dumps({"seen": seen, "errors": errors}), flush=True)
"""


def test_concurrent_read_only_reader_never_fails_or_sees_half_a_merge(
    pool: dict, tmp_path: Path
) -> None:
    db = tmp_path / "gdo.duckdb"
    stop = tmp_path / "stop"
    smaller = {**pool, "shards": pool["shards"][:2]}
    merge_pool(smaller, db, clusters=4)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(db), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        # Three merges alternating two pool sizes, while the reader keeps opening the file.
        for shards in (pool, smaller, pool):
            report = merge_pool(shards, db, clusters=4)
            assert report.rows in (2 * SHARD_ROWS, 3 * SHARD_ROWS)
        stop.touch()  # the reader reads once more after it sees this: the final database
        out, _ = reader.communicate(timeout=60)
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
    result = json.loads(out)
    assert result["errors"] == []
    # Every snapshot is a complete database: descriptor rows match its own merge report.
    assert all(count == reported for count, reported, _ in result["seen"])
    # The first read (before the merges) saw the smaller pool, the last one the final merge.
    assert result["seen"][0][0] == 2 * SHARD_ROWS and result["seen"][-1][0] == 3 * SHARD_ROWS
    assert {count for count, _, _ in result["seen"]} == {2 * SHARD_ROWS, 3 * SHARD_ROWS}
    assert not list(tmp_path.glob(".gdo.duckdb.*"))


def test_quality_does_not_depend_on_the_shard_split(tmp_path: Path) -> None:
    # The same rows cut into 1 shard or 3 shards give the same stats (exact quantiles).
    rows = descriptor_rows(0, 90, seed=5)
    one = tmp_path / "one.parquet"
    rows.write_parquet(one)
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.parquet"
        rows.slice(30 * i, 30).write_parquet(part)
        parts.append(part)
    a = merge.compute_robust_stats([one])[0]
    b = merge.compute_robust_stats(parts)[0]
    assert all(
        math.isclose(a[s].center, b[s].center) and math.isclose(a[s].scale, b[s].scale)
        for s in ROBUST_SIGNALS
    )


def test_check_counts_and_distribution_plot(
    merged: tuple[Path, merge.MergeReport], tmp_path: Path
) -> None:
    db, report = merged
    counts = merge.check_counts(db)
    assert counts["rows"] == report.rows and counts["qa_rows"] == report.qa_rows
    assert counts["qa_without_descriptor"] == 0 and counts["nonfinite_score_rows"] == 0
    assert counts["error_rows"] == report.error_rows
    assert counts["clusters"] == counts["clusters_requested"] == CLUSTERS
    assert 1 <= counts["distinct_clusters"] <= CLUSTERS and counts["max_cluster_id"] < CLUSTERS
    png = merge.plot_descriptor_distributions(db, tmp_path / "plots" / "descriptors.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
