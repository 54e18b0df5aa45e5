"""The 1x budget, quotas and hard constraints of a goal subset (docs/method.md, Budget and
Quotas and hard constraints).

Everything here works on per-stratum / per-group counts (thousands of numbers at most), so it is
plain Python in the published order of operations; the counts themselves come from polars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdo_core.profiles import GoalProfile

ENTROPY_FLOOR = 1e-12  # p floor inside the entropy's log
TAIL_PROB_FLOOR = 1e-9  # p_tail floor in n_tail = tail_target / p_tail
FLOOR_TOTAL_CAP = 0.7  # source-group floors may take at most 70% of the budget
UNI_SIZE_MIN = 1


@dataclass
class Budget:
    """The 1x target count, the Uni-10x count and how they were reached."""

    target_count: int
    random_target_count: int
    info: dict[str, Any]


def auto_budget(
    total: int, stratum_counts: Sequence[int], profile: GoalProfile
) -> tuple[int, dict[str, Any]]:
    """Auto 1x size: max of min_count, min_ratio, exp(entropy)*strata_mult and tail coverage, capped."""
    if total <= 0:
        return 0, {}
    probs = [c / float(total) for c in stratum_counts if c > 0]
    if not probs:
        fallback = min(total, max(profile.min_count, int(total * max(profile.min_ratio, 0.001))))
        return fallback, {"mode": "fallback_no_probs"}
    entropy = 0.0
    for p in probs:
        entropy -= p * math.log(max(p, ENTROPY_FLOOR))
    effective_strata = math.exp(entropy)
    cov, covered, p_tail = 0.0, 0, min(probs)
    for p in sorted(probs, reverse=True):
        cov += p
        covered += 1
        p_tail = p
        if cov >= profile.coverage_mass:
            break
    n_eff = math.ceil(max(1.0, effective_strata * max(1.0, profile.strata_mult)))
    n_tail = math.ceil(max(1.0, profile.tail_target) / max(p_tail, TAIL_PROB_FLOOR))
    low_ratio_count = math.ceil(total * max(profile.min_ratio, 0.0))
    high_ratio_count = math.floor(total * max(profile.max_ratio, 0.0))
    if high_ratio_count <= 0:
        high_ratio_count = total
    n = max(profile.min_count, low_ratio_count, n_eff, n_tail)
    n = min(n, profile.max_count, high_ratio_count, total)
    n = max(1, min(n, total))
    info = {
        "mode": "distribution_auto",
        "effective_strata": effective_strata,
        "coverage_mass": profile.coverage_mass,
        "covered_strata": covered,
        "tail_prob_at_coverage": p_tail,
        "n_from_effective_strata": n_eff,
        "n_from_tail_coverage": n_tail,
        "n_from_min_ratio": low_ratio_count,
        "n_from_max_ratio": high_ratio_count,
        "recommended_count": n,
        "recommended_ratio": n / float(total),
    }
    return n, info


def fixed_budget(
    total: int, target_count: int | None, target_ratio: float | None
) -> tuple[int, dict[str, Any]]:
    """A fixed 1x size: a count (capped at the pool) or a share of the pool (at least 1)."""
    if target_count is not None and target_count > 0:
        return min(target_count, total), {"mode": "fixed_count", "requested_count": target_count}
    if target_ratio is None or not 0 < target_ratio <= 1:
        raise ValueError(f"target ratio must be in (0, 1], got {target_ratio!r}")
    n = min(max(1, int(total * target_ratio)), total)
    return n, {"mode": "fixed_ratio", "requested_ratio": target_ratio}


def vds3_adjusted_budget(
    base_target: int, total: int, vds3_per_metric_row: np.ndarray, profile: GoalProfile
) -> tuple[int, dict[str, Any]]:
    """Raise the auto size so that ~vds3_target_positive rows with vds3' > threshold fit, capped."""
    if base_target <= 0 or total <= 0:
        return base_target, {"enabled": False, "reason": "empty_target_or_total"}
    total_valid = int(vds3_per_metric_row.size)
    if total_valid <= 0:
        return base_target, {"enabled": False, "reason": "no_legacy_metrics"}
    pos = int(np.count_nonzero(vds3_per_metric_row > profile.vds3_threshold))
    pos_ratio = pos / float(total_valid)
    if pos_ratio <= 0:
        return base_target, {
            "enabled": True,
            "reason": "zero_positive_ratio",
            "vds3_positive_ratio": 0.0,
            "vds3_positive_count": pos,
            "vds3_total_count": total_valid,
            "n_from_vds3_positive": total,
            "adjusted_target": base_target,
        }
    n_from_vds3 = math.ceil(max(1, profile.vds3_target_positive) / pos_ratio)
    n_cap_mult = math.ceil(base_target * max(1.0, profile.vds3_max_mult))
    n_cap_ratio = math.floor(total * max(profile.max_ratio, 0.0))
    if n_cap_ratio <= 0:
        n_cap_ratio = total
    n_cap = min(total, max(1, profile.max_count), max(1, n_cap_mult), max(1, n_cap_ratio))
    adjusted = min(max(base_target, n_from_vds3), n_cap)
    adjusted = max(1, min(adjusted, total))
    return adjusted, {
        "enabled": True,
        "vds3_positive_ratio": pos_ratio,
        "vds3_positive_count": pos,
        "vds3_total_count": total_valid,
        "vds3_threshold": profile.vds3_threshold,
        "vds3_target_positive": profile.vds3_target_positive,
        "n_from_vds3_positive": n_from_vds3,
        "vds3_adjust_cap": n_cap,
        "adjusted_target": adjusted,
    }


def uni_size(target_count: int, multiplier: float) -> int:
    """Uni-10x size = ceil(1x size * multiplier), at least 1."""
    return max(UNI_SIZE_MIN, math.ceil(target_count * (multiplier if multiplier > 0 else 1.0)))


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


def candidate_caps(
    quotas: np.ndarray, is_video: np.ndarray, is_temporal_video: np.ndarray, profile: GoalProfile
) -> np.ndarray:
    """Per-stratum pool size cap_s = max(q_s, ceil(q_s*m)), m raised for video and temporal strata."""
    mult = np.full(quotas.size, max(profile.oversample, 1.0))
    mult = np.where(is_video, np.maximum(mult, profile.video_oversample), mult)
    mult = np.where(is_temporal_video, np.maximum(mult, profile.temporal_oversample), mult)
    caps = np.maximum(quotas, np.ceil(quotas * mult).astype(np.int64))
    return np.where(quotas > 0, caps, 0)
