"""Subset construction, stage by stage (docs/method.md, sections Pool profile and exclusion guard
through Outputs): `select_subsets` runs the stages in order, each from its own module, and this
module re-exports what other code imports from it.

| stage | module |
|---|---|
| pool profile, candidate score inputs | `pool_profile` |
| exclusion guard | `exclusion` |
| metric terms (vds3', q') | `metric_terms` |
| budget | `budget` |
| quotas and hard constraints | `quotas` |
| seeded draws (tie-breaks, Uni reservoir) | `draws` |
| candidate score | `candidate_score` |
| candidate pools | `candidate_pools` |
| acceptance rule | `acceptance` (codes from `row_codes`) |
| the six GDO stages | `gdo_stages` |
| Uni-10x baseline | `uni10x` |
| report (summaries, overlap, constraints met) | `subset_report` |
| SFT-ready rows | `sft_rows` |

Everything over the whole pool is polars/numpy; Python loops only where the method is sequential:
the rejection sampling of the seeded draws in published mode (one `random.Random` stream in scan
order), the heap of a stratum whose pool boundary has tied scores (published mode), and acceptance
over small pools (large pools settle the same in-order greedy in a few vectorised rounds).

Two modes share this code (`modes.Mode`): `published` reproduces the published build step bit
for bit (quirks included); `default` keeps the fixes (MCQ on raw text upstream, order-free seeded
draws from numpy, pools = exact top-k by (score, tie-break)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from gdo_core import budget as B
from gdo_core.acceptance import (
    GREEDY_LOOP_MAX,
    GREEDY_MAX_ROUNDS,
    _Acceptor,
    _greedy_accept,
    _row_attrs,
    _RowAttrs,
)
from gdo_core.candidate_pools import (
    _candidate_pools_sorted,
    _heap_pool,
    by_score_desc,
    candidate_pools,
    pool_caps,
    strata_pools_of,
)
from gdo_core.candidate_score import Ablations, score_terms
from gdo_core.draws import Draws, _expected_words, published_draws, stable_draws
from gdo_core.exclusion import (
    ExcludeMode,
    ExclusionError,
    ExclusionReference,
    apply_exclusion,
    exclusion_reason,
    load_exclusion_reference,
)
from gdo_core.gdo_stages import (
    STAGE_GLOBAL,
    STAGE_GROUP_PREFIX,
    STAGE_RESERVOIR,
    STAGE_STRATUM,
    STAGE_TEMPORAL,
    STAGE_VIDEO,
    GdoSelection,
    select_gdo,
)
from gdo_core.metric_terms import (
    PreparedMetrics,
    _has_duplicates,
    _metric_match,
    _metric_terms,
    _metric_terms_for_pool,
    _prepared,
    _same_strings,
    prepare_metrics,
)
from gdo_core.modes import Mode
from gdo_core.pool_profile import (
    ANSWER_DISTINCT,
    PoolProfile,
    answer_distinct_tokens,
    pool_profile,
    score_inputs,
)
from gdo_core.profiles import GoalProfile
from gdo_core.quotas import HardConstraints, Quotas, pool_quotas
from gdo_core.row_codes import (
    TEXT_CODE_CHUNK_ROWS,
    TEXT_KEY_SEPARATOR,
    _joined_texts,
    _series_codes,
    _value_codes,
    codes_of_text_hashes,
    first_seen_codes,
    text_codes,
    text_hashes,
)
from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO, STRATUM_FIELDS, TEXT_CODE
from gdo_core.sft_rows import IMAGE_TOKEN, SOURCE_DOMAIN, SOURCE_NAME, sft_rows
from gdo_core.subset_report import (
    JS_EPS,
    TOP_GROUPS_REPORTED,
    js_divergence,
    selection_report,
    subset_summary,
)
from gdo_core.uni10x import STAGE_UNI, select_uni

__all__ = [
    "ANSWER_DISTINCT",
    "BUCKET_IMAGE",
    "BUCKET_VIDEO",
    "GREEDY_LOOP_MAX",
    "GREEDY_MAX_ROUNDS",
    "IMAGE_TOKEN",
    "JS_EPS",
    "SOURCE_DOMAIN",
    "SOURCE_NAME",
    "STAGE_GLOBAL",
    "STAGE_GROUP_PREFIX",
    "STAGE_RESERVOIR",
    "STAGE_STRATUM",
    "STAGE_TEMPORAL",
    "STAGE_UNI",
    "STAGE_VIDEO",
    "STRATUM_FIELDS",
    "TEXT_CODE",
    "TEXT_CODE_CHUNK_ROWS",
    "TEXT_KEY_SEPARATOR",
    "TOP_GROUPS_REPORTED",
    "Draws",
    "ExcludeMode",
    "ExclusionError",
    "ExclusionReference",
    "GdoSelection",
    "HardConstraints",
    "Mode",
    "PoolProfile",
    "PreparedMetrics",
    "Quotas",
    "SelectOptions",
    "SelectionResult",
    "_Acceptor",
    "_RowAttrs",
    "_candidate_pools_sorted",
    "_expected_words",
    "_greedy_accept",
    "_has_duplicates",
    "_heap_pool",
    "_joined_texts",
    "_metric_match",
    "_metric_terms",
    "_metric_terms_for_pool",
    "_prepared",
    "_row_attrs",
    "_same_strings",
    "_series_codes",
    "_value_codes",
    "answer_distinct_tokens",
    "by_score_desc",
    "candidate_pools",
    "codes_of_text_hashes",
    "exclusion_reason",
    "first_seen_codes",
    "js_divergence",
    "load_exclusion_reference",
    "pool_profile",
    "prepare_metrics",
    "published_draws",
    "score_inputs",
    "select_gdo",
    "select_subsets",
    "select_uni",
    "sft_rows",
    "stable_draws",
    "subset_summary",
    "text_codes",
    "text_hashes",
]

@dataclass
class SelectOptions:
    """What changes a build besides the profile: mode, fixed budget, ablations, seed."""

    mode: Mode = "default"
    target_count: int | None = None
    target_ratio: float | None = None
    ablations: Ablations = field(default_factory=Ablations)
    seed: int | None = None  # None: the profile's seed
    uni_count: int | None = None  # a fixed Uni baseline size instead of ceil(1x * uni_multiplier)


@dataclass
class SelectionResult:
    """Both subsets (row indices into `qa`), the score terms of every row, and the report."""

    qa: pl.DataFrame  # the pool after the exclusion guard
    scores: pl.DataFrame  # SCORE_COLUMNS, aligned with qa
    gdo: GdoSelection
    uni_rows: list[int]
    report: dict[str, Any]


def _in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """fn(*args) on a worker thread; the future's result() waits for it (and re-raises)."""
    worker = ThreadPoolExecutor(max_workers=1)
    future = worker.submit(fn, *args)
    worker.shutdown(wait=False)  # the worker exits once fn returns
    return future


