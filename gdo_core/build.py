"""`gdo build`: read the pool and metrics, select GDO 1x and Uni-10x, write the SFT files and report.

Also `gdo resample` (frame lists of SFT JSONL rows resampled to a new training frame count) and
the published-compatibility glue: `compat="published"` feeds the selection exactly what the
published build step saw (MCQ tested case-insensitively on the collapsed question, data_source
whitespace-collapsed) and switches the selection to the published seeded stream.

Reading the metrics file is in `metrics_file`, the files a build writes (names, members table,
atomic NDJSON writes) and `gdo resample` in `build_files`, the published reader's view of the
pool in `published_compat`; what other code imports from here is re-exported.
"""

from __future__ import annotations

import functools
import os  # noqa: F401 - tests reach os.copy_file_range through this module (build.os)
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from gdo_core.build_files import (
    ARM_GDO,
    ARM_UNI,
    SFT_QA_COLUMNS,
    BuildError,
    SelectedArms,
    _atomic,
    _json_bytes,
    _write_atomic,
    _write_ndjson_atomic,
    frame_rows,
    gather_arms,
    gather_chunked,
    members_table,
    output_names,
    resample_jsonl,
    resample_row,
)
from gdo_core.candidate_score import Ablations
from gdo_core.metrics_file import (
    BAD_EXAMPLES_KEPT,
    DUCKDB_TABLE,
    METRIC_ALIASES,
    METRICS_ENTRY_PREFIX,
    MetricsError,
    MetricsTable,
    _line_count,
    cached_metrics,
    load_metrics,
)
from gdo_core.pool import PoolResult
from gdo_core.pool_cache import CachedPool, StoredTexts, cached_read_pool, default_cache_dir
from gdo_core.pool_fast import LOW_MEMORY_BLOCK_BYTES
from gdo_core.profiles import GoalProfile, load_profile
from gdo_core.published_compat import PUBLISHED_DEFAULT_SOURCE, published_view
from gdo_core.schema import TEXT_CODE
from gdo_core.select import (
    ANSWER_DISTINCT,
    ExcludeMode,
    Mode,
    SelectOptions,
    answer_distinct_tokens,
    load_exclusion_reference,
    select_subsets,
    sft_rows,
    text_codes,
)
from gdo_core.strata import MCQ_PATTERN

__all__ = [
    "ARM_GDO",
    "ARM_UNI",
    "BAD_EXAMPLES_KEPT",
    "DUCKDB_TABLE",
    "MCQ_PATTERN",
    "METRICS_ENTRY_PREFIX",
    "METRIC_ALIASES",
    "MIN_OUTPUT_SLICE_ROWS",
    "OUTPUT_SLICES",
    "OUTPUT_SLICE_ROWS",
    "PUBLISHED_DEFAULT_SOURCE",
    "SFT_QA_COLUMNS",
    "WRITE_WORKERS",
    "BuildError",
    "BuildResult",
    "Compat",
    "MetricsError",
    "MetricsTable",
    "_line_count",
    "_write_ndjson_atomic",
    "build_from_pool",
    "build_subsets",
    "cached_metrics",
    "frame_rows",
    "gather_chunked",
    "load_metrics",
    "members_table",
    "output_names",
    "published_view",
    "resample_jsonl",
    "resample_row",
    "slice_rows",
]

Compat = Literal["published"]
# SFT rows are built and written a slice at a time (bounding the output's memory): a file in about
# OUTPUT_SLICES slices, each of MIN_OUTPUT_SLICE_ROWS to OUTPUT_SLICE_ROWS rows. At 230k QAs the
# Uni file's 41,400 rows in 8 slices, not 3, lowered the peak by about 40 MB, and 16, not 8, by
# about 10 MB more; each slice costs about 10 ms more, so a million QAs' file (180,000 rows) goes
# in 16 slices of 11,250 rows, not in 4,096-row ones.
OUTPUT_SLICE_ROWS = 16_384
MIN_OUTPUT_SLICE_ROWS = 2_048
OUTPUT_SLICES = 16
# The Uni-10x file's slices are built and serialised on WRITE_WORKERS threads and written in
# order, each slice 1/WRITE_WORKERS of the size above (as many bytes in flight as one slice): at
# 1M QAs the write took ~0.3 s less (interleaved), at the same peak.
WRITE_WORKERS = 2


