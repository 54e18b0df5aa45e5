"""A living pool: find what changed, retire what left, and rerun only what is stale, through Dagster.

`plan_backfill` syncs the chunk partitions with the pool index (new chunks registered, chunks of a
shrunk or deleted file retired) and reads the stamps beside every output to say which chunks must
be parsed and described again, whether the merge and which subsets follow. `run_backfill` runs
exactly that as Dagster runs of the project's jobs (recorded on the instance), then prunes the
retired chunks' files. `gdo backfill` prints both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions

from gdo_assets.descriptors import DescriptorModel
from gdo_assets.merge import (
    CHECK_ERRORS,
    CHECK_EVERY_QA,
    CHECK_FINITE,
    DESCRIPTORS,
    SHARDS_DIR,
    db_path,
    merge_code_version,
    merge_inputs,
    merge_stamp,
)
from gdo_assets.pool import QA_DIR, REJECTS_DIR, PoolSync, sync_partitions
from gdo_assets.project import GdoProject
from gdo_assets.subsets import GOAL_SUBSETS, goal_profiles, members_path, shared_reads, subsets_stamp_fields
from gdo_core.pool_index import ChunkPlan, chunk_outputs, orphan_keys, plan_chunks, read_stamp

CHUNK_DIRS = (QA_DIR, REJECTS_DIR, SHARDS_DIR)
JOB_PARSE = "ingest_pool"
JOB_DESCRIBE = "describe_chunks"
JOB_MERGE = "merge_descriptors"
JOB_SUBSETS = "build_subsets"
JOB_OBSERVE = "observe_pool"
BLOCKING_MERGE_CHECKS = (CHECK_EVERY_QA, CHECK_FINITE, CHECK_ERRORS)


@dataclass
class BackfillPlan:
    """What is stale after syncing the partitions with the pool, and why."""

    sync: PoolSync
    chunks: ChunkPlan
    merge: str | None  # why the merge reruns (None: it is current)
    subsets: dict[str, str]  # profile -> why its subsets rebuild
    orphans: list[str]  # retired chunk keys whose output files are still there

    @property
    def any(self) -> bool:
        """Whether anything is to run or be pruned."""
        return self.chunks.any or self.merge is not None or bool(self.subsets) or bool(self.orphans)


@dataclass
class BackfillReport:
    """What `run_backfill` ran, and how many QAs it described vs took from the descriptor cache."""

    plan: BackfillPlan
    parsed: list[str] = field(default_factory=list)
    described: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> computed, reused, qa
    merged: bool = False
    merge_checks: dict[str, bool] = field(default_factory=dict)
    subsets: list[str] = field(default_factory=list)
    pruned: list[Path] = field(default_factory=list)
    subset_checks_failed: dict[str, list[str]] = field(default_factory=dict)  # built, but training stays blocked
    failed: str | None = None  # the run or blocking merge check that stopped the backfill

    @property
    def computed(self) -> int:
        """QAs whose descriptors were computed in this backfill."""
        return sum(v["computed"] for v in self.described.values())

    @property
    def reused(self) -> int:
        """QAs of the described chunks whose descriptors came from the per-QA cache."""
        return sum(v["reused"] for v in self.described.values())


def _chunk_folders(project: GdoProject) -> list[Path]:
    return [project.path(*parts) for parts in CHUNK_DIRS]


def plan_chunk_work(project: GdoProject, model: DescriptorModel, index) -> ChunkPlan:
    """Chunks to parse and describe, from the stamps beside their outputs."""
    return plan_chunks(
        index,
        project.path(*QA_DIR),
        project.path(*SHARDS_DIR),
        parse_version=project.parse_version,
        descriptor_version=model.code_version(),
    )


def plan_merge(project: GdoProject, model: DescriptorModel, index, chunks_change: bool) -> str | None:
    """Why the merge must run again, or None when the DuckDB file is current."""
    stamp = merge_stamp(project)
    if not db_path(project).is_file():
        return "missing"
    if chunks_change:
        return "its chunks change"
    if stamp is None:
        return "no stamp (merged before gdo recorded its inputs)"
    if stamp.get("inputs") != merge_inputs(project, index):
        return "its inputs changed"
    if stamp.get("code_version") != merge_code_version(model.code_version()):
        return "code version changed"
    return None


def plan_subsets(project: GdoProject, merge_runs: bool) -> dict[str, str]:
    """Profile -> why its subsets must be built again (missing, or the merge they used changed)."""
    out = {}
    for profile in goal_profiles.get_partition_keys():
        stamp = read_stamp(members_path(project, profile))
        if stamp is None:
            out[profile] = "missing"
        elif merge_runs:
            out[profile] = "the merge changes"
        elif stamp.get("merge") != subsets_stamp_fields(project, stamp.get("config", {}))["merge"]:
            out[profile] = "the merge changed"
    return out


def plan_backfill(
    defs: Definitions, instance: DagsterInstance, *, dry_run: bool = False, rehash: bool = False
) -> BackfillPlan:
    """Sync the partitions with the pool (unless `dry_run`) and say what is stale."""
    project: GdoProject = defs.resources["gdo"]
    model: DescriptorModel = defs.resources["descriptor_model"]
    sync = sync_partitions(instance, project, rehash=rehash, dry_run=dry_run)
    chunks = plan_chunk_work(project, model, sync.index)
    orphans = orphan_keys(sync.index, _chunk_folders(project))
    merge = plan_merge(project, model, sync.index, chunks.any or bool(orphans) or bool(sync.retired))
    return BackfillPlan(sync, chunks, merge, plan_subsets(project, merge is not None), orphans)


def _metadata(result: Any, node: str) -> dict[str, Any]:
    events = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in events[-1].metadata.items()} if events else {}


def _stamped_config(stamp: dict | None) -> dict | None:
    config = (stamp or {}).get("config")
    return {k: v for k, v in config.items() if v is not None} if config else None


def run_backfill(
    defs: Definitions,
    instance: DagsterInstance,
    *,
    rehash: bool = False,
    echo: Callable[[str], Any] = lambda line: None,
) -> BackfillReport:
    """Sync, then materialize exactly the stale and missing chunk partitions (candidate_pool,
    then descriptor_shards for the chunks whose QA rows really changed), the merge and the subsets
    that follow, as runs on `instance`; then delete the retired chunks' files.

    The merge and each profile's subsets rerun with the settings they were last built with (their
    stamps); a failed run stops the backfill (what ran is reported, `failed` says where).
    """
    project: GdoProject = defs.resources["gdo"]
    model: DescriptorModel = defs.resources["descriptor_model"]
    plan = plan_backfill(defs, instance, rehash=rehash)
    for line in describe_plan(plan):
        echo(line)
    report = BackfillReport(plan)
    if (plan.any or plan.sync.changes.any) and instance.get_dynamic_partitions("pool_chunks"):
        # The observation records each chunk's fingerprint as its data version (the UI's staleness).
        defs.resolve_job_def(JOB_OBSERVE).execute_in_process(instance=instance)

    def run(job: str, label: str, node: str, **kwargs: Any) -> tuple[Any, dict[str, bool]] | None:
        """(result, check name -> passed) of one run; None when it materialized nothing."""
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        if not result.asset_materializations_for_node(node):
            report.failed = label
            echo(f"failed: {label} (run {result.run_id}); stopping")
            return None
        return result, checks

    for key in plan.chunks.parse:
        if run(JOB_PARSE, f"candidate_pool[{key}]", "candidate_pool", partition_key=key) is None:
            return report
        report.parsed.append(key)
        echo(f"parsed candidate_pool[{key}]")
    describe = plan_chunk_work(project, model, plan.sync.index).describe if plan.chunks.parse else plan.chunks.describe
    for key in describe:
        done = run(JOB_DESCRIBE, f"descriptor_shards[{key}]", "descriptor_shards", partition_key=key)
        if done is None:
            return report
        meta = _metadata(done[0], "descriptor_shards")
        report.described[key] = {k: int(meta.get(k, 0)) for k in ("qa", "computed", "reused")}
        echo(f"described descriptor_shards[{key}]: {meta.get('computed')} QAs computed, {meta.get('reused')} reused")
    for key in plan.orphans:
        for path in chunk_outputs(_chunk_folders(project), [key]):
            path.unlink(missing_ok=True)
            report.pruned.append(path)
    if plan.merge is not None:
        config = _stamped_config(merge_stamp(project))
        done = run(
            JOB_MERGE, DESCRIPTORS, DESCRIPTORS,
            run_config={"ops": {DESCRIPTORS: {"config": config}}} if config else None,
        )
        if done is None:
            return report
        report.merged, report.merge_checks = True, done[1]
        failed = sorted(name for name, passed in done[1].items() if not passed and name in BLOCKING_MERGE_CHECKS)
        if failed:
            report.failed = f"{DESCRIPTORS} checks {', '.join(failed)}"
            echo(f"merge checks failed: {', '.join(failed)}; the subsets are not rebuilt")
            return report
        echo(f"merged descriptors ({_metadata(done[0], DESCRIPTORS).get('rows')} rows)")
    with shared_reads():  # the profiles' runs read the ingested pool and the metrics once
        for profile in plan_subsets(project, False) if plan.merge is not None else plan.subsets:
            config = _stamped_config(read_stamp(members_path(project, profile)))
            done = run(
                JOB_SUBSETS,
                f"{GOAL_SUBSETS}[{profile}]",
                GOAL_SUBSETS,
                partition_key=profile,
                run_config={"ops": {GOAL_SUBSETS: {"config": config}}} if config else None,
            )
            if done is None:
                return report
            report.subsets.append(profile)
            failed = sorted(name for name, passed in done[1].items() if not passed)
            if failed:
                report.subset_checks_failed[profile] = failed
            echo(f"built goal_subsets[{profile}]" + (f" (checks failed: {', '.join(failed)})" if failed else ""))
    return report


def describe_plan(plan: BackfillPlan, dry_run: bool = False) -> list[str]:
    """The plan as lines for the terminal (`dry_run`: partitions to register and retire, not done)."""
    sync, stats = plan.sync, plan.sync.stats
    lines = [
        (
            f"pool: {len(sync.index.files)} files ({stats.files_read} read, {stats.bytes_read} bytes; "
            f"{stats.files_unchanged} unchanged, not read), {len(sync.index.chunk_keys())} live chunks"
        )
    ]
    for path in sync.index.missing:
        lines.append(f"missing pool file: {path} (its chunks retire)")
    changes = sync.changes
    lines.append(
        f"since the last check: {len(changes.added)} new, {len(changes.changed)} changed, "
        f"{len(changes.retired)} gone"
    )

    def keys(values: Any) -> str:
        return ", ".join(values) if values else "none"

    lines.append(f"partitions {'to register' if dry_run else 'registered'}: {keys(sync.added)}")
    lines.append(f"partitions {'to retire' if dry_run else 'retired'}: {keys(sync.retired)}")
    lines.append(f"retired chunk files to delete: {keys(plan.orphans)}")
    lines.append(
        "candidate_pool to run: " + keys([f"{k} ({why})" for k, why in plan.chunks.parse.items()])
    )
    lines.append(
        "descriptor_shards to run: " + keys([f"{k} ({why})" for k, why in plan.chunks.describe.items()])
    )
    lines.append(f"descriptors (merge): {plan.merge or 'current'}")
    lines.append(
        "goal_subsets to run: " + keys([f"{p} ({why})" for p, why in plan.subsets.items()])
    )
    return lines


def describe_report(report: BackfillReport) -> list[str]:
    """What a backfill ran, as lines for the terminal."""
    lines = [
        f"ran candidate_pool: {', '.join(report.parsed) or 'none'}",
        f"ran descriptor_shards: {', '.join(report.described) or 'none'}",
        f"QAs described: {report.computed} computed, {report.reused} reused from the descriptor cache",
        f"ran descriptors (merge): {'yes' if report.merged else 'no'}",
        f"ran goal_subsets: {', '.join(report.subsets) or 'none'}",
        f"deleted {len(report.pruned)} files of retired chunks",
    ]
    for profile, checks in report.subset_checks_failed.items():
        lines.append(f"goal_subsets[{profile}]: checks failed: {', '.join(checks)} (its training stays blocked)")
    if report.failed:
        lines.append(f"stopped: {report.failed} failed")
    return lines

