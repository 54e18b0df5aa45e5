"""The gdo code location: assets, checks, jobs, sensors and resources in one Definitions.

`defs` is loaded lazily by Dagster (`@definitions`): GDO_DEPLOYMENT and the other GDO_*
variables, and the settings file under them (gdo.toml or $GDO_SETTINGS:
gdo_assets.settings_file), are read when Dagster builds the definitions, not when this module
is imported.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import (
    AssetsDefinition,
    AutomationCondition,
    Definitions,
    define_asset_job,
    definitions,
)

from gdo_assets.deployment import LOCAL, deployment_from_env
from gdo_assets.descriptors import (
    DescriptorModel,
    descriptor_model_from_env,
    descriptor_shards,
    descriptor_shards_asset,
)
from gdo_assets.merge import descriptors, descriptors_asset, merge_code_version
from gdo_assets.pool import (
    candidate_pool,
    candidate_pool_asset,
    observe_pool_job,
    pool_chunk_sensor,
    pool_files_source,
    pool_profile,
)
from gdo_assets.project import EnvError, GdoProject, env_flag, project_from_env
from gdo_assets.settings_file import load_settings
from gdo_assets.subsets import goal_subsets
from gdo_assets.training import (
    TrainingResource,
    benchmark_scores,
    benchmark_scores_asset,
    checkpoints,
    checkpoints_asset,
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

AUTOMATION_VAR = "GDO_AUTOMATION"


def automation_enabled(env: Mapping[str, str] | None = None) -> bool:
    """GDO_AUTOMATION=1: descriptors, the merge and the subsets follow the pool by themselves."""
    return env_flag(AUTOMATION_VAR, env)


def follow_pool_conditions() -> dict[str, AutomationCondition]:
    """The opt-in automation: descriptor shards and the merge run eagerly when their inputs
    change; the subsets too, but only once every blocking check of the merge passed. Training
    and evaluation get none: they never start by themselves."""
    return {
        "descriptor_shards": AutomationCondition.eager(),
        "descriptors": AutomationCondition.eager(),
        "goal_subsets": AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
    }


def _with_condition(assets_def: AssetsDefinition, condition: AutomationCondition | None) -> AssetsDefinition:
    if condition is None:
        return assets_def
    return assets_def.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=condition))


def build_definitions(
    project: GdoProject | None = None,
    descriptor_model: DescriptorModel | None = None,
    training: TrainingResource | None = None,
    *,
    in_process: bool = False,
    deployment: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Definitions:
    """Definitions for one deployment profile (gdo_assets.deployment).

    The profile is `deployment`, else GDO_DEPLOYMENT from `env` (os.environ by default); resources
    not given come from the GDO_* variables of `env` with the profile's device settings. Under the
    variables lies the settings file (gdo_assets.settings_file): $GDO_SETTINGS of `env`, else,
    when `env` is None, gdo.toml in the working directory; a variable set in `env` wins over the
    file's key. With `in_process` (tests, the demo) every step runs in this process, under the
    local profile unless `deployment` names another.
    """
    settings = load_settings(env)
    try:
        return _build(project, descriptor_model, training, in_process, deployment, settings.env, settings.describe())
    except EnvError as exc:
        raise settings.explain(exc) from None


def _build(
    project: GdoProject | None,
    descriptor_model: DescriptorModel | None,
    training: TrainingResource | None,
    in_process: bool,
    deployment: str | None,
    env: Mapping[str, str],
    origin: str,
) -> Definitions:
    profile = deployment_from_env(env, name=deployment or (LOCAL if in_process else None))
    project = project or project_from_env(env, settings=origin, **profile.project_fields())
    descriptor_model = descriptor_model or descriptor_model_from_env(env, **profile.descriptor_fields(env))
    # Code versions: a changed parse setting, descriptor setting or model turns its assets stale.
    descriptor_version = descriptor_model.code_version()
    conditions = follow_pool_conditions() if automation_enabled(env) else {}
    return Definitions(
        assets=[
            pool_files_source, candidate_pool_asset(project.parse_version), pool_profile,
            descriptor_shards_asset(
                profile.gpu_op_tags(1), descriptor_version, conditions.get("descriptor_shards")
            ),
            descriptors_asset(merge_code_version(descriptor_version), conditions.get("descriptors")),
            _with_condition(goal_subsets, conditions.get("goal_subsets")),
            checkpoints_asset(profile.gpu_op_tags(profile.gpus_per_train_step)),
            benchmark_scores_asset(profile.gpu_op_tags(1)), convergence_report,
        ],
        jobs=[
            observe_pool_job, ingest_job, profile_job, describe_job, merge_job, subsets_job,
            train_job, score_job, report_job,
        ],
        sensors=[pool_chunk_sensor, *profile.sensors()],
        resources={
            "gdo": project,
            "descriptor_model": descriptor_model,
            "training": training or training_from_env(env, **profile.training_fields(env)),
        },
        executor=profile.executor(in_process),
        metadata={"gdo/settings": project.settings or origin},
    )


@definitions
def defs() -> Definitions:
    """The code location Dagster loads (dagster dev, the webserver, run and step workers)."""
    return build_definitions()
