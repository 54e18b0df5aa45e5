"""The `goal_subsets` asset: GDO 1x and Uni-10x per goal profile, with blocking quality checks.

One partition per profile: the four presets plus the user profile files found in the profiles
folder ($GDO_PROFILES_DIR) when the code location loads. Each partition calls
`gdo_core.build.build_from_pool` on the ingested QA chunks and the merged descriptors, writes both
SFT files, report.json, profile.json and its members as Parquet (the `subset_members` view).
"""

import base64
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from gdo_assets.pool import QA_DIR
from gdo_assets.project import DB_FILE, GdoProject
from gdo_core import schema as S
from gdo_core.build import BuildResult, build_from_pool, load_metrics
from gdo_core.metrics_file import MetricsTable
from gdo_core.pool_profile import ANSWER_DISTINCT
from gdo_core.candidate_score import Ablations
from gdo_core.pool_index import content_key, read_stamp, write_stamp
from gdo_core.profiles import available_profiles, load_profile, profiles_dir_from_env
from gdo_core.select import load_exclusion_reference
from gdo_core.sql import SUBSET_MEMBERS_GLOB

GOAL_SUBSETS = "goal_subsets"
SUBSETS_DIR = ("subsets",)
# The Parquet files behind the DuckDB view subset_members(profile, arm, qa_uid, rank, stage, score).
COMPOSITION_PLOT = "composition.png"
PLOT_FIELDS = ("bucket", "temporal_category", "duration_bucket", "question_form", "source_group")
PLOT_TOP_VALUES = 10

CHECK_CONSTRAINTS = "hard_constraints_met"
# Left beside a subset whose unmet constraints the user waived (allow_unmet_constraints); checkpoints reads it.
WAIVER_FILE = "constraints_waived.json"
CHECK_UNIQUE = "no_duplicate_qa"
CHECK_VIDEO_CAP = "per_video_cap_held"
CHECK_EXCLUSION = "no_excluded_qa"

# Profiles are static partitions, read once when the code location loads.
goal_profiles = StaticPartitionsDefinition(list(available_profiles(profiles_dir_from_env())))


class SubsetsConfig(Config):
    """Settings of a subset build (the `gdo build` flags)."""

    compat: str | None = Field(
        default=None,
        description="'published' reproduces the published build step, quirks included.",
    )
    target_count: int | None = Field(
        default=None, ge=1, description="Fixed 1x size (default: auto)."
    )
    target_ratio: float | None = Field(
        default=None, gt=0, le=1, description="Fixed 1x share of the pool."
    )
    uni_count: int | None = Field(
        default=None,
        ge=1,
        description="Fixed Uni baseline size (default: ceil(1x * uni_multiplier)).",
    )
    no_vds: bool = Field(default=False, description="Ablation: drop the vds3' term.")
    no_ppl: bool = Field(
        default=False, description="Ablation: drop the naturalness (PPL-like) term."
    )
    no_sc: bool = Field(default=False, description="Ablation: drop the quality (SC) term.")
    no_vds3_budget: bool = Field(default=False, description="Ablation: no VDS3 budget adjustment.")
    exclude_reference: list[str] = Field(
        default_factory=list,
        description="Benchmark JSONL files whose questions must not be selected.",
    )
    exclude_mode: str = Field(default="both", description="question, qa or both.")
    seed: int | None = Field(default=None, description="Seed (default: the profile's, 42).")
    allow_unmet_constraints: bool = Field(
        default=False,
        description="Let a subset whose hard constraints are unmet pass its check and be trained (opt-out).",
    )


def subsets_dir(project: GdoProject, profile: str) -> Path:
    """Where one profile's subset files go."""
    return project.path(*SUBSETS_DIR, profile)


def member_files(project: GdoProject) -> list[Path]:
    """Every profile's subset_members.parquet (what the `subset_members` view reads)."""
    return sorted(project.root.glob("/".join(SUBSET_MEMBERS_GLOB)))


def scan_ordered_qa(project: GdoProject) -> pl.DataFrame:
    """Every live chunk's QA rows (the pool index), in the scan order of `gdo build`: pool files as
    configured, chunks by index, low-cardinality columns Categorical as `gdo build` holds them, and
    the chunks' `answer_distinct` counts when every chunk has them. A retired chunk's leftover file
    is not read. Inside `shared_reads()` a second call on unchanged files returns the same table."""
    folder = project.path(*QA_DIR)
    paths = [folder / f"{key}.parquet" for key in project.pool_index()[0].chunk_keys()]
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise FileNotFoundError(
            f"{folder}: no ingested QA chunks; materialize candidate_pool first"
        )
    return _shared("qa", paths, lambda: _read_qa(paths))


