"""Pool assets through Dagster: chunk partitions, rejects metadata, per-chunk staleness."""

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    evaluate_automation_conditions,
)

from dagster_project.definitions import build_definitions
from gdo_assets.pool import pool_chunk_sensor, register_chunks, split_chunk_key
from gdo_assets.project import GdoProject


def _msgs(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _pool(tmp_path: Path) -> tuple[Path, Path]:
    ov_rows = [
        json.dumps({"id": f"i{i}", "images": [f"img/{i}.jpg"], "data_source": "GEOS(MathV360K)",
                    "messages": _msgs(f"<image>\nWhat colour is shape {i}?", "red")})
        for i in range(5)
    ]
    ov_rows.insert(2, "{broken")
    vv_rows = [
        json.dumps({"id": f"v{i}", "video_id": f"vid{i // 2}", "images": [f"f/{i}/{j}.jpg" for j in range(40)],
                    "data_source": "0_30_s_academic_v0_1",
                    "messages": _msgs("<video>\nWhat happens after it stops?", "It turns.")})
        for i in range(4)
    ]
    (tmp_path / "ov.jsonl").write_text("\n".join(ov_rows) + "\n")
    (tmp_path / "vv.jsonl").write_text("\n".join(vv_rows) + "\n")
    return tmp_path / "ov.jsonl", tmp_path / "vv.jsonl"


def _requested_chunks(defs, instance, cursor=None) -> tuple[list[str], object]:
    """candidate_pool partitions the automation (eager: a parent's data version changed) would
    run now, and the cursor for the next evaluation."""
    result = evaluate_automation_conditions(
        defs, instance, asset_selection=AssetSelection.assets("candidate_pool"), cursor=cursor
    )
    return sorted(result.get_requested_partitions(AssetKey("candidate_pool"))), result.cursor


def test_chunk_keys_round_trip():
    assert split_chunk_key("onevision_part_2-00012") == ("onevision_part_2", 12)
    with pytest.raises(ValueError, match="not of the form"):
        split_chunk_key("nochunk")


@pytest.mark.e2e
def test_pool_assets_materialize_and_only_the_edited_chunk_goes_stale(tmp_path):
    ov, vv = _pool(tmp_path)
    project = GdoProject(data_dir=str(tmp_path / "data"), onevision=[str(ov)], video=[str(vv)], chunk_lines=2)
    defs = build_definitions(project, in_process=True)
    with DagsterInstance.ephemeral() as instance:
        new, total = register_chunks(instance, ov, vv, 2)
        assert total == 5 and sorted(new) == ["ov-00000", "ov-00001", "ov-00002", "vv-00000", "vv-00001"]
        assert defs.resolve_job_def("observe_pool").execute_in_process(instance=instance).success
        keys = sorted(instance.get_dynamic_partitions("pool_chunks"))
        for key in keys:
            result = defs.resolve_job_def("ingest_pool").execute_in_process(instance=instance, partition_key=key)
            assert result.success
        result = defs.resolve_job_def("profile_pool").execute_in_process(instance=instance)
        (event,) = result.get_asset_materialization_events()
        meta = event.step_materialization_data.materialization.metadata
        assert meta["qa_rows"].value == 9
        assert meta["rejects_per_reason"].value == {"bad_json": 1}
        assert meta["qa_per_bucket"].value == {"image_qa": 5, "short_video": 4}
        qa = pl.read_parquet(tmp_path / "data" / "pool" / "qa" / "vv-00001.parquet")
        assert qa["qa_uid"].to_list() == ["vv::v2::t0", "vv::v3::t0"] and qa["n_frames"].to_list() == [32, 32]
        requested, cursor = _requested_chunks(defs, instance)
        assert requested == []
        # Observing the unchanged pool again changes no data version: nothing to rerun.
        assert defs.resolve_job_def("observe_pool").execute_in_process(instance=instance).success
        requested, cursor = _requested_chunks(defs, instance, cursor)
        assert requested == []

        lines = ov.read_text().splitlines()
        lines[3] = lines[3].replace("red", "blue")  # line 4: chunk ov-00001
        ov.write_text("\n".join(lines) + "\n")
        assert defs.resolve_job_def("observe_pool").execute_in_process(instance=instance).success
        assert _requested_chunks(defs, instance, cursor)[0] == ["ov-00001"]


# ---- pool_chunk_sensor ------------------------------------------------------------------------


def _tick(instance, project: GdoProject, cursor: str | None) -> SensorResult | SkipReason:
    """One sensor evaluation; its partition requests applied to the instance, as the daemon does."""
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"gdo": project})
    result = pool_chunk_sensor(context)
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            if isinstance(request, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def _added(result: SensorResult) -> list[str]:
    return [
        k for request in result.dynamic_partitions_requests if isinstance(request, AddDynamicPartitionsRequest)
        for k in request.partition_keys
    ]


def _retired(result: SensorResult) -> list[str]:
    return [
        k for request in result.dynamic_partitions_requests if not isinstance(request, AddDynamicPartitionsRequest)
        for k in request.partition_keys
    ]


def test_sensor_registers_new_chunks_retires_gone_ones_and_observes_each_change(tmp_path):
    ov, vv = _pool(tmp_path)  # 6 image lines (one broken), 4 video lines: chunks of 2 lines
    original = ov.read_text()
    project = GdoProject(data_dir=str(tmp_path / "data"), onevision=[str(ov)], video=[str(vv)], chunk_lines=2)
    requests = []
    with DagsterInstance.ephemeral() as instance:
        first = _tick(instance, project, None)
        assert isinstance(first, SensorResult) and len(first.run_requests) == 1
        assert _added(first) == ["ov-00000", "ov-00001", "ov-00002", "vv-00000", "vv-00001"]
        assert all(r.partitions_def_name == "pool_chunks" for r in first.dynamic_partitions_requests)
        requests += first.run_requests

        same = _tick(instance, project, first.cursor)
        assert isinstance(same, SkipReason) and same.skip_message == "pool unchanged"

        # Grows by three lines: lines 7-8 and 9 are two new chunks.
        extra = [json.dumps({"id": f"x{i}", "images": ["img/x.jpg"], "messages": []}) for i in range(3)]
        ov.write_text(original + "\n".join(extra) + "\n")
        grown = _tick(instance, project, first.cursor)
        assert isinstance(grown, SensorResult) and _added(grown) == ["ov-00003", "ov-00004"]
        assert len(grown.run_requests) == 1 and grown.cursor != first.cursor
        requests += grown.run_requests
        assert isinstance(_tick(instance, project, grown.cursor), SkipReason)

        # Shrinks to 4 lines: the chunks past line 4 retire (deleted partitions), and the pool is observed again.
        ov.write_text("".join(original.splitlines(keepends=True)[:4]))
        shrunk = _tick(instance, project, grown.cursor)
        assert isinstance(shrunk, SensorResult) and _added(shrunk) == []
        assert _retired(shrunk) == ["ov-00002", "ov-00003", "ov-00004"] and len(shrunk.run_requests) == 1
        assert shrunk.cursor not in (first.cursor, grown.cursor)
        requests += shrunk.run_requests
        assert sorted(instance.get_dynamic_partitions("pool_chunks")) == [
            "ov-00000", "ov-00001", "vv-00000", "vv-00001",
        ]

        # Back to the first state: the same cursor as the first tick, chunk 2 comes back, and a run observes it.
        ov.write_text(original)
        back = _tick(instance, project, shrunk.cursor)
        assert isinstance(back, SensorResult) and _added(back) == ["ov-00002"] and _retired(back) == []
        assert len(back.run_requests) == 1 and back.cursor == first.cursor
        requests += back.run_requests
    # Dagster launches one run per run key ever: no two requests may share one.
    keys = [r.run_key for r in requests if r.run_key is not None]
    assert len(keys) == len(set(keys))


def test_sensor_skips_without_pool_files(tmp_path):
    with DagsterInstance.ephemeral() as instance:
        result = _tick(instance, GdoProject(data_dir=str(tmp_path)), None)
        assert isinstance(result, SkipReason)
        assert result.skip_message == "no pool files configured (set GDO_ONEVISION / GDO_VIDEO)"
        assert instance.get_dynamic_partitions("pool_chunks") == []
