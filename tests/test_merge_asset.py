"""The `descriptors` asset through Dagster: a demo-pool merge with its checks, blocking failures, a concurrent reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import AssetCheckSeverity, DagsterInstance, materialize
from test_merge import READER_SCRIPT, descriptor_rows  # tests/ is on sys.path under pytest

from gdo_assets import merge as merge_assets
from gdo_assets.pool import QA_DIR, candidate_pool, register_chunks
from gdo_assets.project import GdoProject
from gdo_core.demo import make_demo_pool

CHUNK_LINES = 40
CHECKS = {
    merge_assets.CHECK_EVERY_QA,
    merge_assets.CHECK_FINITE,
    merge_assets.CHECK_CLUSTERS,
    merge_assets.CHECK_ERRORS,
}


def write_shards(project: GdoProject, keys: list[str], skip: tuple[str, ...] = ()) -> int:
    """Stand-in for descriptor_shards: synthetic descriptor rows for every QA of each chunk."""
    rows = 0
    for i, key in enumerate(sorted(keys)):
        qa = pl.read_parquet(project.path(*QA_DIR, f"{key}.parquet"))
        shard = project.path(*merge_assets.SHARDS_DIR, f"{key}.parquet")
        shard.unlink(missing_ok=True)
        if key in skip or qa.height == 0:
            continue
        shard.parent.mkdir(parents=True, exist_ok=True)
        frame = descriptor_rows(0, qa.height, seed=i).with_columns(
            qa_uid=qa["qa_uid"], cache_key=qa["qa_uid"]
        )
        frame.write_parquet(shard)
        rows += frame.height
    return rows


@pytest.fixture(scope="module")
def demo_project(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GdoProject, DagsterInstance, list[str]]:
    """The demo pool ingested through candidate_pool, one run per chunk partition."""
    root = tmp_path_factory.mktemp("demo")
    pool = make_demo_pool(root / "pool", seed=0, n_image_rows=60, n_videos=8)
    project = GdoProject(
        data_dir=str(root / "data"),
        onevision=[str(pool.onevision)],
        video=[str(pool.video)],
        chunk_lines=CHUNK_LINES,
    )
    instance = DagsterInstance.ephemeral()
    register_chunks(instance, pool.onevision, pool.video, CHUNK_LINES)
    keys = sorted(instance.get_dynamic_partitions("pool_chunks"))
    for key in keys:
        assert materialize(
            [candidate_pool], partition_key=key, instance=instance, resources={"gdo": project}
        ).success
    return project, instance, keys


def run_merge(project: GdoProject, instance: DagsterInstance, **config: object):
    return materialize(
        [merge_assets.descriptors],
        instance=instance,
        resources={"gdo": project},
        run_config={"ops": {"descriptors": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def check_results(result) -> dict[str, tuple[bool, AssetCheckSeverity]]:
    return {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}


@pytest.mark.e2e
def test_demo_pool_merge_passes_every_check(demo_project) -> None:
    project, instance, keys = demo_project
    rows = write_shards(project, keys)
    result = run_merge(project, instance, clusters=8)
    assert result.success
    checks = check_results(result)
    assert set(checks) == CHECKS and all(passed for passed, _ in checks.values())
    (materialization,) = result.asset_materializations_for_node("descriptors")
    metadata = materialization.metadata
    assert metadata["rows"].value == rows == metadata["qa_rows"].value
    assert metadata["clusters"].value == 8
    assert set(metadata["z_stats_json"].value) == {"vds", "ppl", "amm", "frame_diversity", "sc"}
    assert metadata["distributions"].value.startswith(
        "![descriptor distributions by bucket](data:image/png;base64,"
    )
    db = merge_assets.db_path(project)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM descriptors").fetchall()[0][0] == rows
        # The demo pool's broken lines are in rejects.
        assert con.execute("SELECT count(*) FROM rejects").fetchall()[0][0] > 0
        # No profile built yet: the subset_members view exists, typed and empty.
        assert con.execute("SELECT count(*) FROM subset_members").fetchall()[0][0] == 0
    finally:
        con.close()


@pytest.mark.e2e
def test_blocking_checks_fail_a_bad_merge(demo_project) -> None:
    project, instance, keys = demo_project
    write_shards(project, keys, skip=(keys[0],))
    result = run_merge(project, instance, clusters=8, max_error_share=0.0)
    checks = check_results(result)
    assert checks[merge_assets.CHECK_EVERY_QA] == (False, AssetCheckSeverity.ERROR)
    assert checks[merge_assets.CHECK_ERRORS] == (False, AssetCheckSeverity.ERROR)
    assert checks[merge_assets.CHECK_FINITE][0] and checks[merge_assets.CHECK_CLUSTERS][0]
    assert (
        merge_assets.descriptors.check_specs_by_output_name
    )  # the specs are declared on the asset
    specs = {spec.name: spec.blocking for spec in merge_assets.descriptors.check_specs}
    assert specs == {
        merge_assets.CHECK_EVERY_QA: True,
        merge_assets.CHECK_FINITE: True,
        merge_assets.CHECK_CLUSTERS: False,
        merge_assets.CHECK_ERRORS: True,
    }


@pytest.mark.e2e
def test_reader_during_the_asset_run_never_fails(demo_project, tmp_path: Path) -> None:
    project, instance, keys = demo_project
    write_shards(project, keys)
    assert run_merge(project, instance, clusters=4).success
    stop = tmp_path / "stop"
    db = merge_assets.db_path(project)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(db), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        assert run_merge(project, instance, clusters=6).success
        stop.touch()  # the reader reads once more after it sees this: the new database
        out, _ = reader.communicate(timeout=60)
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
    seen = json.loads(out)
    assert seen["errors"] == []
    assert all(count == reported for count, reported, _ in seen["seen"])
    # The first read saw the 4-cluster merge; the last one (after the run) the 6-cluster merge.
    assert seen["seen"][0][2] == 4 and seen["seen"][-1][2] == 6
