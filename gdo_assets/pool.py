"""Pool assets: the pool files as an observed source, candidate_pool per chunk, pool_profile.

Chunks are found through the pool index (gdo_core.pool_index, saved in the data folder):
observing the pool stats every file and reads only changed ones; candidate_pool reads its chunk
by byte range; pool_profile and the downstream assets take the live chunks from the index.
"""


import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    DagsterInstance,
    DataVersion,
    DataVersionsByPartition,
    Failure,
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
from gdo_core.pool import pool_files, summarize, write_parquet_atomic
from gdo_core.pool_index import (
    IndexChanges,
    IndexStats,
    PoolIndex,
    diff_indexes,
    drop_stamp,
    file_digest,
    index_pool,
    read_span,
    write_stamp,
)
from gdo_core.pool_profile import with_answer_distinct
from gdo_core.pool_stats import pool_profile as compute_pool_profile

QA_DIR = ("pool", "qa")
REJECTS_DIR = ("pool", "rejects")


def split_chunk_key(key: str) -> tuple[str, int]:
    """(pool name, chunk index) of a `<pool>-<index>` partition key."""
    name, _, index = key.rpartition("-")
    if not name or not index.isdigit():
        raise ValueError(f"partition key {key!r} is not of the form <pool>-<chunk index>")
    return name, int(index)


def register_chunks(
    instance: DagsterInstance,
    onevision: Path | list[Path] | None,
    video: Path | list[Path] | None,
    chunk_lines: int,
) -> tuple[list[str], int]:
    """Add the chunk partitions of the given pool files (a path or a list of paths of each kind)
    that the instance does not know yet, and retire (delete) the registered partitions of these
    files that they no longer have.

    Returns (new keys, chunks in the given files). `sync_partitions` does the same for a whole
    project, deleted files included.
    """
    index, _ = index_pool(pool_files(onevision, video), chunk_lines)
    keys = index.chunk_keys()
    names = {f.name for f in index.files}
    known = set(instance.get_dynamic_partitions(POOL_CHUNKS))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(POOL_CHUNKS, new)
    for key in sorted(known - set(keys)):
        if split_chunk_key(key)[0] in names:
            instance.delete_dynamic_partition(POOL_CHUNKS, key)
    return new, len(keys)


@dataclass(frozen=True)
class PoolSync:
    """What `sync_partitions` found and did."""

    index: PoolIndex
    stats: IndexStats
    changes: IndexChanges  # since the index saved before this sync
    added: tuple[str, ...]  # partitions registered now
    retired: tuple[str, ...]  # partitions deleted now


def sync_partitions(
    instance: DagsterInstance, project: GdoProject, *, rehash: bool = False, dry_run: bool = False
) -> PoolSync:
    """Refresh the pool index, register the chunk partitions it has that the instance lacks and
    delete the registered partitions it no longer has (a shrunk or deleted pool file).

    `dry_run`: nothing is saved, registered or deleted; the result says what would be.
    """
    previous = project.saved_index()
    index, stats = project.pool_index(rehash=rehash, save=not dry_run)
    keys = index.chunk_keys()
    known = instance.get_dynamic_partitions(POOL_CHUNKS)
    added = tuple(k for k in keys if k not in set(known))
    retired = tuple(sorted(set(known) - set(keys)))
    if not dry_run:
        if added:
            instance.add_dynamic_partitions(POOL_CHUNKS, list(added))
        for key in retired:
            instance.delete_dynamic_partition(POOL_CHUNKS, key)
    return PoolSync(index, stats, diff_indexes(previous, index), added, retired)


@observable_source_asset(
    name="pool_files",
    partitions_def=pool_chunks,
    required_resource_keys={"gdo"},
    group_name="pool",
    description=(
        "The pool files, observed per chunk: each chunk's data version is a fingerprint of its bytes "
        "(only files whose size, mtime or inode changed are read)."
    ),
)
def pool_files_source(context) -> DataVersionsByPartition:
    """Fingerprint every registered chunk, so only changed chunks turn their children stale."""
    project: GdoProject = context.resources.gdo
    known = set(context.instance.get_dynamic_partitions(POOL_CHUNKS))
    index, stats = project.pool_index()
    if project.settings:
        context.log.info(project.settings)
    context.log.info(
        f"pool index: {stats.files_unchanged} files unchanged (not read), {stats.files_read} read "
        f"({stats.bytes_read} bytes), {stats.files_missing} missing"
    )
    versions = {k: DataVersion(v) for k, v in index.fingerprints().items() if k in known}
    return DataVersionsByPartition(versions)


