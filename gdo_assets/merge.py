"""The `descriptors` asset: every descriptor shard merged into the project DuckDB file, with quality checks."""

import base64
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from gdo_assets.pool import QA_DIR, REJECTS_DIR, candidate_pool
from gdo_assets.project import DB_FILE, GdoProject
from gdo_core import merge
from gdo_core.pool_index import PoolIndex, content_key, inputs_digest, read_stamp, write_stamp
from gdo_core.sql import late_views

# Where the pieces live inside the project data folder.
SHARDS_DIR = ("descriptors", "shards")
PLOT_FILE = ("descriptors", "distributions.png")
# The partitioned asset that writes one shard per pool chunk (DESCRIPTOR_SCHEMA Parquet).
DESCRIPTOR_SHARDS = AssetKey("descriptor_shards")
DESCRIPTORS = "descriptors"

CHECK_EVERY_QA = "every_qa_has_descriptor"
CHECK_FINITE = "score_inputs_finite"
CHECK_CLUSTERS = "cluster_count_as_configured"
CHECK_ERRORS = "model_error_share_below_bound"
DEFAULT_MAX_ERROR_SHARE = 0.2
# Bump when a change to gdo_core.merge changes the merged tables: the merge goes stale.
MERGE_REVISION = 1


class MergeConfig(Config):
    """Settings of the merge (docs/method.md, Merge and the shared score)."""

    clusters: int | None = Field(
        default=None,
        ge=1,
        description="k of the k-means coverage feature (default min(4096, rows)).",
    )
    seed: int = Field(
        default=merge.DEFAULT_SEED, description="Seed of k-means and of the stats sample."
    )
    max_error_share: float = Field(
        default=DEFAULT_MAX_ERROR_SHARE,
        ge=0.0,
        le=1.0,
        description="Largest share of QAs whose model pass may have failed before the merge is blocked.",
    )


def merge_code_version(descriptor_version: str | None) -> str:
    """The descriptors (merge) asset's code version: merge revision, the merge settings' defaults
    and the descriptor shards' code version (settings and model stamp)."""
    defaults = {name: info.default for name, info in MergeConfig.model_fields.items()}
    return content_key(
        {"revision": MERGE_REVISION, "defaults": defaults, "descriptors": descriptor_version}
    )[:16]


def merge_inputs(project: GdoProject, index: PoolIndex) -> str:
    """Key over what a merge of the live chunks reads (their QA files and shards, by stamp)."""
    return inputs_digest(index, project.path(*QA_DIR), project.path(*SHARDS_DIR))


def merge_stamp(project: GdoProject) -> dict | None:
    """What the current DuckDB file was merged from (None: no merge, or made before stamps)."""
    return read_stamp(db_path(project))


def db_path(project: GdoProject) -> Path:
    """The project's DuckDB file (the one `gdo sql` reads)."""
    return project.path(*DB_FILE)


def query_views(project: GdoProject) -> dict[str, str]:
    """Parquet outputs exposed as DuckDB views: persistent ones made by the merge (the single
    writer), the same as TEMP views by `gdo sql` for outputs written after it."""
    return late_views(project.path(*DB_FILE))


