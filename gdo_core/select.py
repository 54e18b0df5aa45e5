"""Subset construction (ALGORITHM.md §5): pool profile, exclusion guard, budget, quotas, candidate
pools, the six selection stages, the Uni-10x baseline, summaries and SFT-ready rows.

Everything over the whole pool is polars/numpy; Python loops only where the method is sequential:
the seeded draws in published mode (one `random.Random` stream in scan order), the heap of a
stratum whose pool boundary has tied scores (published mode), and acceptance over candidates.

Two modes share this code: `published` reproduces the published build step bit for bit
(quirks included); `default` keeps the fixes (MCQ on raw text upstream, order-free seeded draws
from numpy, pools = exact top-k by (score, tie-break)).
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from gdo_core import budget as B
from gdo_core.candidate_score import (
    Ablations,
    ScoreInputs,
    distinct_answer_tokens,
    metric_stats,
    metric_z_terms,
    score_terms,
)
from gdo_core.profiles import GoalProfile
from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO, STRATUM_FIELDS
from gdo_core.strata import MEDIA_TOKEN_PATTERN, collapse_ws

Mode = Literal["default", "published"]
ExcludeMode = Literal["question", "qa", "both"]

TEXT_KEY_SEPARATOR = "|||"  # (question, answer) identity, as the published text hash joins them
JS_EPS = 1e-12
TOP_GROUPS_REPORTED = 20

STAGE_TEMPORAL = "hard_temporal_video"
STAGE_VIDEO = "hard_video"
STAGE_GROUP_PREFIX = "hard_source_group::"
STAGE_STRATUM = "stratum_quota"
STAGE_GLOBAL = "global_tail"
STAGE_RESERVOIR = "reservoir_fallback"
STAGE_UNI = "uni_random"

# Output-row constants of the published SFT files.
SOURCE_NAME = {BUCKET_IMAGE: "llava_onevision_full", BUCKET_VIDEO: "llava_video_full"}
SOURCE_DOMAIN = {BUCKET_IMAGE: "image", BUCKET_VIDEO: "video_short"}
IMAGE_TOKEN = "<image>"


# ---- pool profile ---------------------------------------------------------------------------


@dataclass
class PoolProfile:
    """Counts of the full pool: per field value, stratum, data_source, group, bucket (first-seen order)."""

    total: int
    field_counts: dict[str, dict[str, int]]
    strata: pl.DataFrame  # stratum, count, the seven fields; row i = stratum code i
    source_counts: dict[str, int]
    group_counts: dict[str, int]
    bucket_counts: dict[str, int]
    video_temporal_counts: dict[str, int]
    stratum_code: np.ndarray  # per QA row, index into strata
    group_code: np.ndarray  # per QA row, index into group_counts
    source_code: np.ndarray  # per QA row, index into source_counts

    def field_probs(self) -> dict[str, dict[str, float]]:
        """p(value) per field (count / field total), the `stable_profile` of the published code."""
        out: dict[str, dict[str, float]] = {}
        for name, counts in self.field_counts.items():
            s = sum(counts.values())
            out[name] = {k: v / s for k, v in counts.items()} if s > 0 else {}
        return out

    def groups_desc(self) -> list[tuple[str, int]]:
        """Source groups by count, descending, ties in first-seen order (Counter.most_common)."""
        return Counter(self.group_counts).most_common()

    def to_report(self) -> dict[str, Any]:
        """The full-pool counts written to report.json."""
        return {
            "full_bucket_counts": dict(self.bucket_counts),
            "full_profile_fields": {k: dict(v) for k, v in self.field_counts.items()},
            "source_group_counts": dict(self.group_counts),
            "full_video_temporal_counts": dict(self.video_temporal_counts),
        }


def first_seen_codes(values: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-row code, first row of each code, count of each code), codes numbered in first-seen order.

    Strings become integers through a categorical cast, so no string hash table is built over the
    pool (a string group_by on a million rows holds ~350 MB).
    """
    physical = values.cast(pl.Categorical).to_physical().to_numpy()
    _, first, inverse, counts = np.unique(
        physical, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)].astype(np.int64), first[order], counts[order]


