"""The selection's part of report.json: the summary of each subset (count, bucket counts, the
Jensen-Shannon divergence of every field against the full pool), the GDO/Uni overlap and the
hard constraints achieved, beside the budget, quotas and pool counts (docs/method.md, Outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from gdo_core.budget import Budget
from gdo_core.candidate_score import Ablations
from gdo_core.gdo_stages import GdoSelection
from gdo_core.modes import Mode
from gdo_core.pool_profile import PoolProfile
from gdo_core.quotas import HardConstraints, Quotas

JS_EPS = 1e-12
TOP_GROUPS_REPORTED = 20


def js_divergence(p: dict[str, float], q: dict[str, float], eps: float = JS_EPS) -> float:
    """Jensen-Shannon divergence (natural log) of two distributions over string keys (keys sorted)."""
    keys = sorted(set(p) | set(q))
    if not keys:
        return 0.0

    def normalize(dist: dict[str, float]) -> dict[str, float]:
        s = sum(max(v, 0.0) for v in dist.values())
        if s <= 0:
            return {k: 1.0 / len(keys) for k in keys}
        return {k: max(dist.get(k, 0.0), 0.0) / s for k in keys}

    pp, qq = normalize(p), normalize(q)
    mm = {k: 0.5 * (pp[k] + qq[k]) for k in keys}

    def kl(a: dict[str, float], b: dict[str, float]) -> float:
        return sum(a[k] * math.log((a[k] + eps) / (b[k] + eps)) for k in keys if a[k] > 0)

    return 0.5 * kl(pp, mm) + 0.5 * kl(qq, mm)


def subset_summary(
    qa: pl.DataFrame, rows: Sequence[int], field_probs: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Count, bucket counts and the JS divergence of every field against the full pool."""
    if not rows:
        return {"count": 0}
    fields = list(field_probs) + ["bucket"] * ("bucket" not in field_probs)
    picked = np.asarray(rows, dtype=np.int64)
    # Field combinations gathered in row order (cheaper), first-seen order kept by position.
    order = np.argsort(picked, kind="stable")
    combos = (
        qa.select(fields)[pl.Series(picked[order])]
        .with_columns(pl.Series("position", order))
        .group_by(fields)
        .agg(pl.len().alias("count"), pl.col("position").min())
        .sort("position")
    )

    def counts_of(name: str) -> dict[str, int]:
        """Counts per value of one field, values in first-seen order."""
        per_value = combos.group_by(name, maintain_order=True).agg(pl.col("count").sum())
        return dict(per_value.iter_rows())

    js: dict[str, float] = {}
    for name, target in field_probs.items():
        counts = counts_of(name)
        total = sum(counts.values())
        if total <= 0 or not target:
            continue
        js[name] = js_divergence({k: v / total for k, v in counts.items()}, target)
    return {"count": len(rows), "bucket": counts_of("bucket"), "js_to_full_profile": js}


def overlap_ratio(qa_uid: pl.Series, gdo_rows: Sequence[int], uni_rows: Sequence[int]) -> float:
    """qa_uids the two subsets share over the smaller subset's distinct qa_uids (0 if one is empty)."""
    gdo_uids = qa_uid.gather(gdo_rows).unique()
    uni_uids = qa_uid.gather(uni_rows).unique()
    shared = gdo_uids.len() + uni_uids.len() - pl.concat([gdo_uids, uni_uids]).n_unique()
    return (
        shared / float(min(gdo_uids.len(), uni_uids.len()))
        if gdo_uids.len() and uni_uids.len()
        else 0.0
    )


def achieved_constraints(
    gdo: GdoSelection, constraints: HardConstraints, target_count: int
) -> dict[str, Any]:
    """The achieved half of the report's hard_constraints block (`HardConstraints.targets` is the
    other)."""
    n_sel = len(gdo.rows)
    achieved = {
        "selected_video_count": gdo.video_count,
        "selected_video_ratio": gdo.video_count / float(n_sel) if n_sel else 0.0,
        "selected_temporal_video_count": gdo.temporal_video_count,
        "selected_temporal_in_video_ratio": gdo.temporal_video_count / float(gdo.video_count)
        if gdo.video_count
        else 0.0,
        "selected_source_group_counts_top20": dict(
            gdo.group_counts.most_common(TOP_GROUPS_REPORTED)
        ),
        "selection_stage_counts": gdo.stage_counts,
        "unmet_constraints": gdo.unmet,
    }
    floors = constraints.source_group_floor_requirements
    achieved["source_group_floor_achieved"] = {g: gdo.group_counts.get(g, 0) for g in floors}
    achieved["all_constraints_met"] = bool(
        constraints.min_video_count <= gdo.video_count <= constraints.max_video_count
        and gdo.temporal_video_count >= constraints.min_temporal_video_count
        and all(gdo.group_counts.get(g, 0) >= req for g, req in floors.items())
        and n_sel == target_count
    )
    return achieved


def selection_report(
    qa: pl.DataFrame,
    prof: PoolProfile,
    *,
    profile_name: str,
    mode: Mode,
    seed: int,
    budget: Budget,
    quotas: Quotas,
    gdo: GdoSelection,
    uni_rows: list[int],
    ablations: Ablations,
    candidate_pools: dict[str, int],
    metrics_info: dict[str, Any],
    exclusion_info: dict[str, Any],
) -> dict[str, Any]:
    """The report of one selection (`build` adds the frames, outputs and inputs)."""
    field_probs = prof.field_probs()
    constraints = quotas.constraints
    achieved = achieved_constraints(gdo, constraints, budget.target_count)
    return {
        "profile": profile_name,
        "mode": mode,
        "seed": seed,
        "total_pairs": prof.total,
        "target_count": budget.target_count,
        "random_target_count": budget.random_target_count,
        "budget_info": budget.info,
        "bucket_quotas": quotas.bucket,
        "num_strata": int(quotas.stratum.size),
        "hard_constraints": {**constraints.targets(), **achieved},
        "filtered_summary": subset_summary(qa, gdo.rows, field_probs),
        "random_summary": subset_summary(qa, uni_rows, field_probs),
        "overlap_ratio": overlap_ratio(qa["qa_uid"], gdo.rows, uni_rows),
        "ablations": ablations.active(),
        "candidate_pools": candidate_pools,
        "metrics": metrics_info,
        "exclusion_guard": exclusion_info,
        **prof.to_report(),
    }
