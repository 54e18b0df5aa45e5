"""The gdo code location: assets, checks, jobs, sensors and resources in one Definitions."""

from __future__ import annotations

from dagster import Definitions, define_asset_job, in_process_executor, multiprocess_executor

from gdo_assets.descriptors import DescriptorModel, descriptor_model_from_env, descriptor_shards
from gdo_assets.merge import descriptors
from gdo_assets.pool import (
    candidate_pool,
    observe_pool_job,
    pool_chunk_sensor,
    pool_files_source,
    pool_profile,
)
from gdo_assets.project import GdoProject, project_from_env
from gdo_assets.subsets import goal_subsets
from gdo_assets.training import (
    TrainingResource,
    benchmark_scores,
    checkpoints,
    convergence_report,
    training_from_env,
)

ingest_job = define_asset_job("ingest_pool", selection=[candidate_pool.key], tags={"gdo/stage": "pool"})
profile_job = define_asset_job("profile_pool", selection=[pool_profile.key], tags={"gdo/stage": "pool"})
describe_job = define_asset_job(
    "describe_chunks", selection=[descriptor_shards.key], tags={"gdo/stage": "descriptors"}
)
merge_job = define_asset_job("merge_descriptors", selection=[descriptors.key], tags={"gdo/stage": "merge"})
subsets_job = define_asset_job("build_subsets", selection=[goal_subsets.key], tags={"gdo/stage": "subsets"})
train_job = define_asset_job("train_arm", selection=[checkpoints.key], tags={"gdo/stage": "training"})
score_job = define_asset_job("score_arm", selection=[benchmark_scores.key], tags={"gdo/stage": "evaluation"})
report_job = define_asset_job("report_convergence", selection=[convergence_report.key], tags={"gdo/stage": "report"})


def build_definitions(
    project: GdoProject | None = None,
    descriptor_model: DescriptorModel | None = None,
    training: TrainingResource | None = None,
    *,
    in_process: bool = False,
) -> Definitions:
    """Definitions for one deployment; resources come from GDO_* environment variables by default."""
    return Definitions(
        assets=[
            pool_files_source, candidate_pool, pool_profile, descriptor_shards, descriptors, goal_subsets,
            checkpoints, benchmark_scores, convergence_report,
        ],
        jobs=[
            observe_pool_job, ingest_job, profile_job, describe_job, merge_job, subsets_job,
            train_job, score_job, report_job,
        ],
        sensors=[pool_chunk_sensor],
        resources={
            "gdo": project or project_from_env(),
            "descriptor_model": descriptor_model or descriptor_model_from_env(),
            "training": training or training_from_env(),
        },
        executor=in_process_executor if in_process else multiprocess_executor,
    )


defs = build_definitions()
