"""Pool assets through Dagster: chunk partitions, rejects metadata, per-chunk staleness."""

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance

from dagster_project.definitions import build_definitions
from gdo_assets.pool import register_chunks, split_chunk_key
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


def _stale_keys(instance, asset: str, keys: list[str]) -> list[str]:
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from gdo_assets.pool import candidate_pool, pool_files_source, pool_profile

    resolver = get_stale_status_resolver(instance, [pool_files_source, candidate_pool, pool_profile])
    return [k for k in keys if resolver.get_status(AssetKey(asset), k) == StaleStatus.STALE]


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
        assert _stale_keys(instance, "candidate_pool", keys) == []

        lines = ov.read_text().splitlines()
        lines[3] = lines[3].replace("red", "blue")  # line 4: chunk ov-00001
        ov.write_text("\n".join(lines) + "\n")
        assert defs.resolve_job_def("observe_pool").execute_in_process(instance=instance).success
        assert _stale_keys(instance, "candidate_pool", keys) == ["ov-00001"]
