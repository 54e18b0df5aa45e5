"""Two descriptor partitions and read-only SQL queries at the same time, on one instance and data folder."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from dagster import DagsterInstance

from dagster_project.definitions import build_definitions
from gdo_assets.living import JOB_DESCRIBE, run_backfill
from gdo_assets.merge import db_path
from gdo_core.demo import make_demo_pool
from gdo_core.sql import query_frame

QUERY = "select count(*) from descriptors d join qa q using (qa_uid)"


def _describe(env: dict[str, str], key: str, barrier, results) -> None:
    """Child process: wait for the others, then materialize one descriptor_shards partition."""
    os.environ.update(env)
    defs = build_definitions(in_process=True, env=env)
    with DagsterInstance.get() as instance:
        barrier.wait()
        result = defs.resolve_job_def(JOB_DESCRIBE).execute_in_process(
            instance=instance, partition_key=key, raise_on_error=False
        )
        results.put((key, result.success))


@pytest.mark.e2e
def test_two_descriptor_partitions_and_sql_queries_run_together(tmp_path: Path, monkeypatch) -> None:
    pool = make_demo_pool(tmp_path / "demo", n_image_rows=24, n_videos=6)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        "DAGSTER_HOME": str(home),
        "GDO_DATA_DIR": str(tmp_path / "data"),
        "GDO_ONEVISION": str(pool.onevision),
        "GDO_VIDEO": str(pool.video),
        "GDO_CHUNK_LINES": "10",
        "GDO_TARGET_FRAMES": "8",
        "GDO_MOTION_ONLY": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(in_process=True, env=env)
    with DagsterInstance.get() as instance:
        report = run_backfill(defs, instance)
        assert report.failed is None
        keys = sorted(instance.get_dynamic_partitions("pool_chunks"))
    db = db_path(defs.resources["gdo"])
    (expected,) = query_frame(QUERY, db).rows()
    assert expected[0] == pool.n_image_qas + pool.n_video_qas

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)  # both children and this process start together
    results = ctx.Queue()
    children = [ctx.Process(target=_describe, args=(env, key, barrier, results)) for key in keys[:2]]
    for child in children:
        child.start()
    barrier.wait(timeout=300)
    answers = []
    while any(child.is_alive() for child in children) or not answers:
        answers.append(query_frame(QUERY, db).rows()[0])
    for child in children:
        child.join(timeout=300)
        assert child.exitcode == 0
    done = dict(results.get(timeout=10) for _ in children)
    assert done == {keys[0]: True, keys[1]: True}
    # Every query answered, with the merged table as it was: the shards' rewrite does not touch it.
    assert set(answers) == {expected}