def candidate_pool_asset(code_version: str | None = None) -> AssetsDefinition:
    """The candidate_pool asset; `code_version`: the project's parse version (build_definitions)."""

    @asset(
        name="candidate_pool",
        partitions_def=pool_chunks,
        deps=[pool_files_source],
        group_name="pool",
        code_version=code_version,
        automation_condition=AutomationCondition.eager(),
        description="QA pairs of one pool chunk with their stratum fields (Parquet), and the chunk's rejects.",
    )
    def candidate_pool(context: AssetExecutionContext, gdo: GdoProject) -> MaterializeResult:
        """Parse one chunk of a pool file (read by its byte range) into QA rows and rejects."""
        return parse_chunk(context, gdo)

    return candidate_pool


def parse_chunk(context: AssetExecutionContext, gdo: GdoProject) -> MaterializeResult:
    """The body of candidate_pool: one chunk's QA rows and rejects, stamped with what they came from."""
    key = context.partition_key
    name, index = split_chunk_key(key)
    pool_index, _ = gdo.pool_index()
    entry = pool_index.file_named(name)
    span = entry.span(key) if entry is not None else None
    if entry is None or span is None:
        raise Failure(
            f"chunk {key} is no longer in the pool (its file shrank, was deleted or is no longer "
            "configured); `gdo backfill` retires its partition"
        )
    pool = gdo.pool_file(name)
    result, how = read_span(pool, entry, index, gdo.parse_options(pool))
    qa_path = gdo.path(*QA_DIR, f"{key}.parquet")
    rejects_path = gdo.path(*REJECTS_DIR, f"{key}.parquet")
    drop_stamp(qa_path)
    # The answers' token counts ride along, so no subset build has to count them again.
    write_parquet_atomic(with_answer_distinct(result.qa), qa_path)
    write_parquet_atomic(result.rejects, rejects_path)
    write_stamp(
        qa_path,
        chunk=span.fingerprint,
        parse=gdo.parse_version,
        qa=file_digest(qa_path),
        rejects=file_digest(rejects_path),
    )
    counts = result.counts
    return MaterializeResult(
        metadata={
            "qa_rows": counts["qa"],
            "rejects": counts["rejects"],
            "qa_per_bucket": MetadataValue.json(counts["qa_per_bucket"]),
            "rejects_per_reason": MetadataValue.json(counts["rejects_per_reason"]),
            "path": MetadataValue.path(str(qa_path)),
            "source_file": str(pool.path),
            "chunk_fingerprint": span.fingerprint,
            "bytes": max(span.end - span.start, 0),
            "read": how,
        },
        data_version=DataVersion(_file_digest(qa_path)),
    )


candidate_pool = candidate_pool_asset()


def _file_digest(path: Path) -> str:
    """sha256 of a written file (Parquet output is deterministic for the same rows)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def read_partitions(project: GdoProject, parts: tuple[str, ...], keys: list[str], schema: dict) -> pl.DataFrame:
    """Concatenate the Parquet files of the given chunk keys, in key order (missing ones are skipped)."""
    frames = [pl.read_parquet(p) for p in project.chunk_files(parts, keys)]
    return pl.concat(frames) if frames else S.empty_frame(schema)


@asset(
    deps=[candidate_pool],
    group_name="pool",
    description="Counts of the whole pool (every live chunk of the pool index) per stratum field, stratum, data source and source group.",
)
def pool_profile(context: AssetExecutionContext, gdo: GdoProject) -> MaterializeResult:
    """Profile every registered chunk's QAs and write profile.json beside the pool Parquet."""
    keys = gdo.pool_index()[0].chunk_keys()
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
            **({"settings": gdo.settings} if gdo.settings else {}),
        }
    )


observe_pool_job = define_asset_job("observe_pool", selection=[pool_files_source.key])


@sensor(job=observe_pool_job, minimum_interval_seconds=60)
def pool_chunk_sensor(
    context: SensorEvaluationContext, gdo: GdoProject
) -> SensorResult | SkipReason:
    """Register new chunk partitions, retire those the pool no longer has, and observe the pool
    whenever a chunk's fingerprint changes. A tick stats every pool file and reads only files
    whose size, mtime or inode changed (the pool index)."""
    if not gdo.onevision and not gdo.video:
        return SkipReason("no pool files configured (set GDO_ONEVISION / GDO_VIDEO)")
    index, _ = gdo.pool_index()
    keys = index.chunk_keys()
    known = context.instance.get_dynamic_partitions(POOL_CHUNKS)
    new = [k for k in keys if k not in set(known)]
    retired = sorted(set(known) - set(keys))
    digest = index.digest
    if digest == context.cursor and not new and not retired:
        return SkipReason("pool unchanged")
    requests = []
    if new:
        requests.append(pool_chunks.build_add_request(new))
    if retired:
        requests.append(pool_chunks.build_delete_request(retired))
    return SensorResult(
        # No run_key: Dagster launches at most one run per run key ever, so a pool edited back
        # to an earlier state (same digest) would never be observed again. The cursor already
        # asks once per change.
        run_requests=[RunRequest()],
        dynamic_partitions_requests=requests,
        cursor=digest,
    )
