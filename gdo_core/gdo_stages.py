"""The six stages that fill GDO 1x, each through the acceptance rule: temporal-video minimum,
video minimum, source-group floors, stratum quotas, global tail, reservoir fallback
(docs/method.md, Candidate pools and acceptance).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from gdo_core.acceptance import _Acceptor, _RowAttrs
from gdo_core.quotas import HardConstraints

STAGE_TEMPORAL = "hard_temporal_video"
STAGE_VIDEO = "hard_video"
STAGE_GROUP_PREFIX = "hard_source_group::"
STAGE_STRATUM = "stratum_quota"
STAGE_GLOBAL = "global_tail"
STAGE_RESERVOIR = "reservoir_fallback"


@dataclass
class GdoSelection:
    """Selected rows in output order with the stage that took each, and constraint status."""

    rows: list[int]
    stages: list[str]
    stage_counts: dict[str, int]
    unmet: dict[str, int]
    video_count: int
    temporal_video_count: int
    group_counts: Counter[str]


def select_gdo(
    *,
    tail: np.ndarray,
    strata_pools: dict[int, np.ndarray],
    stratum_quotas: np.ndarray,
    constraints: HardConstraints,
    reservoir: np.ndarray,
    target_count: int,
    max_qa_per_video: int,
    row_attrs: _RowAttrs,
) -> GdoSelection:
    """The six stages in order: temporal-video min, video min, group floors, stratum quotas, global fill, reservoir."""
    a = row_attrs
    acc = _Acceptor(
        a.uid,
        a.text,
        a.is_video,
        a.video_uid,
        max_video=constraints.max_video_count,
        max_per_video=max_qa_per_video,
        limit=target_count,
    )
    tail_local = a.local(tail)  # local positions from here on
    temporal_video = a.is_video & a.temporal
    unmet: dict[str, int] = {}
    missing = acc.fill(
        tail_local[temporal_video[tail_local]],
        constraints.min_temporal_video_count,
        STAGE_TEMPORAL,
    )
    if missing > 0:
        unmet["temporal_video_min"] = missing
    missing = acc.fill(
        tail_local[a.is_video[tail_local]], constraints.min_video_count - acc.n_video, STAGE_VIDEO
    )
    if missing > 0:
        unmet["video_min"] = missing
    group_code = {name: code for code, name in enumerate(a.group_names or [])}
    for group, req in constraints.source_group_floor_requirements.items():
        code = group_code.get(group, -1)
        need = req - int(np.count_nonzero(a.group[acc.rows] == code)) if code >= 0 else req
        if need <= 0:
            continue
        missing = acc.fill(
            tail_local[a.group[tail_local] == code], need, STAGE_GROUP_PREFIX + group
        )
        if missing > 0:
            unmet[f"source_group::{group}"] = missing
    by_stratum = np.bincount(a.stratum[acc.rows], minlength=stratum_quotas.size)
    for code, quota in enumerate(stratum_quotas.tolist()):
        if len(acc.rows) >= target_count:
            break
        need = quota - int(by_stratum[code])  # only this stratum's own pool changes its count
        if quota > 0 and need > 0 and code in strata_pools:
            acc.fill(a.local(strata_pools[code]), need, STAGE_STRATUM)
    if len(acc.rows) < target_count:
        acc.fill(tail_local, target_count - len(acc.rows), STAGE_GLOBAL)
    if len(acc.rows) < target_count:
        acc.fill(a.local(reservoir), target_count - len(acc.rows), STAGE_RESERVOIR)
    taken = np.asarray(acc.rows, dtype=np.int64)
    names = a.group_names or []
    return GdoSelection(
        rows=a.rows[taken].tolist(),
        stages=acc.stages,
        stage_counts=dict(Counter(acc.stages)),
        unmet=unmet,
        video_count=acc.n_video,
        temporal_video_count=int(np.count_nonzero(temporal_video[taken])),
        group_counts=Counter([names[g] for g in a.group[taken].tolist()]),
    )