def select_subsets(
    qa: pl.DataFrame,
    profile: GoalProfile,
    *,
    metrics: pl.DataFrame | PreparedMetrics | None = None,
    options: SelectOptions | None = None,
    exclusion: ExclusionReference | None = None,
    step: Callable[[str], None] | None = None,
    answer_distinct: Future | None = None,
) -> SelectionResult:
    """Build GDO 1x and Uni-10x from a QA table (QA_SCHEMA order = scan order) and optional metrics
    rows (or `prepare_metrics` of them for options.mode).

    answer_distinct: `answer_distinct_tokens(qa)` being computed elsewhere (ignored when the
    exclusion guard drops rows).
    """
    # Long only as the list of the stages, one call each, with the docs section each implements.
    options = options or SelectOptions()
    step = step or (lambda _name: None)
    mode, ablations = options.mode, options.ablations
    seed = profile.seed if options.seed is None else options.seed

    # Pool profile and exclusion guard (docs/method.md, Pool profile and exclusion guard).
    # A given answer_distinct fits the table only while no row was dropped.
    qa, exclusion_info, rows_dropped = apply_exclusion(qa, exclusion)
    if qa.height == 0:
        raise ValueError("no QA pairs left in the pool (after rejects and the exclusion guard)")
    step("profile")

    prof = pool_profile(qa)
    prepared = _prepared(metrics, mode)
    match = _metric_match(qa, prepared) if prepared is not None else None
    # Tokenising the answers (polars threads, off the GIL) overlaps the Python and numpy work of
    # the budget and the draws; the polars work above comes first, as it would queue behind it.
    distinct = (
        answer_distinct
        if answer_distinct is not None and not rows_dropped
        else _in_background(answer_distinct_tokens, qa)
    )

    # Budget (docs/method.md, Budget).
    qa_vds3, qa_quality, has_metrics, vds3_per_metric_row, metrics_info = _metric_terms(
        prepared, match, prof.total
    )
    vds3_budget = prepared is not None and not ablations.no_vds3_budget
    budget = _budget(prof, profile, options, vds3_per_metric_row if vds3_budget else None)
    step("budget")

    # Quotas and hard constraints (docs/method.md, Quotas and hard constraints).
    quotas = pool_quotas(prof, budget.target_count, profile)
    caps = pool_caps(prof, quotas.stratum, profile)

    # Candidate score (docs/method.md, Candidate score), and the seeded draws beside it.
    scores, draws = _score_while_drawing(
        qa,
        prof,
        distinct,
        (qa_vds3, qa_quality, has_metrics),
        ablations,
        published=(mode == "published"),
        reservoir_cap=_reservoir_cap(budget.random_target_count, profile),
        seed=seed,
    )
    score = scores["score"].to_numpy()
    step("score")

    # Candidate pools (docs/method.md, Candidate pools and acceptance).
    pools, replayed = candidate_pools(
        prof.stratum_code, score, draws.tie, caps, published_heap=(mode == "published")
    )
    tail = by_score_desc(pools, score, draws.tie)
    strata_pools = strata_pools_of(tail, prof.stratum_code, caps.size)
    step("pools")

    # The six stages (same section) and the Uni-10x baseline (docs/method.md, Uni-10x baseline).
    gdo, uni_rows = _select_both(qa, prof, tail, strata_pools, quotas, draws, budget, profile, mode)
    step("select")

    report = selection_report(
        qa,
        prof,
        profile_name=profile.name,
        mode=mode,
        seed=seed,
        budget=budget,
        quotas=quotas,
        gdo=gdo,
        uni_rows=uni_rows,
        ablations=ablations,
        candidate_pools={
            "candidates": int(pools.size),
            "reservoir": int(draws.reservoir.size),
            "strata_replayed_through_heap": replayed,
        },
        metrics_info=metrics_info,
        exclusion_info=exclusion_info,
    )
    step("report")
    return SelectionResult(qa=qa, scores=scores, gdo=gdo, uni_rows=uni_rows, report=report)