def _stats_table(report: merge.MergeReport) -> str:
    """The robust stats as a markdown table."""
    lines = [
        "| signal | centre (median) | scale (IQR/1.349) | q1 | q3 | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, stat in report.stats.items():
        lines.append(
            f"| {name} | {stat.center:.6g} | {stat.scale:.6g} | {stat.q1:.6g} | {stat.q3:.6g} | {stat.n} |"
        )
    return "\n".join(lines)


def _checks(
    report: merge.MergeReport, counts: dict[str, int], config: MergeConfig
) -> list[AssetCheckResult]:
    """The four quality checks of a merged database."""
    expected_k = min(config.clusters or merge.DEFAULT_MAX_CLUSTERS, counts["rows"])
    return [
        AssetCheckResult(
            check_name=CHECK_EVERY_QA,
            passed=counts["qa_without_descriptor"] == 0,
            metadata={
                "qa_rows": counts["qa_rows"],
                "qa_without_descriptor": counts["qa_without_descriptor"],
            },
        ),
        AssetCheckResult(
            check_name=CHECK_FINITE,
            passed=counts["nonfinite_score_rows"] == 0,
            metadata={
                "nonfinite_score_rows": counts["nonfinite_score_rows"],
                "columns": ", ".join(merge.SCORE_COLUMNS),
            },
        ),
        AssetCheckResult(
            check_name=CHECK_CLUSTERS,
            passed=counts["clusters"] == expected_k
            and counts["max_cluster_id"] < max(expected_k, 1),
            severity=AssetCheckSeverity.WARN,
            metadata={
                "k": counts["clusters"],
                "expected_k": expected_k,
                "clusters_used": counts["distinct_clusters"],
            },
        ),
        AssetCheckResult(
            check_name=CHECK_ERRORS,
            passed=report.error_share <= config.max_error_share,
            metadata={
                "error_rows": counts["error_rows"],
                "error_share": report.error_share,
                "bound": config.max_error_share,
            },
        ),
    ]


def descriptors_asset(
    code_version: str | None = None, automation_condition: AutomationCondition | None = None
) -> AssetsDefinition:
    """The descriptors (merge) asset with a code version (`merge_code_version`) and an automation
    condition (GDO_AUTOMATION)."""

    @asset(
        name=DESCRIPTORS,
        deps=[DESCRIPTOR_SHARDS, candidate_pool],
        group_name="descriptors",
        code_version=code_version,
        automation_condition=automation_condition,
        check_specs=[
            AssetCheckSpec(
                CHECK_EVERY_QA,
                asset=DESCRIPTORS,
                blocking=True,
                description="Every accepted QA has a descriptor row.",
            ),
            AssetCheckSpec(
                CHECK_FINITE,
                asset=DESCRIPTORS,
                blocking=True,
                description="No null, NaN or infinite value among the score inputs.",
            ),
            AssetCheckSpec(
                CHECK_CLUSTERS,
                asset=DESCRIPTORS,
                description="k is min(configured clusters, rows) and every cluster id is below k.",
            ),
            AssetCheckSpec(
                CHECK_ERRORS,
                asset=DESCRIPTORS,
                blocking=True,
                description="The share of failed model passes is within the configured bound.",
            ),
        ],
        description="Descriptor shards merged into DuckDB (qa, descriptors, rejects, merge_report) with robust z-stats, k-means coverage and rho(x).",
    )
    def descriptors(
        context: AssetExecutionContext, config: MergeConfig, gdo: GdoProject
    ) -> MaterializeResult:
        """Merge every live chunk's shard, QA rows and rejects into the project DuckDB file in one transaction."""
        return merge_chunks(context, config, gdo, code_version)

    return descriptors


def merge_chunks(
    context: AssetExecutionContext, config: MergeConfig, gdo: GdoProject, code_version: str | None
) -> MaterializeResult:
    """The body of the descriptors asset: the live chunks of the pool index (a retired chunk's
    files, if any are left, are not read), merged and stamped with what they were."""
    index, _ = gdo.pool_index()
    keys = index.chunk_keys()
    inputs = merge_inputs(gdo, index)
    shards = gdo.chunk_files(SHARDS_DIR, keys)
    path = db_path(gdo)
    report = merge.merge_to_duckdb(
        shards,
        gdo.chunk_files(QA_DIR, keys),
        gdo.chunk_files(REJECTS_DIR, keys),
        path,
        clusters=config.clusters,
        seed=config.seed,
        views=query_views(gdo),
    )
    write_stamp(path, inputs=inputs, code_version=code_version, config=config.model_dump())
    counts = merge.check_counts(path)
    plot = merge.plot_descriptor_distributions(path, gdo.path(*PLOT_FILE))
    image = base64.b64encode(plot.read_bytes()).decode()
    context.log.info(f"merged {report.rows} descriptor rows from {len(shards)} shards into {path}")
    return MaterializeResult(
        metadata={
            "rows": report.rows,
            "qa_rows": report.qa_rows,
            "reject_rows": report.reject_rows,
            "shards": len(shards),
            "chunks": len(keys),
            "inputs": inputs,
            "clusters": report.clusters,
            "error_rows": report.error_rows,
            "stats_sampled": report.stats_sampled,
            "z_stats": MetadataValue.md(_stats_table(report)),
            "z_stats_json": MetadataValue.json({k: v.as_dict() for k, v in report.stats.items()}),
            "timings_s": MetadataValue.json({k: round(v, 3) for k, v in report.timings_s.items()}),
            "distributions": MetadataValue.md(
                f"![descriptor distributions by bucket](data:image/png;base64,{image})"
            ),
            "plot_path": MetadataValue.path(str(plot)),
            "path": MetadataValue.path(str(path)),
        },
        check_results=_checks(report, counts, config),
    )


descriptors = descriptors_asset()
