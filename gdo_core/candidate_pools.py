"""Candidate pools: each stratum's pool cap, its top cap_s QAs by (score, tie-break), and the
global order of all pools (docs/method.md, Candidate pools and acceptance).

The exact top-k equals the published per-stratum heap unless scores tie across a pool's
boundary; in published mode those strata are replayed through the heap in scan order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from gdo_core.pool_profile import PoolProfile
from gdo_core.profiles import GoalProfile
from gdo_core.schema import BUCKET_VIDEO


def candidate_caps(
    quotas: np.ndarray, is_video: np.ndarray, is_temporal_video: np.ndarray, profile: GoalProfile
) -> np.ndarray:
    """Per-stratum pool size cap_s = max(q_s, ceil(q_s*m)), m raised for video and temporal strata."""
    mult = np.full(quotas.size, max(profile.oversample, 1.0))
    mult = np.where(is_video, np.maximum(mult, profile.video_oversample), mult)
    mult = np.where(is_temporal_video, np.maximum(mult, profile.temporal_oversample), mult)
    caps = np.maximum(quotas, np.ceil(quotas * mult).astype(np.int64))
    return np.where(quotas > 0, caps, 0)


def pool_caps(prof: PoolProfile, stratum_quotas: np.ndarray, profile: GoalProfile) -> np.ndarray:
    """cap_s of every stratum of the pool (`candidate_caps`, video and temporal strata marked)."""
    temporal_set = tuple(profile.temporal_categories)
    strata_is_video = (prof.strata["bucket"] == BUCKET_VIDEO).to_numpy()
    strata_is_temporal = (
        strata_is_video & prof.strata["temporal_category"].is_in(list(temporal_set)).to_numpy()
    )
    return candidate_caps(stratum_quotas, strata_is_video, strata_is_temporal, profile)


def _heap_pool(rows: np.ndarray, score: np.ndarray, tie: np.ndarray, cap: int) -> list[int]:
    """The published per-stratum min-heap over rows in scan order: replace the root only on a higher score."""
    heap: list[tuple[float, float, int]] = []
    for i in rows.tolist():
        key = (float(score[i]), float(tie[i]), i)
        if len(heap) < cap:
            heapq.heappush(heap, key)
        elif key[0] > heap[0][0]:
            heapq.heapreplace(heap, key)
    return [k[2] for k in heap]


def candidate_pools(
    stratum_code: np.ndarray,
    score: np.ndarray,
    tie: np.ndarray,
    caps: np.ndarray,
    *,
    published_heap: bool,
) -> tuple[np.ndarray, int]:
    """Row indices of every stratum's pool (its top cap_s by score, tie-break) and how many strata needed the heap.

    The top-k equals the published heap result unless scores tie across the pool boundary; those
    strata (published mode only) are replayed through the heap in scan order. Only rows scoring at
    least their stratum's cap_s-th best score are sorted.
    """
    code = np.asarray(stratum_code, dtype=np.int64)
    caps = np.asarray(caps, dtype=np.int64)
    if np.isnan(score).any() or np.isnan(tie).any():
        return _candidate_pools_sorted(code, score, tie, caps, published_heap=published_heap)
    sizes = np.bincount(code, minlength=caps.size)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Rows grouped by stratum, scan order within (a radix sort for up to 2**16 strata).
    by_code = np.argsort(code.astype(np.uint16) if caps.size <= 1 << 16 else code, kind="stable")
    grouped_score = score[by_code]
    threshold = np.full(caps.size, -np.inf)
    for c in np.nonzero((caps > 0) & (sizes > caps))[0].tolist():
        part = grouped_score[starts[c] : starts[c] + sizes[c]]
        k = int(sizes[c] - caps[c])
        threshold[c] = np.partition(part, k)[k]  # the cap_s-th best score
    candidates = np.nonzero((caps[code] > 0) & (score >= threshold[code]))[0]
    pools, ranked_codes, top = _top_per_stratum(candidates, code, score, tie, caps)
    replayed = 0
    if published_heap:
        # A stratum ties at the boundary when a row beyond cap_s has the cap_s-th score.
        tied = np.nonzero((caps > 0) & (np.bincount(ranked_codes, minlength=caps.size) > caps))[0]
        if tied.size:
            replayed = int(tied.size)
            pools = _replay_tied(
                pools,
                ranked_codes[top],
                tied,
                lambda c: by_code[starts[c] : starts[c] + sizes[c]],
                score,
                tie,
                caps,
            )
    return pools, replayed


def _replay_tied(
    pools: np.ndarray,
    pool_codes: np.ndarray,
    tied: np.ndarray,
    stratum_rows: Callable[[int], np.ndarray],
    score: np.ndarray,
    tie: np.ndarray,
    caps: np.ndarray,
) -> np.ndarray:
    """The pools with each tied stratum's pool replaced by the published heap's over its rows (scan order)."""
    parts = [pools[~np.isin(pool_codes, tied)]]
    for c in tied.tolist():
        parts.append(
            np.asarray(_heap_pool(stratum_rows(c), score, tie, int(caps[c])), dtype=np.int64)
        )
    return np.concatenate(parts)


def _top_per_stratum(
    rows: np.ndarray, code: np.ndarray, score: np.ndarray, tie: np.ndarray, caps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the first cap_s of each stratum by score, tie-break, row; codes of all rows in that order; which were kept)."""
    order = rows[np.lexsort((-tie[rows], -score[rows], code[rows]))]
    codes_sorted = code[order]
    starts = np.searchsorted(codes_sorted, np.arange(caps.size), side="left")
    keep = np.arange(order.size) - starts[codes_sorted] < caps[codes_sorted]
    return order[keep], codes_sorted, keep


