"""Quotas and hard constraints of a goal subset: bucket and stratum quotas by largest remainder,
video bounds, the temporal-video minimum and source-group floors (docs/method.md, Quotas and
hard constraints).

Everything here works on per-stratum / per-group counts (thousands of numbers at most), so it is
plain Python in the published order of operations; the counts come from the pool profile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdo_core.pool_profile import PoolProfile
from gdo_core.profiles import GoalProfile
from gdo_core.schema import BUCKET_VIDEO

FLOOR_TOTAL_CAP = 0.7  # source-group floors may take at most 70% of the budget


def largest_remainder_quotas(counts: Sequence[int] | np.ndarray, target_count: int) -> np.ndarray:
    """Quotas proportional to counts: floor, then +1 by largest fractional part (ties: input order)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    if counts.size == 0 or total <= 0:
        return np.zeros(counts.size, dtype=np.int64)
    raw = target_count * (counts / total)
    quota = np.floor(raw)
    remain = int(target_count - quota.sum())
    quota = quota.astype(np.int64)
    if remain > 0:
        order = np.argsort(-(raw - quota), kind="stable")
        # remain < len(counts) always holds; the modulo keeps the published wrap-around anyway.
        bumps = order[np.arange(remain) % order.size]
        np.add.at(quota, bumps, 1)
    return quota


@dataclass
class HardConstraints:
    """Video bounds, temporal minimum and source-group floors for one 1x size."""

    temporal_categories: tuple[str, ...]
    full_video_ratio: float
    full_temporal_in_video_ratio: float
    min_video_ratio_effective: float
    min_video_count: int
    max_video_ratio_effective: float
    max_video_count: int
    min_temporal_in_video_ratio_effective: float
    min_temporal_video_count: int
    source_group_floor_requirements: dict[str, int] = field(default_factory=dict)

    def targets(self) -> dict[str, Any]:
        """The target half of the report's hard_constraints block."""
        return {
            "temporal_categories": sorted(self.temporal_categories),
            "full_video_ratio": self.full_video_ratio,
            "full_temporal_in_video_ratio": self.full_temporal_in_video_ratio,
            "min_video_ratio_effective": self.min_video_ratio_effective,
            "min_video_count": self.min_video_count,
            "max_video_ratio_effective": self.max_video_ratio_effective,
            "max_video_count": self.max_video_count,
            "min_temporal_in_video_ratio_effective": self.min_temporal_in_video_ratio_effective,
            "min_temporal_video_count": self.min_temporal_video_count,
            "source_group_floor_requirements": dict(self.source_group_floor_requirements),
        }


def source_group_floors(
    group_counts_desc: Sequence[tuple[str, int]],
    target_count: int,
    total: int,
    profile: GoalProfile,
) -> dict[str, int]:
    """Floors for the top-k groups (counts sorted desc, ties first-seen): max(ratio floor, frac*expected)."""
    topk, min_ratio, frac = (
        profile.source_group_floor_topk,
        profile.min_source_group_ratio,
        profile.floor_frac_of_expected,
    )
    if topk <= 0 or min_ratio <= 0 or total <= 0 or target_count <= 0:
        return {}
    floor_abs = max(1, math.ceil(target_count * min_ratio))
    req: dict[str, int] = {}
    for group, cnt in list(group_counts_desc)[:topk]:
        if cnt <= 0:
            continue
        expected = target_count * (cnt / float(total))
        required = max(floor_abs, math.ceil(max(0.0, frac) * expected))
        if required <= math.floor(expected):  # only where the group can carry it
            req[group] = required
    max_total = math.floor(target_count * FLOOR_TOTAL_CAP)
    if max_total <= 0:
        return {}
    total_req = sum(req.values())
    if total_req > max_total:
        scale = max_total / float(total_req)
        req = {g: max(1, math.floor(v * scale)) for g, v in req.items()}
    return req


def hard_constraints(
    *,
    target_count: int,
    total: int,
    video_count: int,
    temporal_video_count: int,
    video_quota: int,
    group_counts_desc: Sequence[tuple[str, int]],
    profile: GoalProfile,
) -> HardConstraints:
    """Video min/max counts, the temporal-video minimum and source-group floors
    (docs/method.md, Quotas and hard constraints)."""
    full_video_ratio = video_count / float(total) if total > 0 else 0.0
    min_video_ratio = profile.min_video_ratio if profile.min_video_ratio >= 0 else full_video_ratio
    min_video_ratio = max(0.0, min(1.0, min_video_ratio))
    min_video_count = math.ceil(min_video_ratio * target_count)
    max_video_ratio = (
        1.0 if profile.max_video_ratio < 0 else max(0.0, min(1.0, profile.max_video_ratio))
    )
    max_video_count = math.floor(max_video_ratio * target_count)
    max_video_count = max(min_video_count, min(max_video_count, target_count))
    full_temporal_ratio = temporal_video_count / float(video_count) if video_count > 0 else 0.0
    min_temporal_ratio = (
        profile.min_temporal_in_video_ratio
        if profile.min_temporal_in_video_ratio >= 0
        else full_temporal_ratio
    )
    min_temporal_ratio = max(0.0, min(1.0, min_temporal_ratio))
    temporal_base = max(min_video_count, video_quota)
    min_temporal_count = max(0, min(math.ceil(min_temporal_ratio * temporal_base), target_count))
    return HardConstraints(
        temporal_categories=tuple(profile.temporal_categories),
        full_video_ratio=full_video_ratio,
        full_temporal_in_video_ratio=full_temporal_ratio,
        min_video_ratio_effective=min_video_ratio,
        min_video_count=min_video_count,
        max_video_ratio_effective=max_video_ratio,
        max_video_count=max_video_count,
        min_temporal_in_video_ratio_effective=min_temporal_ratio,
        min_temporal_video_count=min_temporal_count,
        source_group_floor_requirements=source_group_floors(
            group_counts_desc, target_count, total, profile
        ),
    )


@dataclass
class Quotas:
    """Bucket and stratum quotas of one 1x size, and its hard constraints."""

    bucket: dict[str, int]  # bucket -> quota, buckets in first-seen order
    stratum: np.ndarray  # quota per stratum code
    constraints: HardConstraints


def pool_quotas(prof: PoolProfile, target_count: int, profile: GoalProfile) -> Quotas:
    """The quotas and hard constraints of the pool for a 1x size of target_count."""
    temporal_set = tuple(profile.temporal_categories)
    bucket_names = list(prof.bucket_counts)
    bucket_quota = largest_remainder_quotas(
        [prof.bucket_counts[b] for b in bucket_names], target_count
    )
    bucket_quotas = dict(zip(bucket_names, bucket_quota.tolist()))
    stratum_quotas = largest_remainder_quotas(prof.strata["count"].to_numpy(), target_count)
    video_count = prof.bucket_counts.get(BUCKET_VIDEO, 0)
    temporal_video_count = sum(prof.video_temporal_counts.get(t, 0) for t in temporal_set)
    constraints = hard_constraints(
        target_count=target_count,
        total=prof.total,
        video_count=video_count,
        temporal_video_count=temporal_video_count,
        video_quota=bucket_quotas.get(BUCKET_VIDEO, 0),
        group_counts_desc=prof.groups_desc(),
        profile=profile,
    )
    return Quotas(bucket_quotas, stratum_quotas, constraints)