def pool_profile(qa: pl.DataFrame) -> PoolProfile:
    """Counts of the pool's field values, strata, sources, groups and buckets, in first-seen order.

    Only the stratum and data_source passes touch every row; the field, group and bucket counts
    are sums over the stratum table (a value's first stratum holds its first row, so the
    first-seen order is the same).
    """
    stratum_code, first_rows, counts = first_seen_codes(qa["stratum"])
    strata = (
        qa.select("stratum", *STRATUM_FIELDS)[pl.Series(first_rows)]
        .with_columns(pl.Series("count", counts, dtype=pl.Int64))
        .with_row_index("code")
    )
    source_code, source_first, source_counts = first_seen_codes(qa["data_source"])
    source_names = qa["data_source"].gather(source_first).to_list()

    def sums(frame: pl.DataFrame, col: str) -> dict[str, int]:
        return dict(frame.group_by(col, maintain_order=True).agg(pl.col("count").sum()).iter_rows())

    field_counts = {name: sums(strata, name) for name in STRATUM_FIELDS}
    groups = (
        strata.group_by("source_group", maintain_order=True)
        .agg(pl.col("count").sum())
        .with_row_index("code")
    )
    group_of_stratum = (
        strata.select("source_group")
        .join(
            groups.select("source_group", "code"),
            on="source_group",
            how="left",
            maintain_order="left",
        )["code"]
        .to_numpy()
        .astype(np.int64)
    )
    return PoolProfile(
        total=qa.height,
        field_counts=field_counts,
        strata=strata,
        source_counts=dict(zip(source_names, source_counts.tolist())),
        group_counts=dict(groups.select("source_group", "count").iter_rows()),
        bucket_counts=dict(field_counts["bucket"]),
        video_temporal_counts=sums(
            strata.filter(pl.col("bucket") == BUCKET_VIDEO), "temporal_category"
        ),
        stratum_code=stratum_code,
        group_code=group_of_stratum[stratum_code],
        source_code=source_code,
    )


def score_inputs(qa: pl.DataFrame, prof: PoolProfile) -> ScoreInputs:
    """The per-QA keys and per-stratum / per-source tables of the candidate score."""
    return ScoreInputs(
        question_len=qa["question_len"].to_numpy(),
        answer_len=qa["answer_len"].to_numpy(),
        distinct_answer=distinct_answer_tokens(qa["answer"], qa["answer_len"].to_numpy()),
        is_video=(qa["bucket"] == BUCKET_VIDEO).to_numpy(),
        stratum_code=prof.stratum_code,
        strata_fields=prof.strata.select(STRATUM_FIELDS).to_dicts(),
        source_code=prof.source_code,
        source_counts=list(prof.source_counts.values()),
        field_probs=prof.field_probs(),
        total=prof.total,
    )


# ---- exclusion guard (benchmark decontamination) ----------------------------------------------

_MEDIA_RE = re.compile(MEDIA_TOKEN_PATTERN)


class ExclusionError(ValueError):
    """A reference file for the exclusion guard that cannot be read."""


@dataclass
class ExclusionReference:
    """Normalised questions and question+TAB+answer texts of benchmark reference files."""

    mode: ExcludeMode
    questions: set[str] = field(default_factory=set)
    qa_pairs: set[str] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=dict)


def _normalize_text(x: object) -> str:
    return "" if x is None else collapse_ws(str(x))