def _read_qa(paths: list[Path]) -> pl.DataFrame:
    # Chunks ingested before they carried answer_distinct leave it null: the build counts it then.
    qa = pl.concat([pl.read_parquet(path) for path in paths], how="diagonal_relaxed")
    extra = [ANSWER_DISTINCT] if ANSWER_DISTINCT in qa.columns else []
    return qa.select(
        *(pl.col(name).cast(pl.Categorical) if name in S.LOW_CARD_COLUMNS else pl.col(name) for name in S.QA_SCHEMA),
        *extra,
    )


def load_merged_metrics(db: Path, strict: bool) -> MetricsTable:
    """The merged descriptors as the selection reads them (shared inside `shared_reads()`)."""
    # Prepared for the mode its strictness goes with (default: strict), as `gdo build` prepares it.
    mode = "default" if strict else "published"
    return _shared(f"metrics:{strict}", [db], lambda: load_metrics(db, strict=strict).with_prepared(mode))


_SHARED_READS: dict[str, tuple[Any, Any]] | None = None  # what -> (files' facts, value)


@contextmanager
def shared_reads() -> Iterator[None]:
    """Within the block, builds in this process (one profile after another, as a backfill runs
    them) read the ingested pool and the merged metrics once while their files are unchanged."""
    global _SHARED_READS
    outer, _SHARED_READS = _SHARED_READS, {}
    try:
        yield
    finally:
        _SHARED_READS = outer


def _shared(what: str, paths: list[Path], read: Callable[[], Any]) -> Any:
    """read(), or its value from an earlier call in the same shared_reads() on files with the same
    path, inode, size and modification time."""
    if _SHARED_READS is None:
        return read()
    facts = [(str(p), st.st_ino, st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()]]
    held = _SHARED_READS.get(what)
    if held is None or held[0] != facts:
        _SHARED_READS[what] = held = (facts, read())
    return held[1]


def members_path(project: GdoProject, profile: str) -> Path:
    """One profile's subset_members.parquet (its stamp lies beside it)."""
    return subsets_dir(project, profile) / "subset_members.parquet"


def subsets_stamp_fields(project: GdoProject, config: dict[str, Any]) -> dict[str, Any]:
    """What a profile's subsets are built from: the merge (by its stamp) and the settings."""
    merged = read_stamp(project.path(*DB_FILE))
    return {"merge": content_key(merged) if merged is not None else None, "config": config}


def build_profile_subsets(
    project: GdoProject, name: str, config: SubsetsConfig, out_dir: Path, qa: pl.DataFrame | None = None
) -> BuildResult:
    """One profile's GDO 1x and Uni-10x (and report, members) from the ingested chunks and merged descriptors."""
    profile = load_profile(name, profiles_dir_from_env())
    db = project.path(*DB_FILE)
    metrics = load_merged_metrics(db, strict=config.compat is None) if db.is_file() else None
    return build_from_pool(
        scan_ordered_qa(project) if qa is None else qa,
        profile,
        out_dir,
        metrics=metrics,
        compat=config.compat,
        target_count=config.target_count,
        target_ratio=config.target_ratio,
        ablations=Ablations(config.no_vds, config.no_ppl, config.no_sc, config.no_vds3_budget),
        exclude_reference=config.exclude_reference,
        exclude_mode=config.exclude_mode,
        seed=config.seed,
        uni_count=config.uni_count,
        target_frames=project.target_frames,
    )


# ---- checks ---------------------------------------------------------------------------------


def _constraint_check(report: dict[str, Any], allow_unmet: bool) -> AssetCheckResult:
    hc = report["hard_constraints"]
    met = bool(hc.get("all_constraints_met"))
    unmet = hc.get("unmet_constraints", {})
    return AssetCheckResult(
        check_name=CHECK_CONSTRAINTS,
        passed=met or allow_unmet,  # unmet constraints block training unless the user opted out
        metadata={
            "all_met": met,
            "waived": allow_unmet and not met,
            "unmet": MetadataValue.json(unmet),
            "video": f"{hc['selected_video_count']} in [{hc['min_video_count']}, {hc['max_video_count']}]",
            "temporal_video": f"{hc['selected_temporal_video_count']} >= {hc['min_temporal_video_count']}",
            "source_group_floors": MetadataValue.json(
                {
                    g: {
                        "required": r,
                        "selected": hc.get("source_group_floor_achieved", {}).get(g, 0),
                    }
                    for g, r in hc["source_group_floor_requirements"].items()
                }
            ),
        },
    )


