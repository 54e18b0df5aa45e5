"""A living pool through Dagster: one pool file grows, one has a line edited, one is deleted.

Exactly the affected chunk partitions turn stale (new, changed) or retire (deleted), as the
backfill plan, the instance's partitions, the observed data versions and the automation all say;
`gdo backfill` reruns only them (QAs computed vs reused in the runs' metadata), and the merged
tables and every subset file then equal, byte for byte, a from-scratch run on the changed pool.
Motion-only descriptors keep it cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    evaluate_automation_conditions,
)
from typer.testing import CliRunner

from dagster_project.cli import app
from dagster_project.definitions import build_definitions
from gdo_assets.descriptors import DescriptorModel
from gdo_assets.living import plan_backfill, run_backfill
from gdo_assets.pool import sync_partitions
from gdo_assets.project import GdoProject
from gdo_assets.subsets import goal_profiles
from gdo_core.demo import make_demo_pool
from gdo_core.pool import chunk_key

CHUNK_LINES = 8
MERGE_CONFIG = {"clusters": 4}
SUBSETS_CONFIG = {"target_count": 6, "allow_unmet_constraints": True}
TABLES = {  # merged table -> ORDER BY (a total order)
    "qa": "qa_uid",
    "descriptors": "qa_uid",
    "rejects": "source_file, line, reason, detail",
    "merge_report": "1",
}


def _project(data: Path, ov: Path, videos: list[Path]) -> GdoProject:
    return GdoProject(
        data_dir=str(data), onevision=[str(ov)], video=[str(v) for v in videos], chunk_lines=CHUNK_LINES,
        target_frames=8,
    )


def _defs(project: GdoProject):
    return build_definitions(project, DescriptorModel(motion_only=True), in_process=True, env={})


def _ok(result) -> None:
    assert result.success


def build_everything(defs, instance: DagsterInstance) -> None:
    """The from-scratch path: every chunk parsed and described, the merge, every profile's subsets."""
    project = defs.resources["gdo"]
    index = sync_partitions(instance, project).index
    _ok(defs.resolve_job_def("observe_pool").execute_in_process(instance=instance))
    for key in index.chunk_keys():
        _ok(defs.resolve_job_def("ingest_pool").execute_in_process(instance=instance, partition_key=key))
        _ok(defs.resolve_job_def("describe_chunks").execute_in_process(instance=instance, partition_key=key))
    merge_config = {"ops": {"descriptors": {"config": MERGE_CONFIG}}}
    _ok(defs.resolve_job_def("merge_descriptors").execute_in_process(instance=instance, run_config=merge_config))
    subsets_config = {"ops": {"goal_subsets": {"config": SUBSETS_CONFIG}}}
    for profile in goal_profiles.get_partition_keys():
        _ok(defs.resolve_job_def("build_subsets").execute_in_process(
            instance=instance, partition_key=profile, run_config=subsets_config))


def export(data: Path, out: Path) -> dict[str, bytes]:
    """Relative path -> bytes: each merged table as CSV in a total order, and every subset file."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(data / "gdo.duckdb"), read_only=True)
    try:
        for table, order in TABLES.items():
            target = out / f"{table}.csv"
            con.execute(f"COPY (SELECT * FROM {table} ORDER BY {order}) TO '{target}' (HEADER, DELIMITER ',')")
    finally:
        con.close()
    files = {f"tables/{p.name}": p.read_bytes() for p in sorted(out.glob("*.csv"))}
    subsets = data / "subsets"
    files |= {f"subsets/{p.relative_to(subsets)}": p.read_bytes() for p in sorted(subsets.rglob("*")) if p.is_file()}
    return files


def _latest_versions(instance: DagsterInstance) -> dict[str, str]:
    """Chunk key -> data version of its latest pool_files observation."""
    records = instance.fetch_observations(AssetRecordsFilter(AssetKey("pool_files")), limit=10_000).records
    latest: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        latest[record.partition_key] = record.asset_observation.data_version
    return latest


def _materialized_since(instance: DagsterInstance, asset: str, storage_id: int) -> dict[str, dict]:
    """Partition -> metadata of the asset's materializations after a storage id."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey(asset), after_storage_id=storage_id), limit=10_000
    ).records
    return {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records}


def _last_storage_id(instance: DagsterInstance) -> int:
    records = instance.fetch_materializations(AssetRecordsFilter(AssetKey("descriptors")), limit=1).records
    return records[0].storage_id


