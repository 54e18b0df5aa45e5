"""Pool assets: the pool files as an observed source, candidate_pool per chunk, pool_profile."""


import hashlib
import json
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    DagsterInstance,
    DataVersion,
    DataVersionsByPartition,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    observable_source_asset,
    sensor,
)

from gdo_assets.partitions import POOL_CHUNKS, pool_chunks
from gdo_assets.project import GdoProject
from gdo_core import schema as S
from gdo_core.pool import (
    chunk_fingerprints,
    pool_files,
    read_chunk,
    summarize,
    write_parquet_atomic,
)
from gdo_core.pool_stats import pool_profile as compute_pool_profile

QA_DIR = ("pool", "qa")
REJECTS_DIR = ("pool", "rejects")


def split_chunk_key(key: str) -> tuple[str, int]:
    """(pool name, chunk index) of a `<pool>-<index>` partition key."""
    name, _, index = key.rpartition("-")
    if not name or not index.isdigit():
        raise ValueError(f"partition key {key!r} is not of the form <pool>-<chunk index>")
    return name, int(index)


def all_fingerprints(project: GdoProject) -> dict[str, str]:
    """Chunk key -> content fingerprint for every configured pool file."""
    out: dict[str, str] = {}
    for pool in project.pool_files():
        out.update(chunk_fingerprints(pool.path, project.chunk_lines))
    return out


def register_chunks(
    instance: DagsterInstance, onevision: Path | None, video: Path | None, chunk_lines: int
) -> tuple[list[str], int]:
    """Add the chunk partitions of the given pool files that the instance does not know yet."""
    keys = [k for f in pool_files(onevision, video) for k in chunk_fingerprints(f.path, chunk_lines)]
    known = set(instance.get_dynamic_partitions(POOL_CHUNKS))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(POOL_CHUNKS, new)
    return new, len(keys)


@observable_source_asset(
    name="pool_files",
    partitions_def=pool_chunks,
    required_resource_keys={"gdo"},
    group_name="pool",
    description="The pool files, observed per chunk: each chunk's data version is a fingerprint of its lines.",
)
def pool_files_source(context) -> DataVersionsByPartition:
    """Fingerprint every registered chunk, so only changed chunks turn their children stale."""
    project: GdoProject = context.resources.gdo
    known = set(context.instance.get_dynamic_partitions(POOL_CHUNKS))
    versions = {k: DataVersion(v) for k, v in all_fingerprints(project).items() if k in known}
    return DataVersionsByPartition(versions)


@asset(
    partitions_def=pool_chunks,
    deps=[pool_files_source],
    group_name="pool",
    automation_condition=AutomationCondition.eager(),
    description="QA pairs of one pool chunk with their stratum fields (Parquet), and the chunk's rejects.",
)
def candidate_pool(context: AssetExecutionContext, gdo: GdoProject) -> MaterializeResult:
    """Parse one chunk of a pool file into QA rows and rejects, each written as Parquet."""
    key = context.partition_key
    name, index = split_chunk_key(key)
    pool = gdo.pool_file(name)
    result = read_chunk(pool, index, gdo.chunk_lines, gdo.parse_options(pool))
    qa_path = write_parquet_atomic(result.qa, gdo.path(*QA_DIR, f"{key}.parquet"))
    write_parquet_atomic(result.rejects, gdo.path(*REJECTS_DIR, f"{key}.parquet"))
    counts = result.counts
    return MaterializeResult(
        metadata={
            "qa_rows": counts["qa"],
            "rejects": counts["rejects"],
            "qa_per_bucket": MetadataValue.json(counts["qa_per_bucket"]),
            "rejects_per_reason": MetadataValue.json(counts["rejects_per_reason"]),
            "path": MetadataValue.path(str(qa_path)),
            "source_file": str(pool.path),
        },
        data_version=DataVersion(_file_digest(qa_path)),
    )


def _file_digest(path: Path) -> str:
    """sha256 of a written file (Parquet output is deterministic for the same rows)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def read_partitions(project: GdoProject, parts: tuple[str, ...], keys: list[str], schema: dict) -> pl.DataFrame:
    """Concatenate the Parquet files of the given chunk keys (missing ones are skipped)."""
    frames = [pl.read_parquet(p) for p in project.chunk_files(parts, keys)]
    return pl.concat(frames) if frames else S.empty_frame(schema)


@asset(
    deps=[candidate_pool],
    group_name="pool",
    description="Counts of the whole pool per stratum field, stratum, data source and source group.",
)
def pool_profile(context: AssetExecutionContext, gdo: GdoProject) -> MaterializeResult:
    """Profile every registered chunk's QAs and write profile.json beside the pool Parquet."""
    keys = context.instance.get_dynamic_partitions(POOL_CHUNKS)
    qa = read_partitions(gdo, QA_DIR, keys, S.QA_SCHEMA)
    rejects = read_partitions(gdo, REJECTS_DIR, keys, S.REJECT_SCHEMA)
    profile = compute_pool_profile(qa)
    counts = summarize(qa, rejects)
    profile["rejects_per_reason"] = counts["rejects_per_reason"]
    path = gdo.path("pool", "profile.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(profile, indent=1, sort_keys=True))
    tmp.replace(path)
    top_groups = list(profile["source_group"].items())[:15]
    table = "| source group | QAs |\n|---|---|\n" + "\n".join(f"| {g} | {n} |" for g, n in top_groups)
    return MaterializeResult(
        metadata={
            "qa_rows": counts["qa"],
            "rejects": counts["rejects"],
            "chunks": len(keys),
            "strata": len(profile["strata"]),
            "videos": profile["videos"],
            "qa_per_bucket": MetadataValue.json(counts["qa_per_bucket"]),
            "rejects_per_reason": MetadataValue.json(counts["rejects_per_reason"]),
            "video_temporal_category": MetadataValue.json(profile["video_temporal_category"]),
            "question_form": MetadataValue.json(profile["fields"]["question_form"]),
            "top_source_groups": MetadataValue.md(table),
            "path": MetadataValue.path(str(path)),
        }
    )


observe_pool_job = define_asset_job("observe_pool", selection=[pool_files_source.key])


@sensor(job=observe_pool_job, minimum_interval_seconds=60)
def pool_chunk_sensor(
    context: SensorEvaluationContext, gdo: GdoProject
) -> SensorResult | SkipReason:
    """Register new chunk partitions and observe the pool whenever its fingerprints change."""
    if not gdo.onevision and not gdo.video:
        return SkipReason("no pool files configured (set GDO_ONEVISION / GDO_VIDEO)")
    fingerprints = all_fingerprints(gdo)
    known = set(context.instance.get_dynamic_partitions(POOL_CHUNKS))
    new = [k for k in fingerprints if k not in known]
    digest = hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()
    if digest == context.cursor and not new:
        return SkipReason("pool unchanged")
    return SensorResult(
        # No run_key: Dagster launches at most one run per run key ever, so a pool edited back
        # to an earlier state (same digest) would never be observed again. The cursor already
        # asks once per change.
        run_requests=[RunRequest()],
        dynamic_partitions_requests=[pool_chunks.build_add_request(new)] if new else [],
        cursor=digest,
    )