def _read_rows(path: Path) -> pl.DataFrame:
    """qa_uid, video_uid, question and answer of an SFT file (only these fields are built: the
    messages and frame lists of its rows are skipped, ~5x faster on a 1M pool's Uni-10x file)."""
    columns = ("qa_uid", "video_uid", "question", "answer")
    if path.stat().st_size == 0:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    return pl.scan_ndjson(path).select(columns).collect()


def _output_checks(
    result: BuildResult, config: SubsetsConfig, max_per_video: int
) -> list[AssetCheckResult]:
    gdo = _read_rows(result.gdo_path)
    dup_uid = gdo.height - gdo["qa_uid"].n_unique()
    dup_text = gdo.height - gdo.select("question", "answer").n_unique() if gdo.height else 0
    per_video = gdo.filter(pl.col("video_uid") != "")["video_uid"].value_counts()
    worst = int(per_video["count"].max()) if per_video.height else 0
    checks = [
        AssetCheckResult(
            check_name=CHECK_UNIQUE,
            passed=dup_uid == 0 and dup_text == 0,
            metadata={"duplicate_qa_uid": dup_uid, "duplicate_question_answer": dup_text},
        ),
        AssetCheckResult(
            check_name=CHECK_VIDEO_CAP,
            passed=worst <= max_per_video,
            metadata={"max_qa_per_video_selected": worst, "cap": max_per_video},
        ),
    ]
    hits = 0
    if config.exclude_reference:
        ref = load_exclusion_reference(config.exclude_reference, config.exclude_mode)
        # The Uni-10x file (10x the rows) is read back only when there is a list to check it against.
        both = pl.concat([gdo, _read_rows(result.uni_path)])
        q_hit = both["question"].is_in(pl.Series(sorted(ref.questions), dtype=pl.String).implode())
        qa_text = both.select(pl.concat_str(["question", "answer"], separator="\t"))[:, 0]
        qa_hit = qa_text.is_in(pl.Series(sorted(ref.qa_pairs), dtype=pl.String).implode())
        hits = int((q_hit | qa_hit).sum())
    checks.append(
        AssetCheckResult(
            check_name=CHECK_EXCLUSION,
            passed=hits == 0,
            metadata={"matches": hits, "reference_files": len(config.exclude_reference)},
        )
    )
    return checks


# ---- metadata -------------------------------------------------------------------------------