@dataclass
class BuildResult:
    """Paths of what a build wrote, its report, the member table and timings (seconds)."""

    out_dir: Path
    gdo_path: Path
    uni_path: Path
    report_path: Path
    profile_path: Path
    members_path: Path
    report: dict[str, Any]
    members: pl.DataFrame
    timings: dict[str, float]
    parse_cache: dict[str, Any] = field(default_factory=dict)  # not in report.json: run detail


def slice_rows(rows: int) -> int:
    """Rows per output slice of a file of `rows` SFT rows (see OUTPUT_SLICES)."""
    least = min(MIN_OUTPUT_SLICE_ROWS, OUTPUT_SLICE_ROWS)
    return max(least, min(OUTPUT_SLICE_ROWS, -(-rows // OUTPUT_SLICES)))


def build_from_pool(
    qa: pl.DataFrame,
    profile: GoalProfile | str | Path,
    out_dir: Path | str,
    *,
    metrics: MetricsTable | Path | str | None = None,
    compat: Compat | None = None,
    target_count: int | None = None,
    target_ratio: float | None = None,
    ablations: Ablations | None = None,
    exclude_reference: Sequence[Path | str] = (),
    exclude_mode: ExcludeMode = "both",
    seed: int | None = None,
    uni_count: int | None = None,
    target_frames: int | None = None,
    pool_info: dict[str, Any] | None = None,
    progress: bool = False,
    profiles_dir: Path | str | None = None,
    row_frames: pl.DataFrame | None = None,
    mcq_collapsed: bool = False,
    answer_distinct: Future | None = None,
    texts: StoredTexts | None = None,
) -> BuildResult:
    """Select and write both subsets from an already parsed QA table (QA_SCHEMA, scan order).

    row_frames: frame lists per (source_file, line) when `qa` has no `frames` column
    (`read_pool(row_frames=True)`); only the selected rows get theirs. mcq_collapsed: the table's
    MCQ test ran on the collapsed question (parsed with mcq_on_raw=False), as compat mode wants.
    answer_distinct: `pool_profile.answer_distinct_tokens(qa)` being computed on another thread.
    texts: question and answer of `qa`'s rows when `qa` has none (a cache hit that left them on
    disk; `qa` then has `schema.TEXT_CODE`): only the rows written out are read, unless an
    exclusion list or the MCQ test needs them all.
    """
    # Long by its signature and docstring: the body is one call per step (helpers below).
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ablations = ablations or Ablations()
    prof = load_profile(profile, profiles_dir)
    _check_targets(compat, target_count, target_ratio)
    frames = target_frames or prof.target_frames
    mode = "published" if compat == "published" else "default"
    if isinstance(metrics, (str, Path)):
        metrics = load_metrics(metrics, strict=(mode == "default"))
    timings["metrics"] = time.perf_counter() - t0
    exclusion = (
        load_exclusion_reference(list(exclude_reference), exclude_mode)
        if exclude_reference
        else None
    )
    needs_texts = exclusion is not None or (mode == "published" and not mcq_collapsed)
    qa, texts = _selection_input(
        qa, texts, mode, needs_texts=needs_texts, mcq_collapsed=mcq_collapsed
    )
    bar = _progress_bar(prof.name) if progress else None

    def step(name: str) -> None:
        timings[name] = time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)

    result = select_subsets(
        qa,
        prof,
        metrics=metrics.for_selection(mode) if metrics is not None else None,
        options=SelectOptions(
            mode=mode,
            target_count=target_count,
            target_ratio=target_ratio,
            ablations=ablations,
            seed=seed,
            uni_count=uni_count,
        ),
        exclusion=exclusion,
        step=step,
        answer_distinct=answer_distinct,
    )
    # The arms' rows are gathered first, and the score terms of every row let go, before their
    # texts are read and the files written (the Uni-10x file is the long one: the GDO file and
    # the members table are written beside it).
    arms = gather_arms(result, prof.name, row_frames, texts)
    del result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gdo_name, uni_name = output_names(frames)
    members_path = out / "subset_members.parquet"
    _write_sft_files(
        arms, out / gdo_name, out / uni_name, members_path, row_frames=row_frames, mode=mode
    )
    report = _write_report_files(
        out,
        arms.report,
        prof,
        frames=frames,
        outputs={"gdo_1x": gdo_name, "uni_10x": uni_name, "members": members_path.name},
        pool=pool_info or {"qa_rows": qa.height},
        metrics=metrics,
        compat=compat,
        ablations=ablations,
    )
    step("write")
    if bar is not None:
        bar.close()
    timings["total"] = time.perf_counter() - t0
    return BuildResult(
        out_dir=out,
        gdo_path=out / gdo_name,
        uni_path=out / uni_name,
        report_path=out / "report.json",
        profile_path=out / "profile.json",
        members_path=members_path,
        report=report,
        members=arms.members,
        timings=timings,
    )


def _check_targets(
    compat: Compat | None, target_count: int | None, target_ratio: float | None
) -> None:
    """BuildError for an unknown compat mode or a target count or ratio out of range (or both given)."""
    if compat not in (None, "published"):
        raise BuildError(f"compat must be 'published' or None, got {compat!r}")
    if (
        target_count is not None
        and target_ratio is not None
        and target_count > 0
        and target_ratio > 0
    ):
        raise BuildError("give either a target count or a target ratio, not both")
    if target_ratio is not None and not 0 < target_ratio <= 1:
        raise BuildError(f"target ratio must be in (0, 1], got {target_ratio}")
    if target_count is not None and target_count < 0:
        raise BuildError(f"target count must be positive, got {target_count}")


def _selection_input(
    qa: pl.DataFrame,
    texts: StoredTexts | None,
    mode: Mode,
    *,
    needs_texts: bool,
    mcq_collapsed: bool,
) -> tuple[pl.DataFrame, StoredTexts | None]:
    """(the QA table the selection reads, the texts still on disk): the texts joined in when the
    selection needs them all, and in published mode the table as the published reader saw it."""
    if texts is not None and "question" not in qa.columns and needs_texts:
        qa, texts = pl.concat([qa, texts.read()], how="horizontal"), None
    if mode == "published":
        qa = published_view(qa, mcq_collapsed=mcq_collapsed)
    return qa, texts


def _progress_bar(name: str) -> Any:
    """A tqdm bar over the build's seven steps."""
    from tqdm import tqdm

    return tqdm(total=7, desc=f"build {name}", unit="step", dynamic_ncols=True, leave=False)


def _write_sft_files(
    arms: SelectedArms,
    gdo_path: Path,
    uni_path: Path,
    members_path: Path,
    *,
    row_frames: pl.DataFrame | None,
    mode: Mode,
) -> None:
    """The GDO 1x and Uni-10x files, a slice at a time (each arm's gathered rows are let go as
    its file is written), and the members table: the Uni-10x file on one thread, the GDO file and
    then the members table on another."""
    texts_of = arms.texts_of

    def slices(
        arm: str, stages: Sequence[str] | None, workers: int = 1
    ) -> Iterator[Callable[[], pl.DataFrame]]:
        # SFT rows built a slice at a time from the arm's rows gathered once (one gather per
        # column, as the QA table may be in many chunks): one slice's SFT rows, and frame lists
        # (the bulk of a row, gathered a slice at a time), are in memory at once (or, with
        # `workers` threads, as many slices of 1/workers the size).
        selected, scores, at = arms.gathered.pop(arm)
        if texts_of is not None:
            selected = pl.concat([selected, texts_of(arms.rows[arm])], how="horizontal")
        size = max(1, slice_rows(selected.height) // workers)  # as much in flight as one slice

        def part(i: int, n: int) -> pl.DataFrame:
            rows = selected.slice(i, n)
            if at is not None and row_frames is not None:
                rows = rows.with_columns(gather_chunked(row_frames["frames"], at.slice(i, n)))
            return sft_rows(
                rows,
                scores.slice(i, n),
                None,
                stages[i : i + n] if stages is not None else None,
                mode=mode,
            )

        for i in range(0, selected.height, size):
            yield functools.partial(part, i, min(size, selected.height - i))

    def write_uni() -> None:
        _write_ndjson_atomic(slices("uni", None, WRITE_WORKERS), uni_path, WRITE_WORKERS)

    def write_gdo_and_members() -> None:
        _write_ndjson_atomic(slices("gdo", arms.gdo_stages), gdo_path)
        with _atomic(members_path) as tmp:
            arms.members.write_parquet(tmp, statistics=True)

    with ThreadPoolExecutor(2) as writers:
        uni_done = writers.submit(write_uni)
        writers.submit(write_gdo_and_members).result()
        uni_done.result()


def _write_report_files(
    out: Path,
    selection_report: dict[str, Any],
    prof: GoalProfile,
    *,
    frames: int,
    outputs: dict[str, str],
    pool: dict[str, Any],
    metrics: MetricsTable | None,
    compat: Compat | None,
    ablations: Ablations,
) -> dict[str, Any]:
    """report.json (the selection's report with the frames, outputs, pool and metrics input) and
    profile.json (the profile used); returns the report."""
    report = {
        **selection_report,
        "target_frames": frames,
        "max_qa_per_video": prof.max_qa_per_video,
        "outputs": outputs,
        "pool": pool,
    }
    if metrics is not None:
        report["metrics"] = {**metrics.info(), **report.get("metrics", {})}
    _write_atomic(out / "report.json", _json_bytes(report))
    profile_doc = {
        **prof.to_dict(),
        "target_frames_used": frames,
        "compat": compat,
        "ablations": ablations.active(),
    }
    _write_atomic(out / "profile.json", _json_bytes(profile_doc))
    return report


def _cache_dir(cache: bool, cache_dir: Path | str | None) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def build_subsets(
    profile: GoalProfile | str | Path,
    onevision: Path | str | None,
    video: Path | str | None,
    out_dir: Path | str,
    *,
    metrics: Path | str | None = None,
    compat: Compat | None = None,
    target_count: int | None = None,
    target_ratio: float | None = None,
    target_frames: int | None = None,
    no_vds: bool = False,
    no_ppl: bool = False,
    no_sc: bool = False,
    no_vds3_budget: bool = False,
    exclude_reference: Sequence[Path | str] = (),
    exclude_mode: ExcludeMode = "both",
    seed: int | None = None,
    uni_count: int | None = None,
    progress: bool = True,
    profiles_dir: Path | str | None = None,
    media_root: Path | str | None = None,
    cache: bool = True,
    cache_dir: Path | str | None = None,
    low_memory: bool = False,
) -> BuildResult:
    """`gdo build`: parse the pool files, select GDO 1x and Uni-10x, write JSONL files, report and profile.

    cache: keep the parsed pool and the prepared metrics in cache_dir (default
    `pool_cache.default_cache_dir()`), so a later build on the same files skips parsing them
    (`BuildResult.parse_cache` says hit or miss, for the metrics under "metrics").
    low_memory: parse the pool files one at a time, in smaller blocks, writing their texts into the
    new cache entry as they are parsed: a lower peak (with `memory.prefer_low_memory`, as
    `gdo build --low-memory` runs), slower. The same files either way.

    Writes gdo_1x_<frames>f.jsonl, uni_10x_<frames>f.jsonl, report.json, profile.json and
    subset_members.parquet into out_dir. compat="published" reproduces the published build step.
    """
    # Long by its signature and docstring; the steps are _read_pool, _side_work and build_from_pool.
    if onevision is None and video is None:
        raise BuildError("give at least one pool file (--onevision and/or --video)")
    t0 = time.perf_counter()
    prof = load_profile(profile, profiles_dir)
    frames = target_frames or prof.target_frames
    if frames < 1:
        raise BuildError(f"target frames must be >= 1, got {frames}")
    # The metrics file loads (and its pool-free terms are prepared) on a side thread while the
    # pool is read, both through the cache; a newly parsed pool's answers
    # are tokenised there next (overlapping the selection, which waits for them at the score), then
    # the pool, with those counts and its text codes, is stored in the cache. A hit leaves the
    # texts on disk, and so does a low-memory miss (it writes them into the new entry, and counts
    # the answers, while parsing): only the rows written out are read back.
    side = ThreadPoolExecutor(1)
    mode: Mode = "published" if compat == "published" else "default"
    folder = _cache_dir(cache, cache_dir)

    pending = (
        side.submit(
            lambda: cached_metrics(metrics, strict=(compat is None), mode=mode, cache_dir=folder)
        )
        if metrics is not None
        else None
    )
    stores: list[Callable[..., None]] = []
    cached = None
    try:
        cached = _read_pool(
            onevision,
            video,
            folder,
            stores,
            frames,
            compat=compat,
            media_root=media_root,
            low_memory=low_memory,
        )
        qa, texts = cached.result.qa, cached.texts
        distinct, stored = _side_work(side, qa, stores)
        metrics_table, metrics_status = pending.result() if pending is not None else (None, None)
        pool = cached.result
        read_s = time.perf_counter() - t0
        result = build_from_pool(
            pool.qa,
            prof,
            out_dir,
            metrics=metrics_table,
            compat=compat,
            target_count=target_count,
            target_ratio=target_ratio,
            ablations=Ablations(
                no_vds=no_vds, no_ppl=no_ppl, no_sc=no_sc, no_vds3_budget=no_vds3_budget
            ),
            exclude_reference=exclude_reference,
            exclude_mode=exclude_mode,
            seed=seed,
            uni_count=uni_count,
            target_frames=frames,
            pool_info=_pool_info(onevision, video, pool),
            progress=progress,
            profiles_dir=profiles_dir,
            row_frames=pool.frames,
            # the pool was parsed with mcq_on_raw=(compat is None)
            mcq_collapsed=(compat is not None),
            answer_distinct=distinct,
            texts=texts,
        )
        for future in stored:
            future.result()
    finally:  # a failed build leaves no work queued; a running store finishes
        side.shutdown(wait=True, cancel_futures=True)
        if cached is not None:
            cached.close()
    result.parse_cache = {**cached.info(), "metrics": metrics_status}
    result.timings = {"read_pool": read_s, **{k: v + read_s for k, v in result.timings.items()}}
    return result


def _read_pool(
    onevision: Path | str | None,
    video: Path | str | None,
    folder: Path | None,
    stores: list[Callable[..., None]],
    frames: int,
    *,
    compat: Compat | None,
    media_root: Path | str | None,
    low_memory: bool,
) -> CachedPool:
    """The pool files parsed (or a cache hit) as `gdo build` reads them: low-card columns
    Categorical, texts left on disk, a new entry's store handed to `stores`."""
    return cached_read_pool(
        Path(onevision) if onevision is not None else None,
        Path(video) if video is not None else None,
        cache_dir=folder,
        defer_store=stores.append,
        target_frames=frames,
        mcq_on_raw=(compat is None),
        media_root=Path(media_root) if media_root is not None else None,
        categorical=True,
        texts_on_disk=True,
        parse_to_disk=low_memory,
        file_threads=1 if low_memory else None,
        block_bytes=LOW_MEMORY_BLOCK_BYTES if low_memory else None,
    )


def _side_work(
    side: ThreadPoolExecutor, qa: pl.DataFrame, stores: list[Callable[..., None]]
) -> tuple[Future | None, list[Future]]:
    """On the side thread: the answers' token counts (unless the table has them: with the texts
    on disk they were stored or counted while parsed), then each store of a new cache entry with
    the columns it keeps besides the parsed ones."""
    distinct = (
        side.submit(answer_distinct_tokens, qa) if ANSWER_DISTINCT not in qa.columns else None
    )

    def derived() -> dict[str, pl.Series]:
        """The columns a stored entry keeps besides the parsed ones."""
        columns = {}
        if TEXT_CODE not in qa.columns:
            columns[TEXT_CODE] = pl.Series(text_codes(qa), dtype=pl.Int64)
        if distinct is not None:
            columns[ANSWER_DISTINCT] = pl.Series(distinct.result(), dtype=pl.Int32)
        return columns

    return distinct, [side.submit(lambda write=write: write(derived())) for write in stores]


def _pool_info(
    onevision: Path | str | None, video: Path | str | None, pool: PoolResult
) -> dict[str, Any]:
    """What the report says about the pool: its files, QA rows and rejects per reason."""
    rejects = pool.rejects
    return {
        "onevision": str(onevision) if onevision is not None else None,
        "video": str(video) if video is not None else None,
        "qa_rows": pool.qa.height,
        "rejects": rejects.height,
        "rejects_per_reason": dict(rejects.group_by("reason").len().sort("reason").iter_rows())
        if rejects.height
        else {},
    }