def _reference_pairs(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs of one reference row: its question/answer fields and message pairs."""
    out: list[tuple[str, str]] = []
    q, a = _normalize_text(item.get("question")), _normalize_text(item.get("answer"))
    if q:
        out.append((q, a))
    messages = item.get("messages", item.get("conversations"))
    if isinstance(messages, list):
        user = ""
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = _normalize_text(m.get("role", m.get("from", ""))).lower()
            content = _normalize_text(m.get("content", m.get("value", "")))
            if role in ("user", "human"):
                user = _normalize_text(_MEDIA_RE.sub(" ", content))
            elif role in ("assistant", "gpt") and user:
                answer = _normalize_text(content)
                if answer:
                    out.append((user, answer))
                user = ""
    return list(dict.fromkeys(out))


def load_exclusion_reference(
    paths: Sequence[Path | str], mode: ExcludeMode = "both"
) -> ExclusionReference:
    """Read reference JSONL files into sets of normalised questions and question<TAB>answer texts."""
    if mode not in ("question", "qa", "both"):
        raise ExclusionError(f"exclusion mode must be question, qa or both, got {mode!r}")
    ref = ExclusionReference(mode=mode)
    rows_seen = rows_bad = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ExclusionError(f"{path}: exclusion reference file not found")
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rows_seen += 1
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    rows_bad += 1
                    continue
                if not isinstance(item, dict):
                    rows_bad += 1
                    continue
                for q, a in _reference_pairs(item):
                    if mode in ("question", "both") and q:
                        ref.questions.add(q)
                    if mode in ("qa", "both") and q and a:
                        ref.qa_pairs.add(f"{q}\t{a}")
    ref.stats = {
        "enabled": bool(paths),
        "mode": mode,
        "paths": [str(p) for p in paths],
        "files_loaded": len(paths),
        "rows_seen": rows_seen,
        "rows_bad": rows_bad,
        "q_hashes": len(ref.questions),
        "qa_hashes": len(ref.qa_pairs),
    }
    return ref


def exclusion_reason(qa: pl.DataFrame, ref: ExclusionReference) -> pl.Series:
    """Per QA: "question" or "qa" when it matches the reference (question checked first), else null."""
    q_hit = pl.col("question").is_in(
        pl.lit(pl.Series(sorted(ref.questions), dtype=pl.String)).implode()
    )
    qa_text = pl.concat_str([pl.col("question"), pl.col("answer")], separator="\t")
    qa_hit = qa_text.is_in(pl.lit(pl.Series(sorted(ref.qa_pairs), dtype=pl.String)).implode())
    expr = (
        pl.when(q_hit)
        .then(pl.lit("question"))
        .when(qa_hit)
        .then(pl.lit("qa"))
        .otherwise(pl.lit(None))
    )
    return qa.select(expr.cast(pl.String).alias("reason"))["reason"]


# ---- seeded draws ---------------------------------------------------------------------------


@dataclass
class Draws:
    """Per-row tie-breaks, the Uni reservoir (row indices, reservoir order) and its shuffled order."""

    tie: np.ndarray
    reservoir: np.ndarray
    uni_order: np.ndarray


def published_draws(n_rows: int, reservoir_cap: int, seed: int) -> Draws:
    """One random.Random(seed) stream in scan order: random() per row, randint(1, seen) once full."""
    rng = random.Random(seed)
    rnd, getrandbits = rng.random, rng.getrandbits
    fill = min(reservoir_cap, n_rows)
    tie = [rnd() for _ in range(fill)]
    reservoir = list(range(fill))
    append = tie.append
    for i in range(fill, n_rows):
        append(rnd())
        if reservoir_cap <= 0:
            continue
        seen = i + 1
        # randint(1, seen) == 1 + _randbelow(seen): getrandbits(k) with rejection, inlined for speed.
        k = seen.bit_length()
        r = getrandbits(k)
        while r >= seen:
            r = getrandbits(k)
        if r < reservoir_cap:
            reservoir[r] = i
    uni_order = list(reservoir)
    rng.shuffle(uni_order)
    return Draws(
        np.asarray(tie, dtype=np.float64),
        np.asarray(reservoir, dtype=np.int64),
        np.asarray(uni_order, dtype=np.int64),
    )


def stable_draws(n_rows: int, reservoir_cap: int, seed: int) -> Draws:
    """Vectorised seeded draws (numpy PCG64): uniform tie-breaks and a uniform random reservoir."""
    rng = np.random.default_rng(seed)
    tie = rng.random(n_rows)
    keys = rng.random(n_rows)
    cap = min(reservoir_cap, n_rows)
    if cap <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return Draws(tie, empty, empty)
    part = np.argpartition(keys, cap - 1)[:cap] if cap < n_rows else np.arange(n_rows)
    order = part[np.lexsort((part, keys[part]))]  # by key, then row: already a random order
    return Draws(tie, np.sort(order), order)


# ---- candidate pools ------------------------------------------------------------------------


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
    strata (published mode only) are replayed through the heap in scan order.
    """
    order = np.lexsort((-tie, -score, stratum_code))
    codes_sorted = stratum_code[order]
    starts = np.searchsorted(codes_sorted, np.arange(caps.size), side="left")
    ends = np.searchsorted(codes_sorted, np.arange(caps.size), side="right")
    rank = np.arange(order.size) - starts[codes_sorted]
    keep = rank < caps[codes_sorted]
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
                tied_set = np.isin(codes_sorted[keep], tied)
                parts = [pools[~tied_set]]
                for code in tied.tolist():
                    rows = np.sort(order[starts[code] : ends[code]])
                    parts.append(
                        np.asarray(_heap_pool(rows, score, tie, int(caps[code])), dtype=np.int64)
                    )
                pools = np.concatenate(parts)
    return pools, replayed


def by_score_desc(rows: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Rows sorted by (score, tie-break) descending, ties kept in input order."""
    order = np.lexsort((np.arange(rows.size), -tie[rows], -score[rows]))
    return rows[order]


# ---- acceptance and the six stages ------------------------------------------------------------


class _Acceptor:
    """The acceptance rule: uid and (question, answer) unused, video count below max, per-video cap."""

    def __init__(
        self,
        uid: dict[int, str],
        text: dict[int, str],
        is_video: dict[int, bool],
        video_uid: dict[int, str],
        *,
        max_video: int | None,
        max_per_video: int,
        limit: int,
    ) -> None:
        self.uid, self.text, self.is_video, self.video_uid = uid, text, is_video, video_uid
        self.max_video, self.max_per_video, self.limit = max_video, max_per_video, limit
        self.used_uid: set[str] = set()
        self.used_text: set[str] = set()
        self.per_video: Counter[str] = Counter()
        self.n_video = 0
        self.rows: list[int] = []
        self.stages: list[str] = []

    def can_take(self, i: int, enforce_text: bool = True) -> bool:
        """Whether row i passes the acceptance rule now."""
        if self.uid[i] in self.used_uid:
            return False
        if enforce_text and self.text[i] in self.used_text:
            return False
        if self.is_video[i]:
            if self.max_video is not None and self.n_video >= self.max_video:
                return False
            vuid = self.video_uid[i]
            if vuid and self.per_video[vuid] >= self.max_per_video:
                return False
        return True

    def take(self, i: int, stage: str, enforce_text: bool = True) -> bool:
        """Accept row i under `stage` if there is room and it passes the rule."""
        if len(self.rows) >= self.limit or not self.can_take(i, enforce_text):
            return False
        self.rows.append(i)
        self.stages.append(stage)
        self.used_uid.add(self.uid[i])
        if enforce_text:
            self.used_text.add(self.text[i])
        if self.is_video[i]:
            self.n_video += 1
            vuid = self.video_uid[i]
            if vuid:
                self.per_video[vuid] += 1
        return True

    def fill(
        self,
        pool: Iterable[int],
        need: int,
        stage: str,
        on_take: Callable[[int], None] | None = None,
        enforce_text: bool = True,
    ) -> int:
        """Take up to `need` rows from the pool in order; returns how many are still missing.

        The acceptance rule of `can_take`/`take`, inlined: this loop runs over every candidate.
        """
        remain = max(0, int(need))
        if remain <= 0:
            return 0
        uid, text, is_video, video_uid = self.uid, self.text, self.is_video, self.video_uid
        used_uid, used_text, per_video, rows, stages = (
            self.used_uid,
            self.used_text,
            self.per_video,
            self.rows,
            self.stages,
        )
        max_video = self.max_video if self.max_video is not None else len(uid) + len(rows) + 1
        max_per_video, limit = self.max_per_video, self.limit
        for i in pool:
            if remain <= 0 or len(rows) >= limit:
                break
            u = uid[i]
            if u in used_uid:
                continue
            t = text[i]
            if enforce_text and t in used_text:
                continue
            video = is_video[i]
            if video:
                if self.n_video >= max_video:
                    continue
                v = video_uid[i]
                if v and per_video[v] >= max_per_video:
                    continue
                self.n_video += 1
                if v:
                    per_video[v] += 1
            rows.append(i)
            stages.append(stage)
            used_uid.add(u)
            if enforce_text:
                used_text.add(t)
            remain -= 1
            if on_take is not None:
                on_take(i)
        return remain


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
    strata_pools: dict[int, list[int]],
    stratum_quotas: np.ndarray,
    constraints: B.HardConstraints,
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
    by_stratum: Counter[int] = Counter()
    by_group: Counter[str] = Counter()
    temporal_video = 0

    def count(i: int) -> None:
        nonlocal temporal_video
        by_stratum[a.stratum[i]] += 1
        by_group[a.group[i]] += 1
        if a.is_video[i] and a.temporal[i]:
            temporal_video += 1

    tail_list = a.local(tail).tolist()  # local positions from here on
    unmet: dict[str, int] = {}
    temporal_pool = [i for i in tail_list if a.is_video[i] and a.temporal[i]]
    missing = acc.fill(
        temporal_pool, constraints.min_temporal_video_count - temporal_video, STAGE_TEMPORAL, count
    )
    if missing > 0:
        unmet["temporal_video_min"] = missing
    video_pool = [i for i in tail_list if a.is_video[i]]
    missing = acc.fill(video_pool, constraints.min_video_count - acc.n_video, STAGE_VIDEO, count)
    if missing > 0:
        unmet["video_min"] = missing
    for group, req in constraints.source_group_floor_requirements.items():
        need = req - by_group[group]
        if need <= 0:
            continue
        pool = [i for i in tail_list if a.group[i] == group]
        missing = acc.fill(pool, need, STAGE_GROUP_PREFIX + group, count)
        if missing > 0:
            unmet[f"source_group::{group}"] = missing
    for code, quota in enumerate(stratum_quotas.tolist()):
        if len(acc.rows) >= target_count:
            break
        need = quota - by_stratum[code]
        if quota > 0 and need > 0:
            pool = a.local(np.asarray(strata_pools.get(code, []), dtype=np.int64)).tolist()
            acc.fill(pool, need, STAGE_STRATUM, count)
    if len(acc.rows) < target_count:
        acc.fill(tail_list, target_count - len(acc.rows), STAGE_GLOBAL, count)
    if len(acc.rows) < target_count:
        acc.fill(a.local(reservoir).tolist(), target_count - len(acc.rows), STAGE_RESERVOIR, count)
    return GdoSelection(
        rows=a.rows[np.asarray(acc.rows, dtype=np.int64)].tolist(),
        stages=acc.stages,
        stage_counts=dict(Counter(acc.stages)),
        unmet=unmet,
        video_count=acc.n_video,
        temporal_video_count=temporal_video,
        group_counts=by_group,
    )


def select_uni(
    order: np.ndarray,
    uni_count: int,
    max_qa_per_video: int,
    row_attrs: _RowAttrs,
    *,
    repeats: bool = False,
) -> list[int]:
    """Uni-10x from the shuffled reservoir: unique uid+text+per-video cap, then relax text, then anything left.

    repeats=True is the published last pass, which appends reservoir rows even if already taken.
    """
    a = row_attrs
    acc = _Acceptor(
        a.uid,
        a.text,
        a.is_video,
        a.video_uid,
        max_video=None,
        max_per_video=max_qa_per_video,
        limit=uni_count,
    )
    pool = a.local(order).tolist()
    acc.fill(pool, uni_count, STAGE_UNI, enforce_text=True)
    if len(acc.rows) < uni_count:
        acc.fill(pool, uni_count - len(acc.rows), STAGE_UNI, enforce_text=False)
    rows = acc.rows
    taken = set() if repeats else set(rows)
    for i in pool:
        if len(rows) >= uni_count:
            break
        if i not in taken:
            rows.append(i)
    return a.rows[np.asarray(rows[:uni_count], dtype=np.int64)].tolist()


@dataclass
class _RowAttrs:
    """Attributes of just the rows acceptance can see, as lists indexed by local position.

    `rows[k]` is the pool row of local position k; pools handed to the stages are local positions.
    """

    rows: np.ndarray
    uid: list[str]
    text: list[str]
    is_video: list[bool]
    video_uid: list[str]
    temporal: list[bool]
    stratum: list[int]
    group: list[str]

    def local(self, pool_rows: np.ndarray) -> np.ndarray:
        """Local positions of pool rows (which must be among `rows`)."""
        return np.searchsorted(self.rows, pool_rows)


def _row_attrs(
    qa: pl.DataFrame, rows: np.ndarray, stratum_code: np.ndarray, temporal_set: Sequence[str]
) -> _RowAttrs:
    rows = np.unique(rows)
    cols = [
        "qa_uid",
        "question",
        "answer",
        "bucket",
        "video_uid",
        "temporal_category",
        "source_group",
    ]
    sub = qa.select(cols)[pl.Series(rows)].select(
        "qa_uid",
        text=pl.concat_str([pl.col("question"), pl.col("answer")], separator=TEXT_KEY_SEPARATOR),
        is_video=pl.col("bucket") == BUCKET_VIDEO,
        video_uid=pl.col("video_uid").fill_null(""),
        temporal=pl.col("temporal_category").is_in(list(temporal_set)),
        group=pl.col("source_group"),
    )
    return _RowAttrs(
        rows=rows,
        uid=sub["qa_uid"].to_list(),
        text=sub["text"].to_list(),
        is_video=sub["is_video"].to_list(),
        video_uid=sub["video_uid"].to_list(),
        temporal=sub["temporal"].to_list(),
        stratum=stratum_code[rows].tolist(),
        group=sub["group"].to_list(),
    )


# ---- summaries ------------------------------------------------------------------------------


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
    sub = qa.select(list(field_probs) + ["bucket"] * ("bucket" not in field_probs))[
        np.asarray(rows, dtype=np.int64)
    ]
    js: dict[str, float] = {}
    for name, target in field_probs.items():
        counts = dict(sub.group_by(name, maintain_order=True).len().iter_rows())
        total = sum(counts.values())
        if total <= 0 or not target:
            continue
        js[name] = js_divergence({k: v / total for k, v in counts.items()}, target)
    bucket = dict(sub.group_by("bucket", maintain_order=True).len().iter_rows())
    return {"count": len(rows), "bucket": bucket, "js_to_full_profile": js}


# ---- the whole selection ----------------------------------------------------------------------


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


def _metric_terms_for_pool(
    qa: pl.DataFrame, metrics: pl.DataFrame | None, mode: Mode
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(vds3', q', has_metrics per QA row; vds3' per unique metrics row; stats) from the metrics rows."""
    n = qa.height
    if metrics is None or metrics.height == 0:
        zeros = np.zeros(n)
        return zeros, zeros.copy(), np.zeros(n, dtype=bool), np.zeros(0), {}
    stats = metric_stats(metrics, running=(mode == "published"))
    # One metrics row per qa_uid (the last one wins, as in a dict keyed by qa_uid).
    duplicated = metrics["qa_uid"].n_unique() < metrics.height
    unique = (
        metrics.unique(subset="qa_uid", keep="last", maintain_order=True) if duplicated else metrics
    )
    vds3_all, quality_all = metric_z_terms(unique, stats)
    table = unique.select("qa_uid").with_columns(
        pl.Series("m_vds3", vds3_all),
        pl.Series("m_quality", quality_all),
        pl.lit(True).alias("m_has"),
    )
    joined = qa.select("qa_uid").join(table, on="qa_uid", how="left", maintain_order="left")
    has = joined["m_has"].fill_null(False).to_numpy().astype(bool)
    vds3 = joined["m_vds3"].fill_null(0.0).to_numpy()
    quality = joined["m_quality"].fill_null(0.0).to_numpy()
    info = {
        "metric_rows": metrics.height,
        "metric_unique_qa": unique.height,
        "coverage_ratio": float(has.mean()) if n else 0.0,
        "z_stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
    }
    return vds3, quality, has, vds3_all, info


def select_subsets(
    qa: pl.DataFrame,
    profile: GoalProfile,
    *,
    metrics: pl.DataFrame | None = None,
    options: SelectOptions | None = None,
    exclusion: ExclusionReference | None = None,
    step: Callable[[str], None] | None = None,
) -> SelectionResult:
    """Build GDO 1x and Uni-10x from a QA table (QA_SCHEMA order = scan order) and optional metrics rows."""
    options = options or SelectOptions()
    step = step or (lambda _name: None)
    mode, ablations = options.mode, options.ablations
    seed = profile.seed if options.seed is None else options.seed
    temporal_set = tuple(profile.temporal_categories)

    exclusion_info: dict[str, Any] = {"enabled": False}
    if exclusion is not None and (exclusion.questions or exclusion.qa_pairs):
        reason = exclusion_reason(qa, exclusion)
        keep = reason.is_null()
        excluded = reason.drop_nulls().value_counts(sort=True)
        exclusion_info = {
            **exclusion.stats,
            "excluded": int((~keep).sum()),
            "excluded_reason": dict(sorted(excluded.iter_rows())),
        }
        qa = qa.filter(keep)
    elif exclusion is not None:
        exclusion_info = {**exclusion.stats, "excluded": 0, "excluded_reason": {}}
    if qa.height == 0:
        raise ValueError("no QA pairs left in the pool (after rejects and the exclusion guard)")
    step("profile")

    prof = pool_profile(qa)
    total = prof.total
    stratum_counts = prof.strata["count"].to_numpy()

    # Budget (§5.2).
    qa_vds3, qa_quality, has_metrics, vds3_per_metric_row, metrics_info = _metric_terms_for_pool(
        qa, metrics, mode
    )
    fixed = (options.target_count or 0) > 0 or (options.target_ratio or 0) > 0
    if fixed:
        target_count, budget_info = B.fixed_budget(
            total, options.target_count, options.target_ratio
        )
    else:
        target_count, budget_info = B.auto_budget(total, stratum_counts.tolist(), profile)
        if (
            metrics is not None
            and metrics.height > 0
            and not ablations.no_vds3_budget
            and budget_info.get("mode") == "distribution_auto"
        ):
            target_count, vds3_info = B.vds3_adjusted_budget(
                target_count, total, vds3_per_metric_row, profile
            )
            budget_info["vds3_adjustment"] = vds3_info
            budget_info["recommended_count"] = target_count
            budget_info["recommended_ratio"] = target_count / float(total)
    uni_count = options.uni_count or B.uni_size(target_count, profile.uni_multiplier)
    step("budget")

    # Quotas and hard constraints (§5.3).
    bucket_names = list(prof.bucket_counts)
    bucket_quota = B.largest_remainder_quotas(
        [prof.bucket_counts[b] for b in bucket_names], target_count
    )
    bucket_quotas = dict(zip(bucket_names, bucket_quota.tolist()))
    stratum_quotas = B.largest_remainder_quotas(stratum_counts, target_count)
    video_count = prof.bucket_counts.get(BUCKET_VIDEO, 0)
    temporal_video_count = sum(prof.video_temporal_counts.get(t, 0) for t in temporal_set)
    constraints = B.hard_constraints(
        target_count=target_count,
        total=total,
        video_count=video_count,
        temporal_video_count=temporal_video_count,
        video_quota=bucket_quotas.get(BUCKET_VIDEO, 0),
        group_counts_desc=prof.groups_desc(),
        profile=profile,
    )
    strata_is_video = (prof.strata["bucket"] == BUCKET_VIDEO).to_numpy()
    strata_is_temporal = (
        strata_is_video & prof.strata["temporal_category"].is_in(list(temporal_set)).to_numpy()
    )
    caps = B.candidate_caps(stratum_quotas, strata_is_video, strata_is_temporal, profile)

    # Candidate score (§5.4).
    scores = score_terms(
        score_inputs(qa, prof),
        qa_vds3=qa_vds3,
        qa_quality=qa_quality,
        has_metrics=has_metrics,
        ablations=ablations,
    )
    score = scores["score"].to_numpy()
    step("score")

    # Seeded draws and candidate pools (§5.5).
    reservoir_cap = max(uni_count, math.ceil(uni_count * max(1.0, profile.reservoir_oversample)))
    draws = (published_draws if mode == "published" else stable_draws)(total, reservoir_cap, seed)
    pools, replayed = candidate_pools(
        prof.stratum_code, score, draws.tie, caps, published_heap=(mode == "published")
    )
    tail = by_score_desc(pools, score, draws.tie)
    tail_codes = prof.stratum_code[tail]
    grouped = tail[np.argsort(tail_codes, kind="stable")]
    bounds = np.searchsorted(np.sort(tail_codes, kind="stable"), np.arange(caps.size + 1))
    strata_pools = {
        c: grouped[bounds[c] : bounds[c + 1]].tolist() for c in np.unique(tail_codes).tolist()
    }
    step("pools")

    attrs = _row_attrs(qa, np.concatenate([tail, draws.reservoir]), prof.stratum_code, temporal_set)
    gdo = select_gdo(
        tail=tail,
        strata_pools=strata_pools,
        stratum_quotas=stratum_quotas,
        constraints=constraints,
        reservoir=draws.reservoir,
        target_count=target_count,
        max_qa_per_video=profile.max_qa_per_video,
        row_attrs=attrs,
    )
    uni_rows = select_uni(
        draws.uni_order, uni_count, profile.max_qa_per_video, attrs, repeats=(mode == "published")
    )
    step("select")

    field_probs = prof.field_probs()
    gdo_uids = set(qa["qa_uid"].gather(gdo.rows).to_list()) if gdo.rows else set()
    uni_uids = set(qa["qa_uid"].gather(uni_rows).to_list()) if uni_rows else set()
    overlap = (
        len(gdo_uids & uni_uids) / float(min(len(gdo_uids), len(uni_uids)))
        if gdo_uids and uni_uids
        else 0.0
    )
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
    report = {
        "profile": profile.name,
        "mode": mode,
        "seed": seed,
        "total_pairs": total,
        "target_count": target_count,
        "random_target_count": uni_count,
        "budget_info": budget_info,
        "bucket_quotas": bucket_quotas,
        "num_strata": int(stratum_quotas.size),
        "hard_constraints": {**constraints.targets(), **achieved},
        "filtered_summary": subset_summary(qa, gdo.rows, field_probs),
        "random_summary": subset_summary(qa, uni_rows, field_probs),
        "overlap_ratio": overlap,
        "ablations": ablations.active(),
        "candidate_pools": {
            "candidates": int(pools.size),
            "reservoir": int(draws.reservoir.size),
            "strata_replayed_through_heap": replayed,
        },
        "metrics": metrics_info,
        "exclusion_guard": exclusion_info,
        **prof.to_report(),
    }
    step("report")
    return SelectionResult(qa=qa, scores=scores, gdo=gdo, uni_rows=uni_rows, report=report)


# ---- SFT-ready rows -------------------------------------------------------------------------


def sft_rows(
    qa: pl.DataFrame,
    scores: pl.DataFrame,
    rows: Sequence[int],
    stages: Sequence[str] | None,
    *,
    mode: Mode,
) -> pl.DataFrame:
    """Output rows (one struct column per JSON key) in the published SFT shape; default mode adds stage and terms."""
    idx = pl.Series("row", np.asarray(rows, dtype=np.int64))
    needed = [
        "qa_uid",
        "video_uid",
        "question_form",
        "question",
        "answer",
        "frames",
        "n_frames",
        "temporal_category",
        "bucket",
        "data_source",
    ]
    sub = pl.concat([qa.select(needed)[idx], scores[idx]], how="horizontal")
    if stages is not None:
        sub = sub.with_columns(pl.Series("stage", list(stages), dtype=pl.String))
    is_video = pl.col("bucket") == BUCKET_VIDEO
    counts = sorted(set(sub["n_frames"].to_list()) | {1})
    image_tokens = pl.col("n_frames").replace_strict(
        {n: IMAGE_TOKEN * n for n in counts}, return_dtype=pl.String
    )
    user_prefix = pl.when(is_video).then(image_tokens).otherwise(pl.lit(IMAGE_TOKEN))
    detail = [
        pl.col("base_score"),
        pl.col("vds3").alias("legacy_vds3"),
        pl.col("quality_z").alias("legacy_quality_score"),
    ]
    meta = [
        pl.col("bucket"),
        pl.col("bucket").replace_strict(SOURCE_NAME, default="").alias("source_name"),
        pl.col("bucket").replace_strict(SOURCE_DOMAIN, default="").alias("source_domain"),
        pl.col("data_source").alias("llava_source"),
        pl.col("score").alias("filter_score"),
    ]
    if mode == "published":
        meta.append(pl.struct(detail).alias("filter_score_detail"))
    else:
        terms = [
            "naturalness",
            "difficulty",
            "alignment",
            "temporal_bonus",
            "source_prior",
            "base_norm",
            "has_metrics",
        ]
        meta.append(pl.struct([*detail, *[pl.col(t) for t in terms]]).alias("filter_score_detail"))
        if stages is not None:
            meta.append(pl.col("stage"))
    user = sub.select(
        pl.struct(
            role=pl.lit("user"),
            content=pl.concat_str([user_prefix, pl.lit("\n"), pl.col("question")]),
        )
    )
    assistant = sub.select(pl.struct(role=pl.lit("assistant"), content=pl.col("answer")))
    n = sub.height
    # Interleave user/assistant turns and fold them into 2-element lists (much faster than concat_list of structs).
    interleave = np.empty(2 * n, dtype=np.int64)
    interleave[0::2], interleave[1::2] = np.arange(n), np.arange(n) + n
    both = pl.concat([user.to_series(), assistant.to_series()]).gather(interleave)
    messages = (
        both.reshape((n, 2)).arr.to_list().alias("messages")
        if n
        else pl.Series("messages", [], dtype=pl.List(both.dtype))
    )
    return sub.with_columns(messages).select(
        pl.col("qa_uid"),
        pl.col("video_uid").fill_null(""),
        pl.col("question_form").alias("question_type"),
        pl.col("question"),
        pl.col("answer"),
        pl.col("messages"),
        pl.col("frames").alias("images"),
        pl.struct(pl.col("n_frames"), pl.col("temporal_category")).alias("data_quality_metrics"),
        pl.struct(meta).alias("meta"),
    )