def _candidate_requests(defs, instance, cursor=None):
    result = evaluate_automation_conditions(
        defs, instance, asset_selection=AssetSelection.assets("candidate_pool"), cursor=cursor
    )
    return sorted(result.get_requested_partitions(AssetKey("candidate_pool"))), result.cursor


def _qa_contents(data: Path) -> set[tuple]:
    """(question, answer, frames) of every QA row in the data folder's chunk files."""
    out = set()
    for path in (data / "pool" / "qa").glob("*.parquet"):
        for row in pl.read_parquet(path).select("question", "answer", "frames").iter_rows():
            out.add((row[0], row[1], tuple(row[2])))
    return out


@pytest.mark.e2e
def test_a_changed_pool_reruns_only_its_stale_chunks_and_matches_a_fresh_run(tmp_path: Path, monkeypatch) -> None:
    demo = make_demo_pool(tmp_path / "pool", n_image_rows=24, n_videos=10)
    ov_lines = demo.onevision.read_text().splitlines(keepends=True)
    vv_lines = demo.video.read_text().splitlines(keepends=True)
    # Image lines held back to be appended later: enough to fill the then last chunk (which
    # changes) and start a new one.
    n = len(ov_lines)
    held = next(h for h in range(2, n) if (n - h) % CHUNK_LINES and (n - 1) // CHUNK_LINES > (n - h - 1) // CHUNK_LINES)
    demo.onevision.write_text("".join(ov_lines[:-held]))
    # The video rows in two files: video.jsonl keeps the first half, clips.jsonl (deleted later) the rest.
    half = len(vv_lines) // 2
    clips = demo.root / "clips.jsonl"
    demo.video.write_text("".join(vv_lines[:half]))
    clips.write_text("".join(vv_lines[half:]))
    data = tmp_path / "data"
    project = _project(data, demo.onevision, [demo.video, clips])
    defs = _defs(project)
    instance = DagsterInstance.ephemeral()
    build_everything(defs, instance)
    before = project.saved_index()
    versions_before = _latest_versions(instance)
    assert set(versions_before) == set(before.chunk_keys())
    _, cursor = _candidate_requests(defs, instance)
    qa_before = _qa_contents(data)
    cutoff = _last_storage_id(instance)

    # ---- the pool changes ----------------------------------------------------------------
    n0 = len(ov_lines) - held
    with demo.onevision.open("a") as fh:
        fh.write("".join(ov_lines[-held:]))
    edited = next(
        i for i, line in enumerate(vv_lines[:half])
        if i >= CHUNK_LINES and line.startswith("{") and '"assistant"' in line and "messages" in json.loads(line)
    )
    row = json.loads(vv_lines[edited])
    answer = next(m for m in row["messages"] if m["role"] == "assistant")
    answer["content"] += " Edited."
    video_lines = vv_lines[:half]
    video_lines[edited] = json.dumps(row) + "\n"
    demo.video.write_text("".join(video_lines))
    clips.unlink()  # still configured: a deleted file retires its chunks

    ov_name, vv_name = demo.onevision.stem, demo.video.stem
    last_before, last_after = (n0 - 1) // CHUNK_LINES, (len(ov_lines) - 1) // CHUNK_LINES
    changed = [chunk_key(ov_name, last_before), chunk_key(vv_name, edited // CHUNK_LINES)]
    added = [chunk_key(ov_name, i) for i in range(last_before + 1, last_after + 1)]
    retired = sorted(k for k in before.chunk_keys() if k.startswith("clips-"))
    assert added and retired and len(retired) >= 1
    stale = [k for k in project.pool_index(save=False)[0].chunk_keys() if k in set(changed + added)]

    # ---- what is stale: the dry run changes and runs nothing -----------------------------
    registered = sorted(instance.get_dynamic_partitions("pool_chunks"))
    plan = plan_backfill(defs, instance, dry_run=True)
    assert sorted(plan.sync.changes.changed) == sorted(changed)
    assert list(plan.sync.changes.added) == added and list(plan.sync.changes.retired) == retired
    assert list(plan.sync.added) == added and list(plan.sync.retired) == retired
    assert plan.sync.stats.files_read == 2 and plan.sync.stats.files_missing == 1  # the third file: not read
    assert list(plan.chunks.parse) == stale and list(plan.chunks.describe) == stale
    assert plan.merge == "its chunks change" and set(plan.subsets) == set(goal_profiles.get_partition_keys())
    assert sorted(instance.get_dynamic_partitions("pool_chunks")) == registered

    # ---- gdo backfill reruns exactly those -----------------------------------------------
    report = run_backfill(defs, instance)
    assert report.failed is None
    assert sorted(instance.get_dynamic_partitions("pool_chunks")) == sorted(project.pool_index()[0].chunk_keys())
    assert not set(retired) & set(instance.get_dynamic_partitions("pool_chunks"))
    assert report.parsed == stale and list(report.described) == stale
    assert report.merged and all(report.merge_checks.values())
    assert sorted(report.subsets) == sorted(goal_profiles.get_partition_keys())
    # Retired chunks' files are gone, so nothing of the deleted file is left to merge.
    assert not list((data / "pool" / "qa").glob("clips-*")) and not list((data / "descriptors" / "shards").glob("clips-*"))

    # The same, as Dagster recorded it: new data versions for exactly the changed chunks, and
    # materializations of exactly the stale partitions, with QAs computed vs reused.
    versions_after = _latest_versions(instance)
    assert sorted(k for k in versions_after if k in versions_before and versions_after[k] != versions_before[k]) == sorted(changed)
    assert sorted(set(versions_after) - set(versions_before)) == sorted(added)
    assert set(_materialized_since(instance, "candidate_pool", cutoff)) == set(stale)
    described = _materialized_since(instance, "descriptor_shards", cutoff)
    assert set(described) == set(stale)
    qa_after = {
        key: [(r[0], r[1], tuple(r[2])) for r in pl.read_parquet(data / "pool" / "qa" / f"{key}.parquet")
              .select("question", "answer", "frames").iter_rows()]
        for key in stale
    }
    for key in stale:
        new = sum(row not in qa_before for row in qa_after[key])
        assert (described[key]["computed"], described[key]["reused"]) == (new, len(qa_after[key]) - new), key
        assert report.described[key] == {"qa": len(qa_after[key]), "computed": new, "reused": len(qa_after[key]) - new}
    edited_chunk = chunk_key(vv_name, edited // CHUNK_LINES)
    assert described[edited_chunk]["computed"] == 1  # one QA's answer changed
    assert report.computed == sum(d["computed"] for d in described.values()) > 0 and report.reused > 0
    # Dagster's automation agrees nothing is left to run.
    assert _candidate_requests(defs, instance, cursor)[0] == []

    # A second backfill finds nothing stale.
    again = plan_backfill(defs, instance, dry_run=True)
    assert not again.any and again.sync.stats.files_read == 0

    # ---- a from-scratch run on the changed pool, in a fresh folder at the same path ------
    incremental = export(data, tmp_path / "export-incremental")
    data.rename(tmp_path / "data-incremental")
    fresh = _project(data, demo.onevision, [demo.video])
    fresh_defs = _defs(fresh)
    build_everything(fresh_defs, DagsterInstance.ephemeral())
    scratch = export(data, tmp_path / "export-scratch")
    assert sorted(incremental) == sorted(scratch)
    assert [name for name in incremental if incremental[name] != scratch[name]] == []
    assert any(name.endswith(".jsonl") for name in incremental) and "tables/qa.csv" in incremental


@pytest.mark.e2e
def test_gdo_backfill_cli_dry_run_then_run(tmp_path: Path, monkeypatch) -> None:
    """`gdo backfill --dry-run` lists what is missing and runs nothing; `gdo backfill` runs it
    on the instance at DAGSTER_HOME; a second run finds nothing to do."""
    demo = make_demo_pool(tmp_path / "pool", n_image_rows=6, n_videos=2)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        "DAGSTER_HOME": str(home),
        "GDO_DATA_DIR": str(tmp_path / "data"),
        "GDO_ONEVISION": str(demo.onevision),
        "GDO_VIDEO": str(demo.video),
        "GDO_CHUNK_LINES": "4",
        "GDO_MOTION_ONLY": "1",
        "GDO_TARGET_FRAMES": "8",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    dry = runner.invoke(app, ["backfill", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "candidate_pool to run: onevision-00000 (missing)" in dry.output
    assert "dry run: nothing was registered, retired or run" in dry.output
    with DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("pool_chunks") == []
    ran = runner.invoke(app, ["backfill"])
    assert ran.exit_code == 0, ran.output
    assert "ran candidate_pool: onevision-00000" in ran.output and "ran descriptors (merge): yes" in ran.output
    assert "QAs described:" in ran.output and "0 reused" in ran.output
    again = runner.invoke(app, ["backfill"])
    assert again.exit_code == 0, again.output
    assert "ran candidate_pool: none" in again.output and "ran goal_subsets: none" in again.output
    assert os.path.isfile(tmp_path / "data" / "gdo.duckdb")

    # GDO_AUTOMATION=1: the automation follows a grown pool tick by tick through the descriptors,
    # the merge and, once the merge's blocking checks pass, the subsets; never into training or
    # evaluation. Without it, only the cheap parse of the changed chunk is requested.
    auto = build_definitions(in_process=True, env={**os.environ, "GDO_AUTOMATION": "1"})
    plain = build_definitions(in_process=True)
    project = plain.resources["gdo"]

    def run(job: str, **kwargs) -> None:
        auto.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)

    with DagsterInstance.get() as instance:
        _, cursor = _requested(auto, instance)
        _, plain_cursor = _requested(plain, instance)
        with demo.onevision.open("a") as fh:
            fh.write(demo.onevision.read_text().splitlines(keepends=True)[0])
        last = sync_partitions(instance, project).index.files[0].chunks[-1].key
        run("observe_pool")
        assert _requested(plain, instance, plain_cursor)[0] == {"candidate_pool": [last]}
        requested, cursor = _requested(auto, instance, cursor)
        assert requested == {"candidate_pool": [last], "descriptor_shards": [last]}
        run("ingest_pool", partition_key=last)
        run("describe_chunks", partition_key=last)
        requested, cursor = _requested(auto, instance, cursor)
        assert requested == {"descriptors": [None]}
        # A merge whose blocking check fails (a shard missing) holds the subsets back.
        shard = project.path("descriptors", "shards", f"{last}.parquet")
        shard.unlink()
        run("merge_descriptors")
        requested, cursor = _requested(auto, instance, cursor)
        assert "goal_subsets" not in requested and "checkpoints" not in requested
        run("describe_chunks", partition_key=last)
        requested, cursor = _requested(auto, instance, cursor)
        assert requested == {"descriptors": [None]}
        run("merge_descriptors")
        requested, cursor = _requested(auto, instance, cursor)
        assert requested == {"goal_subsets": sorted(goal_profiles.get_partition_keys())}


def _requested(defs, instance, cursor=None) -> tuple[dict[str, list], object]:
    """Asset -> partitions the automation would request now ([None]: an unpartitioned asset)."""
    result = evaluate_automation_conditions(defs, instance, cursor=cursor)
    out = {}
    for key in defs.get_repository_def().asset_graph.get_all_asset_keys():
        if result.get_num_requested(key):
            partitioned = defs.get_assets_def(key).partitions_def is not None
            out[key.to_user_string()] = sorted(result.get_requested_partitions(key)) if partitioned else [None]
    return out, result.cursor


def test_code_versions_follow_the_settings_and_the_model(tmp_path: Path) -> None:
    """descriptor_shards and the merge change code version with a result-changing descriptor
    setting or a replaced model (not with the batch size); candidate_pool with the parse settings."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 10)

    def versions(project: GdoProject, descriptor_model: DescriptorModel) -> dict[str, str | None]:
        defs = build_definitions(project, descriptor_model, in_process=True, env={})
        return {
            name: next(iter(defs.get_assets_def(AssetKey(name)).specs)).code_version
            for name in ("candidate_pool", "descriptor_shards", "descriptors")
        }

    project = GdoProject(data_dir=str(tmp_path / "data"))
    base = versions(project, DescriptorModel(model_dir=str(model)))
    assert all(base.values())
    assert versions(project, DescriptorModel(model_dir=str(model), batch_size=99)) == base
    other = versions(project, DescriptorModel(model_dir=str(model), sc_samples=2))
    assert other["candidate_pool"] == base["candidate_pool"]
    assert other["descriptor_shards"] != base["descriptor_shards"] and other["descriptors"] != base["descriptors"]
    (model / "model.safetensors").write_bytes(b"y" * 11)  # retrained weights
    retrained = versions(project, DescriptorModel(model_dir=str(model)))
    assert retrained["descriptor_shards"] != base["descriptor_shards"] and retrained["descriptors"] != base["descriptors"]
    frames = versions(project.model_copy(update={"target_frames": 16}), DescriptorModel(model_dir=str(model)))
    assert frames["candidate_pool"] != base["candidate_pool"]
    assert versions(project, DescriptorModel(motion_only=True))["descriptor_shards"] != retrained["descriptor_shards"]