def _candidate_pools_sorted(
    code: np.ndarray, score: np.ndarray, tie: np.ndarray, caps: np.ndarray, *, published_heap: bool
) -> tuple[np.ndarray, int]:
    """`candidate_pools` by one sort of every row (NaN scores or tie-breaks sort last, as lexsort does)."""
    order = np.lexsort((-tie, -score, code))
    codes_sorted = code[order]
    starts = np.searchsorted(codes_sorted, np.arange(caps.size), side="left")
    ends = np.searchsorted(codes_sorted, np.arange(caps.size), side="right")
    keep = np.arange(order.size) - starts[codes_sorted] < caps[codes_sorted]
    pools = order[keep]
    replayed = 0
    if published_heap:
        sizes = ends - starts
        over = np.nonzero((caps > 0) & (sizes > caps))[0]
        if over.size:
            at_cap = score[order[starts[over] + caps[over] - 1]]
            below = score[order[starts[over] + caps[over]]]
            tied = over[at_cap == below]
            if tied.size:
                replayed = int(tied.size)
                pools = _replay_tied(
                    pools,
                    codes_sorted[keep],
                    tied,
                    lambda c: np.sort(order[starts[c] : ends[c]]),
                    score,
                    tie,
                    caps,
                )
    return pools, replayed


def by_score_desc(rows: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Rows sorted by (score, tie-break) descending, ties kept in input order."""
    order = np.lexsort((np.arange(rows.size), -tie[rows], -score[rows]))
    return rows[order]


def strata_pools_of(
    tail: np.ndarray, stratum_code: np.ndarray, n_strata: int
) -> dict[int, np.ndarray]:
    """Each stratum's pool in the global order (`tail`), by stratum code (strata with a pool only)."""
    tail_codes = stratum_code[tail]
    grouped = tail[np.argsort(tail_codes, kind="stable")]
    bounds = np.searchsorted(np.sort(tail_codes, kind="stable"), np.arange(n_strata + 1))
    return {c: grouped[bounds[c] : bounds[c + 1]] for c in np.unique(tail_codes).tolist()}
