"""`gdo demo`: build the demo world and run the asset chain on it with a local Dagster instance."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _dagster_home(data_dir: Path) -> Path:
    home = data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


def run_demo(data_dir: Path, *, seed: int = 0, chunk_lines: int = 40, echo: Callable[[str], Any] = print) -> dict:
    """Create the demo pool and tiny model if missing, then materialize every asset on them."""
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from gdo_assets.descriptors import DescriptorModel
    from gdo_assets.pool import register_chunks
    from gdo_assets.project import GdoProject
    from gdo_assets.subsets import goal_profiles
    from gdo_core.demo import make_demo_pool
    from gdo_core.tiny_model import build_tiny_model

    started = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(_dagster_home(data_dir))
    pool_dir = data_dir / "demo" / "pool"
    echo(f"demo pool -> {pool_dir}")
    demo_pool = make_demo_pool(pool_dir, seed=seed)
    model_dir = data_dir / "tiny-model"
    if not (model_dir / "config.json").exists():
        echo(f"tiny model -> {model_dir}")
        build_tiny_model(model_dir, seed=seed)
    project = GdoProject(
        data_dir=str(data_dir),
        onevision=[str(demo_pool.onevision)],
        video=[str(demo_pool.video)],
        chunk_lines=chunk_lines,
    )
    model = DescriptorModel(model_dir=str(model_dir), device="cpu")
    defs = build_definitions(project, model, in_process=True)
    with DagsterInstance.get() as instance:
        new, total = register_chunks(instance, demo_pool.onevision, demo_pool.video, chunk_lines)
        echo(f"chunk partitions: {total} ({len(new)} new)")
        _run(defs, "observe_pool", instance)
        keys = instance.get_dynamic_partitions("pool_chunks")
        for key in keys:
            _run(defs, "ingest_pool", instance, partition_key=key)
        result = _run(defs, "profile_pool", instance)
        metadata = _materialization_metadata(result, "pool_profile")
        echo(f"QA pairs: {metadata.get('qa_rows')} {metadata.get('qa_per_bucket')}")
        echo(f"rejects: {metadata.get('rejects')} {metadata.get('rejects_per_reason')}")
        described = []
        for key in keys:
            echo(f"descriptors: chunk {key}")
            run = _run(defs, "describe_chunks", instance, partition_key=key)
            described.append(_materialization_metadata(run, "descriptor_shards"))
        merged = _materialization_metadata(_run(defs, "merge_descriptors", instance), "descriptors")
        echo(f"merged descriptors into {data_dir / 'gdo.duckdb'}")
        subsets = {}
        for profile in goal_profiles.get_partition_keys():
            meta = _materialization_metadata(
                _run(defs, "build_subsets", instance, partition_key=profile), "goal_subsets"
            )
            subsets[profile] = {k: meta.get(k) for k in ("target_count", "uni_count", "unmet_constraints")}
            echo(f"goal subsets [{profile}]: {subsets[profile]}")
    report = {
        "data_dir": str(data_dir),
        "dagster_home": os.environ["DAGSTER_HOME"],
        "chunks": len(keys),
        "qa_rows": metadata.get("qa_rows"),
        "qa_per_bucket": metadata.get("qa_per_bucket"),
        "rejects": metadata.get("rejects"),
        "rejects_per_reason": metadata.get("rejects_per_reason"),
        "strata": metadata.get("strata"),
        "descriptors": {
            "computed": sum(int(m.get("computed", 0) or 0) for m in described),
            "reused": sum(int(m.get("reused", 0) or 0) for m in described),
            "rows": merged.get("rows"),
            "error_rows": merged.get("error_rows"),
        },
        "subsets": subsets,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def _run(defs, job_name: str, instance, **kwargs):
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, run_config=quiet, **kwargs)
    if not result.success:
        raise RuntimeError(f"Dagster job {job_name} failed")
    return result


def _materialization_metadata(result, asset_name: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset_name:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {}