def composition_plot(result: BuildResult, qa: pl.DataFrame, out_path: Path) -> Path:
    """A PNG with one panel per field: share of each value in the pool, GDO 1x and Uni-10x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = result.report
    members = result.members
    figure = Figure(figsize=(4.2 * len(PLOT_FIELDS), 4.0), layout="constrained")
    axes = figure.subplots(1, len(PLOT_FIELDS))
    # Each arm's rows once, with only the plotted fields (not one join of the whole table per field).
    fields = qa.select("qa_uid", *PLOT_FIELDS)
    arm_rows = {
        arm: fields.join(
            members.filter(pl.col("arm") == arm).select("qa_uid"), on="qa_uid", how="semi"
        )
        for arm in ("gdo", "uni10x")
    }
    for ax, name in zip(axes, PLOT_FIELDS):
        pool_counts = report["full_profile_fields"][name]
        total = sum(pool_counts.values())
        values = [v for v, _ in Counter(pool_counts).most_common(PLOT_TOP_VALUES)]
        series = {"pool": [pool_counts.get(v, 0) / total for v in values]}
        for arm, sub in arm_rows.items():
            counts = dict(sub.group_by(name).len().iter_rows())
            n = max(sub.height, 1)
            series[arm] = [counts.get(v, 0) / n for v in values]
        width = 0.27
        for k, (label, shares) in enumerate(series.items()):
            ax.bar([i + (k - 1) * width for i in range(len(values))], shares, width, label=label)
        ax.set_xticks(range(len(values)), values, rotation=60, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=7)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(out_path))
    return out_path


def _js_table(report: dict[str, Any]) -> str:
    gdo = report["filtered_summary"].get("js_to_full_profile", {})
    uni = report["random_summary"].get("js_to_full_profile", {})
    lines = ["| field | JS(GDO 1x, pool) | JS(Uni-10x, pool) |", "|---|---|---|"]
    for name in gdo:
        lines.append(f"| {name} | {gdo[name]:.5f} | {uni.get(name, float('nan')):.5f} |")
    return "\n".join(lines)


@asset(
    name=GOAL_SUBSETS,
    partitions_def=goal_profiles,
    deps=["descriptors"],
    group_name="subsets",
    check_specs=[
        AssetCheckSpec(
            CHECK_CONSTRAINTS,
            asset=GOAL_SUBSETS,
            blocking=True,
            description="Every hard constraint is met (unmet ones block training unless allow_unmet_constraints).",
        ),
        AssetCheckSpec(
            CHECK_UNIQUE,
            asset=GOAL_SUBSETS,
            blocking=True,
            description="No qa_uid or (question, answer) twice in GDO 1x.",
        ),
        AssetCheckSpec(
            CHECK_VIDEO_CAP,
            asset=GOAL_SUBSETS,
            blocking=True,
            description="At most max_qa_per_video QAs per video.",
        ),
        AssetCheckSpec(
            CHECK_EXCLUSION,
            asset=GOAL_SUBSETS,
            blocking=True,
            description="No selected QA matches the exclusion reference files.",
        ),
    ],
    description="GDO 1x and Uni-10x SFT files for one goal profile, with report, profile and members.",
)
def goal_subsets(
    context: AssetExecutionContext, config: SubsetsConfig, gdo: GdoProject
) -> MaterializeResult:
    """Build one profile's subsets from the ingested QA chunks and the merged descriptors."""
    name = context.partition_key
    profile = load_profile(name, profiles_dir_from_env())
    qa = scan_ordered_qa(gdo)
    out_dir = subsets_dir(gdo, name)
    result = build_profile_subsets(gdo, name, config, out_dir, qa=qa)
    waiver = out_dir / WAIVER_FILE
    if config.allow_unmet_constraints and not result.report["hard_constraints"].get("all_constraints_met"):
        waiver.write_text(json.dumps(result.report["hard_constraints"]["unmet_constraints"], indent=2))
    else:
        waiver.unlink(missing_ok=True)
    report = result.report
    plot = composition_plot(result, result_pool(qa, config), out_dir / COMPOSITION_PLOT)
    write_stamp(result.members_path, **subsets_stamp_fields(gdo, config.model_dump()))
    image = base64.b64encode(plot.read_bytes()).decode()
    hc = report["hard_constraints"]
    gdo_summary = report["filtered_summary"]
    temporal = dict(
        qa.select("qa_uid", pl.col("temporal_category").cast(pl.String))
        .join(
            result.members.filter(pl.col("arm") == "gdo").select("qa_uid"), on="qa_uid", how="semi"
        )
        .group_by("temporal_category")
        .len()
        .sort("temporal_category")
        .iter_rows()
    )
    context.log.info(
        f"{name}: GDO 1x {report['target_count']} QAs, Uni {report['random_target_count']} in {out_dir}"
    )
    return MaterializeResult(
        metadata={
            "target_count": report["target_count"],
            "uni_count": report["random_target_count"],
            "pool_qas": report["total_pairs"],
            "per_bucket": MetadataValue.json(gdo_summary.get("bucket", {})),
            "per_temporal_category": MetadataValue.json(temporal),
            "unmet_constraints": MetadataValue.json(hc["unmet_constraints"]),
            "stage_counts": MetadataValue.json(hc["selection_stage_counts"]),
            "js_divergence": MetadataValue.md(_js_table(report)),
            "overlap_ratio": report["overlap_ratio"],
            "budget": MetadataValue.json(report["budget_info"]),
            "composition": MetadataValue.md(
                f"![subset composition vs pool](data:image/png;base64,{image})"
            ),
            "gdo_1x": MetadataValue.path(str(result.gdo_path)),
            "uni_10x": MetadataValue.path(str(result.uni_path)),
            "report": MetadataValue.path(str(result.report_path)),
            "members": MetadataValue.path(str(result.members_path)),
            "mode": report["mode"],
        },
        check_results=[
            _constraint_check(report, config.allow_unmet_constraints),
            *_output_checks(result, config, profile.max_qa_per_video),
        ],
    )


def result_pool(qa: pl.DataFrame, config: SubsetsConfig) -> pl.DataFrame:
    """The QA fields the composition plot reads (published mode re-tests MCQ like the build did)."""
    if config.compat == "published":
        from gdo_core.build import published_view

        return published_view(qa)
    return qa
