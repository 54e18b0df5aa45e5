"""The 1x budget and the Uni-10x size of a goal subset (docs/method.md, Budget).

Everything here works on per-stratum counts (thousands of numbers at most), so it is plain Python
in the published order of operations; the counts themselves come from polars. The quotas and
hard constraints that follow from the budget are in `quotas`, the pool caps in `candidate_pools`
(both re-exported here, where they used to live).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gdo_core.candidate_pools import candidate_caps
from gdo_core.profiles import GoalProfile
from gdo_core.quotas import (
    FLOOR_TOTAL_CAP,
    HardConstraints,
    hard_constraints,
    largest_remainder_quotas,
    source_group_floors,
)

__all__ = [
    "ENTROPY_FLOOR",
    "FLOOR_TOTAL_CAP",
    "TAIL_PROB_FLOOR",
    "UNI_SIZE_MIN",
    "Budget",
    "HardConstraints",
    "auto_budget",
    "candidate_caps",
    "fixed_budget",
    "hard_constraints",
    "largest_remainder_quotas",
    "selection_budget",
    "source_group_floors",
    "uni_size",
    "vds3_adjusted_budget",
]

ENTROPY_FLOOR = 1e-12  # p floor inside the entropy's log
TAIL_PROB_FLOOR = 1e-9  # p_tail floor in n_tail = tail_target / p_tail
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


def selection_budget(
    total: int,
    stratum_counts: Sequence[int],
    profile: GoalProfile,
    *,
    target_count: int | None,
    target_ratio: float | None,
    uni_count: int | None,
    vds3_per_metric_row: np.ndarray | None,
) -> Budget:
    """The 1x size (fixed when a count or ratio is given, else automatic and, with
    vds3_per_metric_row, raised for vds3') and the Uni size (uni_count, else from the 1x size)."""
    if (target_count or 0) > 0 or (target_ratio or 0) > 0:
        n, info = fixed_budget(total, target_count, target_ratio)
    else:
        n, info = auto_budget(total, stratum_counts, profile)
        if vds3_per_metric_row is not None and info.get("mode") == "distribution_auto":
            n, vds3_info = vds3_adjusted_budget(n, total, vds3_per_metric_row, profile)
            info["vds3_adjustment"] = vds3_info
            info["recommended_count"] = n
            info["recommended_ratio"] = n / float(total)
    return Budget(n, uni_count or uni_size(n, profile.uni_multiplier), info)