def _budget(
    prof: PoolProfile,
    profile: GoalProfile,
    options: SelectOptions,
    vds3_per_metric_row: np.ndarray | None,
) -> B.Budget:
    """`budget.selection_budget` of the pool for the options (vds3_per_metric_row: the metrics
    rows' vds3', None to leave the automatic size as it is)."""
    return B.selection_budget(
        prof.total,
        prof.strata["count"].to_numpy().tolist(),
        profile,
        target_count=options.target_count,
        target_ratio=options.target_ratio,
        uni_count=options.uni_count,
        vds3_per_metric_row=vds3_per_metric_row,
    )


def _reservoir_cap(uni_count: int, profile: GoalProfile) -> int:
    """Size of the Uni reservoir: the Uni size, oversampled by the profile's reservoir_oversample."""
    return max(uni_count, math.ceil(uni_count * max(1.0, profile.reservoir_oversample)))


def _score_while_drawing(
    qa: pl.DataFrame,
    prof: PoolProfile,
    distinct: Future,
    qa_metrics: tuple[np.ndarray, np.ndarray, np.ndarray],
    ablations: Ablations,
    *,
    published: bool,
    reservoir_cap: int,
    seed: int,
) -> tuple[pl.DataFrame, Draws]:
    """(the score terms of every row, the seeded draws); qa_metrics: vds3', q' and has_metrics
    per QA row (`metric_terms._metric_terms`).

    The draws (docs/method.md, Candidate pools and acceptance) run on a worker thread, beside the
    candidate score (mostly numpy, which lets go of the GIL) and the answers' tokenising
    (`distinct`) if that is still running.
    """
    draw = published_draws if published else stable_draws
    drawn = _in_background(draw, prof.total, reservoir_cap, seed)
    qa_vds3, qa_quality, has_metrics = qa_metrics
    scores = score_terms(
        score_inputs(qa, prof, distinct.result()),
        qa_vds3=qa_vds3,
        qa_quality=qa_quality,
        has_metrics=has_metrics,
        ablations=ablations,
    )
    return scores, drawn.result()


def _select_both(
    qa: pl.DataFrame,
    prof: PoolProfile,
    tail: np.ndarray,
    strata_pools: dict[int, np.ndarray],
    quotas: Quotas,
    draws: Draws,
    budget: B.Budget,
    profile: GoalProfile,
    mode: Mode,
) -> tuple[GdoSelection, list[int]]:
    """GDO 1x from the pools and the reservoir, Uni-10x from the shuffled reservoir: both through
    the acceptance rule, over the attributes of just those rows."""
    temporal_set = tuple(profile.temporal_categories)
    attrs = _row_attrs(qa, np.concatenate([tail, draws.reservoir]), prof.stratum_code, temporal_set)
    gdo = select_gdo(
        tail=tail,
        strata_pools=strata_pools,
        stratum_quotas=quotas.stratum,
        constraints=quotas.constraints,
        reservoir=draws.reservoir,
        target_count=budget.target_count,
        max_qa_per_video=profile.max_qa_per_video,
        row_attrs=attrs,
    )
    uni_rows = select_uni(
        draws.uni_order,
        budget.random_target_count,
        profile.max_qa_per_video,
        attrs,
        repeats=(mode == "published"),
    )
    return gdo, uni_rows
