"""descriptor_shards through Dagster: one shard per chunk, and an edited line recomputes only its QA."""

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from gdo_assets.descriptors import GPU_POOL, DescriptorModel, descriptor_shards
from gdo_assets.pool import candidate_pool, pool_files_source, register_chunks
from gdo_assets.project import GdoProject
from gdo_core.schema import DESCRIPTOR_SCHEMA

CHUNK_LINES = 7  # the small demo pool in a few chunks per file


def _metadata(result, asset: str = "descriptor_shards") -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


@pytest.mark.e2e
def test_descriptor_shards_recompute_only_the_edited_qa(tmp_path: Path) -> None:
    from gdo_core.demo import make_demo_pool
    from gdo_core.tiny_model import build_tiny_model

    pool = make_demo_pool(tmp_path / "demo", n_image_rows=8, n_videos=4)
    project = GdoProject(
        data_dir=str(tmp_path / "data"), onevision=[str(pool.onevision)], video=[str(pool.video)], chunk_lines=CHUNK_LINES
    )
    resources = {
        "gdo": project,
        "descriptor_model": DescriptorModel(
            model_dir=str(build_tiny_model(tmp_path / "model")), sc_samples=2, batch_size=4, torch_threads=1
        ),
    }
    assets = [pool_files_source, candidate_pool, descriptor_shards]
    assert descriptor_shards.op.pool == GPU_POOL
    assert "nvidia.com/gpu" in json.dumps(descriptor_shards.op.tags["dagster-k8s/config"])
    with DagsterInstance.ephemeral() as instance:
        keys, total = register_chunks(instance, pool.onevision, pool.video, CHUNK_LINES)
        n_lines = [len(path.read_text().splitlines()) for path in (pool.onevision, pool.video)]
        assert total == sum(-(-n // CHUNK_LINES) for n in n_lines) and len(keys) == total
        first: dict[str, dict] = {}
        for key in sorted(keys):
            result = materialize(assets, partition_key=key, instance=instance, resources=resources,
                                 selection=[candidate_pool, descriptor_shards])
            assert result.success
            first[key] = _metadata(result)
            assert first[key]["computed"] == first[key]["qa"] and first[key]["reused"] == 0
            shard = pl.read_parquet(project.path("descriptors", "shards", f"{key}.parquet"))
            assert shard.schema == pl.Schema(DESCRIPTOR_SCHEMA) and shard.height == first[key]["qa"]
        assert sum(m["qa"] for m in first.values()) == pool.n_image_qas + pool.n_video_qas

        lines = pool.onevision.read_text().splitlines()
        row = json.loads(lines[0])
        answer = next(m for m in row["messages"] if m["role"] == "assistant")
        answer["content"] = answer["content"] + " Edited."
        lines[0] = json.dumps(row)
        pool.onevision.write_text("\n".join(lines) + "\n")
        edited = f"{Path(pool.onevision).name.split('.')[0]}-00000"
        result = materialize(assets, partition_key=edited, instance=instance, resources=resources,
                             selection=[candidate_pool, descriptor_shards])
        again = _metadata(result)
        assert (again["computed"], again["reused"]) == (1, first[edited]["qa"] - 1)
        untouched = min(k for k in keys if k != edited)
        result = materialize(assets, partition_key=untouched, instance=instance, resources=resources,
                             selection=[descriptor_shards])
        assert (_metadata(result)["computed"], _metadata(result)["reused"]) == (0, first[untouched]["qa"])
