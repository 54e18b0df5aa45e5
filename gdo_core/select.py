"""Subset construction: pool profile, exclusion guard, budget, quotas, candidate pools, the six
selection stages, the Uni-10x baseline, summaries and SFT-ready rows (docs/method.md, sections
Pool profile and exclusion guard through Outputs).

Everything over the whole pool is polars/numpy; Python loops only where the method is sequential:
the rejection sampling of the seeded draws in published mode (one `random.Random` stream in scan
order), the heap of a stratum whose pool boundary has tied scores (published mode), and acceptance
over small pools (large pools settle the same in-order greedy in a few vectorised rounds).

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
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    metric_columns,
    metric_stats_of,
    metric_z_terms_of,
    score_terms,
)
from gdo_core.profiles import GoalProfile
from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO, STRATUM_FIELDS, TEXT_CODE
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
    pool (a string group_by on a million rows holds ~350 MB); the rest is O(rows) integer work.
    """
    physical = values.cast(pl.Categorical).to_physical()
    if physical.null_count():
        return _first_seen_codes_sorted(physical.to_numpy())
    first = physical.arg_unique().to_numpy().astype(np.int64)  # first rows, in first-seen order
    raw = physical.to_numpy()
    rank = np.zeros(int(raw.max()) + 1 if raw.size else 0, dtype=np.int64)
    rank[raw[first]] = np.arange(first.size)
    code = rank[raw]
    return code, first, np.bincount(code, minlength=first.size).astype(np.int64)


def _first_seen_codes_sorted(physical: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`first_seen_codes` by sorting (nulls, as NaN, are one value)."""
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


ANSWER_DISTINCT = "answer_distinct"  # optional QA column: `answer_distinct_tokens` kept with a table


def answer_distinct_tokens(qa: pl.DataFrame) -> np.ndarray:
    """Distinct answer tokens per QA (the naturalness repeat term): the table's `answer_distinct`
    column when it has one (e.g. a cached pool), else counted from the answers."""
    if ANSWER_DISTINCT in qa.columns and not qa[ANSWER_DISTINCT].has_nulls():
        return qa[ANSWER_DISTINCT].to_numpy().astype(np.int64)
    return distinct_answer_tokens(qa["answer"], qa["answer_len"].to_numpy())


TEXT_CODE_CHUNK_ROWS = 65_536  # rows whose joined texts are hashed at a time


def _joined_texts() -> pl.Expr:
    """A QA's (question, answer) identity as the acceptance rule compares them."""
    return pl.concat_str([pl.col("question"), pl.col("answer")], separator=TEXT_KEY_SEPARATOR)


def text_hashes(texts: pl.DataFrame) -> pl.Series:
    """The 64-bit hash of each row's joined question and answer (what `codes_of_text_hashes` takes)."""
    return texts.select(_joined_texts().hash(seed=0)).to_series()


def codes_of_text_hashes(
    hashes: pl.Series, texts_of: Callable[[np.ndarray], pl.DataFrame]
) -> np.ndarray:
    """`text_codes` from the rows' `text_hashes`: only the rows whose hash another row has are
    joined together (texts_of(rows): their question and answer) and compared, so they are exact."""
    codes = np.arange(hashes.len(), dtype=np.int64)
    shared = np.flatnonzero(hashes.is_duplicated().to_numpy())
    if shared.size:
        joined = texts_of(shared).select(_joined_texts()).to_series()
        codes[shared] = shared[_series_codes(joined)]
    return codes


def text_codes(qa: pl.DataFrame) -> np.ndarray:
    """Per QA, the first row with the same (question, answer) identity (as the acceptance rule
    tells pairs apart: joined with TEXT_KEY_SEPARATOR).

    The joined texts are hashed a chunk at a time; only rows that share a hash are joined
    together and compared, so the pool's joined texts are never all in memory.
    """
    texts = qa.select("question", "answer")
    hashes = pl.concat(
        [
            text_hashes(texts.slice(i, TEXT_CODE_CHUNK_ROWS))
            for i in range(0, qa.height, TEXT_CODE_CHUNK_ROWS)
        ]
        or [pl.Series(dtype=pl.UInt64)]
    )
    return codes_of_text_hashes(hashes, lambda rows: texts[pl.Series(rows)])


def score_inputs(
    qa: pl.DataFrame, prof: PoolProfile, distinct_answer: np.ndarray | None = None
) -> ScoreInputs:
    """The per-QA keys and per-stratum / per-source tables of the candidate score."""
    if distinct_answer is None:
        distinct_answer = answer_distinct_tokens(qa)
    return ScoreInputs(
        question_len=qa["question_len"].to_numpy(),
        answer_len=qa["answer_len"].to_numpy(),
        distinct_answer=distinct_answer,
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
    """One random.Random(seed) stream in scan order: random() per row, randint(1, seen) once full.

    The rows' draws are read from the raw 32-bit Mersenne Twister words that random() (two words)
    and getrandbits(k <= 32) (one word) consume; only randint's rejection sampling walks them in
    Python. The generator then skips the words used and shuffles the reservoir itself. Arrays are
    built in place, 32-bit where the values allow (a million rows: ~40 MB at most, not ~110).
    """
    rng = random.Random(seed)
    fill = min(reservoir_cap, n_rows)
    if fill <= 0:  # no reservoir: random() per row only (range(fill, n) as the published loop)
        tie = [rng.random() for _ in range(fill, n_rows)]
        empty = np.zeros(0, dtype=np.int64)
        return Draws(np.asarray(tie, dtype=np.float64), empty, empty)
    state = rng.getstate()
    n_words = _expected_words(n_rows, fill)
    while True:
        words = _mt_words(rng, n_words)
        try:
            accept_at = _reservoir_accepts(words, n_rows, fill)
            break
        except IndexError:  # an unlucky run of rejections: draw a longer stream
            rng.setstate(state)
            n_words *= 2
    w = np.frombuffer(words, dtype=np.uint32)
    accept = np.frombuffer(accept_at, dtype=np.int64) if accept_at else np.zeros(0, dtype=np.int64)
    # random() of row i reads two words: 2i while the reservoir fills, then right after row i-1's randint.
    tie_at = np.empty(fill + max(accept.size, 1), dtype=np.int64)
    tie_at[:fill] = np.arange(0, 2 * fill, 2, dtype=np.int64)
    tie_at[fill] = 2 * fill
    np.add(accept[:-1], 1, out=tie_at[fill + 1 :])
    high = w[tie_at]
    high >>= 5
    tie = high.astype(np.float64)
    del high
    tie *= 67108864.0
    tie_at += 1
    low = w[tie_at]
    del tie_at
    low >>= 6
    tie += low  # (high * 2**26 + low) * 2**-53, as random() computes it: every step exact
    del low
    tie *= 1.0 / 9007199254740992.0
    slot = w[accept]  # randint(1, seen) - 1 = the word's top bit_length(seen) bits
    for start, stop, bits in _bit_length_runs(fill + 1, n_rows + 1):
        slot[start - fill - 1 : stop - fill - 1] >>= 32 - bits
    hit = np.flatnonzero(slot < reservoir_cap)
    last = np.full(fill, -1, dtype=np.int64)
    np.maximum.at(last, slot[hit], fill + hit)  # reservoir[slot] = row in scan order: the last wins
    del slot, hit
    reservoir = np.where(last >= 0, last, np.arange(fill, dtype=np.int64))
    rng.setstate(state)
    _skip_words(rng, accept_at[-1] + 1 if accept_at else 2 * fill)  # the words used
    uni_order = reservoir.tolist()
    rng.shuffle(uni_order)
    return Draws(tie[:n_rows], reservoir, np.asarray(uni_order, dtype=np.int64))


def _bit_length_runs(first: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, bit length) of the runs of first..stop-1 that share int.bit_length."""
    start = first
    while start < stop:
        bits = start.bit_length()
        end = min(stop, 1 << bits)
        yield start, end, bits
        start = end


def _expected_words(n_rows: int, fill: int) -> int:
    """Stream words the rows need on average plus a wide margin (more are drawn if it runs short)."""
    mean, var = 2.0 * n_rows, 0.0
    for start, stop, bits in _bit_length_runs(fill + 1, n_rows + 1):
        # acceptance of one getrandbits(bits) draw
        p = np.arange(start, stop, dtype=np.float64) / float(1 << bits)
        mean += float((1.0 / p).sum())
        var += float(((1.0 - p) / (p * p)).sum())
    return int(mean + 10 * math.sqrt(var)) + 64


_U32 = next(code for code in "IL" if array(code).itemsize == 4)
_WORDS_PER_CALL = 2**16  # getrandbits(32 * n) in pieces: no n-word integer and bytes at once


def _mt_words(rng: random.Random, n: int) -> array:
    """The next n raw 32-bit outputs of the generator (getrandbits fills from the low word up)."""
    words = array(_U32)
    for start in range(0, n, _WORDS_PER_CALL):
        m = min(_WORDS_PER_CALL, n - start)
        words.frombytes(rng.getrandbits(32 * m).to_bytes(4 * m, "little"))
    if sys.byteorder != "little":
        words.byteswap()
    return words


def _skip_words(rng: random.Random, n: int) -> None:
    """Advance the generator by n 32-bit outputs."""
    for start in range(0, n, _WORDS_PER_CALL):
        rng.getrandbits(32 * min(_WORDS_PER_CALL, n - start))


def _reservoir_accepts(words: array, n_rows: int, fill: int) -> array:
    """Word index of each accepted randint(1, seen) draw, rows fill..n-1 (after each row's random())."""
    out = array("q")
    append = out.append
    pos = 2 * fill  # first word after the random() calls of the rows that fill the reservoir
    k = (fill + 1).bit_length()
    shift, limit = 32 - k, 1 << k
    for seen in range(fill + 1, n_rows + 1):
        if seen == limit:
            shift -= 1
            limit <<= 1
        # getrandbits(k) < seen  <=>  word < seen << (32 - k); one word per try.
        threshold = seen << shift
        j = pos + 2
        while words[j] >= threshold:
            j += 1
        append(j)
        pos = j + 1
    return out


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


# ---- acceptance and the six stages ------------------------------------------------------------

GREEDY_LOOP_MAX = 512  # pools up to this size are walked in Python; larger ones are vectorised
GREEDY_MAX_ROUNDS = 64  # rounds of the vectorised greedy before it falls back to the walk


def _value_codes(values: Any, *, falsy_is_none: bool = False) -> np.ndarray:
    """Dense integer codes of values (equal values, equal codes); -1 for falsy ones when asked.

    Integer arrays are taken as codes already (negative = none).
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        codes = values.astype(np.int64)
        if codes.size and int(codes.max()) >= 4 * codes.size + 16:  # sparse: renumber
            valid = codes >= 0
            codes[valid] = np.unique(codes[valid], return_inverse=True)[1].reshape(-1)
        return codes
    index: dict[Any, int] = {}
    return np.asarray(
        [-1 if falsy_is_none and not v else index.setdefault(v, len(index)) for v in values],
        dtype=np.int64,
    )


def _series_codes(values: pl.Series) -> np.ndarray:
    """Exact codes of a column (code = first row with the same value; nulls are one value).

    Rows are told apart by a 64-bit hash; rows sharing a hash are checked against the strings.
    """
    hashes = values.hash(seed=0)
    codes = np.arange(values.len(), dtype=np.int64)
    shared = np.nonzero(hashes.is_duplicated().to_numpy())[0]
    if shared.size == 0:
        return codes
    _, first, inverse = np.unique(hashes.to_numpy()[shared], return_index=True, return_inverse=True)
    codes[shared] = shared[first][inverse.reshape(-1)]
    if values.gather(codes[shared]).eq_missing(values.gather(shared)).all():
        return codes
    return _value_codes(values.to_list())  # a hash collision: code the values themselves


@dataclass
class _RowAttrs:
    """Attributes of just the rows acceptance can see, indexed by local position.

    `rows[k]` is the pool row of local position k; pools handed to the stages are local positions.
    uid, text, video_uid and group are integer codes (lists of values are coded on construction;
    video_uid -1 = no per-video cap); group_names[code] is the source group's name.
    """

    rows: np.ndarray
    uid: Any
    text: Any
    is_video: Any
    video_uid: Any
    temporal: Any
    stratum: Any
    group: Any
    group_names: list[str] | None = None
    _position: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.uid = _value_codes(self.uid)
        self.text = _value_codes(self.text)
        self.video_uid = _value_codes(self.video_uid, falsy_is_none=True)
        self.is_video = np.asarray(self.is_video, dtype=bool)
        self.temporal = np.asarray(self.temporal, dtype=bool)
        self.stratum = np.asarray(self.stratum, dtype=np.int64)
        if self.group_names is None:
            names = list(dict.fromkeys(self.group))
            self.group = _value_codes(self.group)  # first-seen numbering, as names
            self.group_names = names
        self.group = np.asarray(self.group, dtype=np.int64)

    def local(self, pool_rows: np.ndarray) -> np.ndarray:
        """Local positions of pool rows (which must be among `rows`)."""
        if self._position is None:  # a row -> position table: gathers beat binary searches
            self._position = np.zeros(int(self.rows[-1]) + 1 if self.rows.size else 0, np.int64)
            self._position[self.rows] = np.arange(self.rows.size)
        return self._position[np.asarray(pool_rows, dtype=np.int64)]


def _row_attrs(
    qa: pl.DataFrame, rows: np.ndarray, stratum_code: np.ndarray, temporal_set: Sequence[str]
) -> _RowAttrs:
    """The acceptance attributes of the distinct given rows, strings turned into exact codes."""
    seen = np.zeros(qa.height, dtype=bool)
    seen[rows] = True
    rows = np.nonzero(seen)[0]
    has_texts = "question" in qa.columns  # else the identities kept with the table (`text_codes`)
    texts = ["question", "answer"] if has_texts else [TEXT_CODE]
    cols = ["qa_uid", *texts, "bucket", "video_uid", "temporal_category"]
    text = _joined_texts() if has_texts else pl.col(TEXT_CODE)
    sub = qa.select(*cols, "source_group")[pl.Series(rows)].select(
        "qa_uid",
        text=text,
        is_video=pl.col("bucket") == BUCKET_VIDEO,
        video_uid=pl.col("video_uid").fill_null(""),
        temporal=pl.col("temporal_category").is_in(list(temporal_set)),
        group=pl.col("source_group"),
    )
    video_uid = _series_codes(sub["video_uid"])
    video_uid[(sub["video_uid"] == "").to_numpy()] = -1
    group, first, _ = first_seen_codes(sub["group"])
    return _RowAttrs(
        rows=rows,
        uid=_series_codes(sub["qa_uid"]),
        text=_series_codes(sub["text"]) if has_texts else sub["text"].to_numpy().astype(np.int64),
        is_video=sub["is_video"].to_numpy(),
        video_uid=video_uid,
        temporal=sub["temporal"].to_numpy(),
        stratum=stratum_code[rows],
        group=group,
        group_names=sub["group"].gather(first).to_list(),
    )


def _greedy_accept(keys: list[tuple[np.ndarray, np.ndarray | int]], n: int) -> np.ndarray | None:
    """Mask of rows the in-order greedy takes: row i passes if, for every key, fewer than `room`
    earlier taken rows share its code (code -1: no limit). None if it does not settle.

    Rounds of S -> F(S) from "all taken": the true greedy is the only fixed point, and the rounds
    alternate around it, agreeing on a longer prefix each round (a few rounds in practice).
    """
    limits = []
    for codes, room in keys:
        rows = np.nonzero(codes >= 0)[0]
        c = codes[rows]
        room_c = room[c] if isinstance(room, np.ndarray) else np.full(c.size, room)
        binding = np.bincount(c)[c] > room_c  # codes with more rows than room can ever reject one
        rows, c, room_c = rows[binding], c[binding], room_c[binding]
        if rows.size == 0:
            continue
        order = np.argsort(c, kind="stable")  # grouped by code, pool order within
        rows, c, room_c = rows[order], c[order], room_c[order]
        new_group = np.concatenate([[True], c[1:] != c[:-1]])
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(c.size), 0))
        limits.append((rows, group_start, room_c))
    taken = np.ones(n, dtype=bool)
    for _ in range(GREEDY_MAX_ROUNDS):
        passed = np.ones(n, dtype=bool)
        for rows, group_start, room_c in limits:
            t = taken[rows].astype(np.int64)
            before = np.cumsum(t) - t
            passed[rows[before - before[group_start] >= room_c]] = False
        if np.array_equal(passed, taken):
            return taken
        taken = passed
    return None


class _Acceptor:
    """The acceptance rule: uid and (question, answer) unused, video count below max, per-video cap."""

    def __init__(
        self,
        uid: Any,
        text: Any,
        is_video: Any,
        video_uid: Any,
        *,
        max_video: int | None,
        max_per_video: int,
        limit: int,
    ) -> None:
        self.uid, self.text = _value_codes(uid), _value_codes(text)
        self.video_uid = _value_codes(video_uid, falsy_is_none=True)
        self.is_video = np.asarray(is_video, dtype=bool)
        self.max_video, self.max_per_video, self.limit = max_video, max_per_video, limit
        self.used_uid = np.zeros(int(self.uid.max(initial=-1)) + 1, dtype=bool)
        self.used_text = np.zeros(int(self.text.max(initial=-1)) + 1, dtype=bool)
        self.per_video = np.zeros(int(self.video_uid.max(initial=0)) + 1, dtype=np.int64)
        self.n_video = 0
        self.rows: list[int] = []
        self.stages: list[str] = []

    def can_take(self, i: int, enforce_text: bool = True) -> bool:
        """Whether row i passes the acceptance rule now."""
        if self.used_uid[self.uid[i]]:
            return False
        if enforce_text and self.used_text[self.text[i]]:
            return False
        if self.is_video[i]:
            if self.max_video is not None and self.n_video >= self.max_video:
                return False
            v = self.video_uid[i]
            if v >= 0 and self.per_video[v] >= self.max_per_video:
                return False
        return True

    def take(self, i: int, stage: str, enforce_text: bool = True) -> bool:
        """Accept row i under `stage` if there is room and it passes the rule."""
        if len(self.rows) >= self.limit or not self.can_take(i, enforce_text):
            return False
        self._record(np.array([i], dtype=np.int64), stage, enforce_text)
        return True

    def fill(self, pool: Iterable[int], need: int, stage: str, enforce_text: bool = True) -> int:
        """Take up to `need` rows from the pool in order; returns how many are still missing.

        Rows the state already rules out are dropped at once; the greedy runs over the rest.
        """
        remain = max(0, int(need))
        if remain <= 0:
            return 0
        room = self.limit - len(self.rows)
        pool = np.asarray(pool, dtype=np.int64)
        if room <= 0 or pool.size == 0:
            return remain
        video_room = None if self.max_video is None else self.max_video - self.n_video
        is_video = self.is_video[pool]
        vid = np.where(is_video, self.video_uid[pool], -1)
        ok = ~self.used_uid[self.uid[pool]]
        if enforce_text:
            ok &= ~self.used_text[self.text[pool]]
        if video_room is not None and video_room <= 0:
            ok &= ~is_video
        ok &= ~((vid >= 0) & (self.per_video[np.maximum(vid, 0)] >= self.max_per_video))
        pool, is_video, vid = pool[ok], is_video[ok], vid[ok]
        want = min(remain, room)
        taken = None
        if pool.size > GREEDY_LOOP_MAX:
            keys: list[tuple[np.ndarray, np.ndarray | int]] = [(self.uid[pool], 1)]
            if enforce_text:
                keys.append((self.text[pool], 1))
            keys.append((vid, self.max_per_video - self.per_video))
            if video_room is not None:
                keys.append((np.where(is_video, 0, -1), video_room))
            mask = _greedy_accept(keys, pool.size)
            if mask is not None:
                taken = pool[np.nonzero(mask)[0][:want]]
        if taken is None:
            taken = self._walk(pool, is_video, vid, want, enforce_text, video_room)
        self._record(taken, stage, enforce_text)
        return remain - taken.size

    def _walk(
        self,
        pool: np.ndarray,
        is_video: np.ndarray,
        vid: np.ndarray,
        want: int,
        enforce_text: bool,
        video_room: int | None,
    ) -> np.ndarray:
        """The greedy as a loop over the pool (rows the state rules out already dropped)."""
        out: list[int] = []
        used_uid: set[int] = set()
        used_text: set[int] = set()
        per_video: dict[int, int] = {}
        n_video = 0
        video_room = pool.size + 1 if video_room is None else video_room
        texts = self.text[pool].tolist() if enforce_text else [0] * pool.size
        rows = zip(pool.tolist(), self.uid[pool].tolist(), texts, is_video.tolist(), vid.tolist())
        for i, u, t, video, v in rows:
            if len(out) >= want:
                break
            if u in used_uid or (enforce_text and t in used_text):
                continue
            if video:
                if n_video >= video_room:
                    continue
                if v >= 0:
                    count = per_video.get(v)
                    if count is None:
                        count = int(self.per_video[v])
                    if count >= self.max_per_video:
                        continue
                    per_video[v] = count + 1
                n_video += 1
            out.append(i)
            used_uid.add(u)
            used_text.add(t)
        return np.asarray(out, dtype=np.int64)

    def _record(self, taken: np.ndarray, stage: str, enforce_text: bool) -> None:
        self.rows.extend(taken.tolist())
        self.stages.extend([stage] * taken.size)
        self.used_uid[self.uid[taken]] = True
        if enforce_text:
            self.used_text[self.text[taken]] = True
        video = self.is_video[taken]
        self.n_video += int(video.sum())
        vid = self.video_uid[taken][video]
        np.add.at(self.per_video, vid[vid >= 0], 1)


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
    pool = a.local(np.asarray(order, dtype=np.int64))
    acc.fill(pool, uni_count, STAGE_UNI, enforce_text=True)
    if len(acc.rows) < uni_count:
        acc.fill(pool, uni_count - len(acc.rows), STAGE_UNI, enforce_text=False)
    rows = np.asarray(acc.rows, dtype=np.int64)
    if rows.size < uni_count:
        rest = pool if repeats else pool[~np.isin(pool, rows)]
        rows = np.concatenate([rows, rest[: uni_count - rows.size]])
    return a.rows[rows[:uni_count]].tolist()


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


def _has_duplicates(values: pl.Series) -> bool:
    """Whether a column repeats a value (distinct 64-bit hashes settle it without the strings)."""
    if values.hash(seed=0).n_unique() == values.len():
        return False
    return values.n_unique() < values.len()


@dataclass
class PreparedMetrics:
    """What the metric terms need from the metrics rows alone (no pool): one row per qa_uid (the
    last wins, as in a dict keyed by qa_uid), the z-stats over every row and the z-terms per row.

    `prepare_metrics` builds it; `gdo build` does so on a side thread while the pool is parsed.
    """

    mode: Mode
    rows: int
    uids: pl.DataFrame  # qa_uid of the unique rows, in their order
    stats: dict[str, tuple[float, float]]
    vds3: np.ndarray  # per unique row
    quality: np.ndarray  # per unique row


def prepare_metrics(metrics: pl.DataFrame, mode: Mode) -> PreparedMetrics:
    """`PreparedMetrics` of metrics rows (file order; duplicates count in the stats)."""
    columns = metric_columns(metrics)
    uids = metrics.select("qa_uid")
    if _has_duplicates(metrics["qa_uid"]):  # the last row of each qa_uid, in the order of those rows
        kept = (
            uids.with_row_index("row")
            .unique(subset="qa_uid", keep="last", maintain_order=True)["row"]
            .to_numpy()
        )
        uids = uids[kept]
        columns_kept = {col: values[kept] for col, values in columns.items()}
    else:
        columns_kept = columns
    stats = metric_stats_of(columns, running=(mode == "published"))
    vds3, quality = metric_z_terms_of(columns_kept, uids.height, stats)
    return PreparedMetrics(mode, metrics.height, uids, stats, vds3, quality)


def _metric_match(qa: pl.DataFrame, prepared: PreparedMetrics) -> np.ndarray:
    """Per QA row: its row among the unique metrics rows, -1 without one."""
    uids, metric_uids = qa["qa_uid"], prepared.uids["qa_uid"]
    if (
        uids.len() == metric_uids.len()
        and uids.null_count() == 0
        and uids.equals(metric_uids, check_names=False)
    ):  # metrics in the pool's order, one row per QA: no join (at 1M QAs ~0.4 s and ~170 MB less)
        return np.arange(qa.height, dtype=np.int64)
    # An unordered inner join (parallel) scattered back by QA row: at most one match per row. It
    # joins the uids' 64-bit hashes (at 230k QAs ~30 MB less than joining the strings), then
    # checks each matched pair's strings; a hash shared by different uids joins the strings.
    keys = [u.cast(pl.String).hash(seed=0).to_frame("key") for u in (uids, metric_uids)]
    pairs = (
        keys[0]
        .with_row_index("qa_row")
        .join(keys[1].with_row_index("match"), on="key", how="inner")
        .drop("key")
    )
    del keys
    if not _same_strings(uids, metric_uids, pairs):
        pairs = (
            qa.select("qa_uid")
            .with_row_index("qa_row")
            .join(prepared.uids.with_row_index("match"), on="qa_uid", how="inner")
        )
    match = np.full(qa.height, -1, dtype=np.int64)
    match[pairs["qa_row"].to_numpy()] = pairs["match"].to_numpy()
    return match


def _same_strings(
    left: pl.Series, right: pl.Series, pairs: pl.DataFrame, chunk: int = 2**16
) -> bool:
    """Whether every (qa_row, match) pair holds equal non-null strings, each qa_row once (compared
    `chunk` pairs at a time)."""
    if pairs["qa_row"].n_unique() != pairs.height:
        return False
    for start in range(0, pairs.height, chunk):
        part = pairs.slice(start, chunk)
        a, b = left.gather(part["qa_row"]), right.gather(part["match"])
        if a.null_count() or b.null_count() or not a.equals(b, check_names=False):
            return False
    return True


def _metric_terms(
    prepared: PreparedMetrics | None, match: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(vds3', q', has_metrics per QA row; vds3' per unique metrics row; stats) from the metrics rows."""
    if prepared is None or match is None:
        zeros = np.zeros(n)
        return zeros, zeros.copy(), np.zeros(n, dtype=bool), np.zeros(0), {}
    has = match >= 0
    at = np.where(has, match, 0)
    vds3 = np.where(has, prepared.vds3[at], 0.0)
    quality = np.where(has, prepared.quality[at], 0.0)
    info = {
        "metric_rows": prepared.rows,
        "metric_unique_qa": prepared.uids.height,
        "coverage_ratio": float(has.mean()) if n else 0.0,
        "z_stats": {k: {"mean": m, "std": s} for k, (m, s) in prepared.stats.items()},
    }
    return vds3, quality, has, prepared.vds3, info


def _metric_terms_for_pool(
    qa: pl.DataFrame, metrics: pl.DataFrame | PreparedMetrics | None, mode: Mode
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(vds3', q', has_metrics per QA row; vds3' per unique metrics row; stats) from the metrics rows."""
    prepared = _prepared(metrics, mode)
    match = _metric_match(qa, prepared) if prepared is not None else None
    return _metric_terms(prepared, match, qa.height)


def _prepared(metrics: pl.DataFrame | PreparedMetrics | None, mode: Mode) -> PreparedMetrics | None:
    """Prepared metrics (None without rows); prepared ones must be for this mode's stats."""
    if isinstance(metrics, PreparedMetrics):
        if metrics.mode != mode:
            raise ValueError(f"metrics were prepared for {metrics.mode} mode, not {mode}")
        return metrics if metrics.rows else None
    if metrics is None or metrics.height == 0:
        return None
    return prepare_metrics(metrics, mode)


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
    options = options or SelectOptions()
    step = step or (lambda _name: None)
    mode, ablations = options.mode, options.ablations
    seed = profile.seed if options.seed is None else options.seed
    temporal_set = tuple(profile.temporal_categories)

    exclusion_info: dict[str, Any] = {"enabled": False}
    rows_dropped = False  # a given answer_distinct fits the table only while no row was dropped
    if exclusion is not None and (exclusion.questions or exclusion.qa_pairs):
        reason = exclusion_reason(qa, exclusion)
        keep = reason.is_null()
        excluded = reason.drop_nulls().value_counts(sort=True)
        exclusion_info = {
            **exclusion.stats,
            "excluded": int((~keep).sum()),
            "excluded_reason": dict(sorted(excluded.iter_rows())),
        }
        rows_dropped = exclusion_info["excluded"] > 0
        qa = qa.filter(keep) if rows_dropped else qa
    elif exclusion is not None:
        exclusion_info = {**exclusion.stats, "excluded": 0, "excluded_reason": {}}
    if qa.height == 0:
        raise ValueError("no QA pairs left in the pool (after rejects and the exclusion guard)")
    step("profile")

    prof = pool_profile(qa)
    total = prof.total
    stratum_counts = prof.strata["count"].to_numpy()
    strata_is_video = (prof.strata["bucket"] == BUCKET_VIDEO).to_numpy()
    strata_is_temporal = (
        strata_is_video & prof.strata["temporal_category"].is_in(list(temporal_set)).to_numpy()
    )
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
        prepared, match, total
    )
    fixed = (options.target_count or 0) > 0 or (options.target_ratio or 0) > 0
    if fixed:
        target_count, budget_info = B.fixed_budget(
            total, options.target_count, options.target_ratio
        )
    else:
        target_count, budget_info = B.auto_budget(total, stratum_counts.tolist(), profile)
        if (
            prepared is not None
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

    # Quotas and hard constraints (docs/method.md, Quotas and hard constraints).
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
    caps = B.candidate_caps(stratum_quotas, strata_is_video, strata_is_temporal, profile)

    # Seeded draws (docs/method.md, Candidate pools and acceptance) on a worker thread, beside
    # the candidate score (mostly numpy, which lets go of the GIL) and the answers' tokenising if
    # that is still running.
    reservoir_cap = max(uni_count, math.ceil(uni_count * max(1.0, profile.reservoir_oversample)))
    draw = published_draws if mode == "published" else stable_draws
    drawn = _in_background(draw, total, reservoir_cap, seed)

    # Candidate score (docs/method.md, Candidate score).
    scores = score_terms(
        score_inputs(qa, prof, distinct.result()),
        qa_vds3=qa_vds3,
        qa_quality=qa_quality,
        has_metrics=has_metrics,
        ablations=ablations,
    )
    score = scores["score"].to_numpy()
    draws = drawn.result()
    step("score")

    # Candidate pools (docs/method.md, Candidate pools and acceptance).
    pools, replayed = candidate_pools(
        prof.stratum_code, score, draws.tie, caps, published_heap=(mode == "published")
    )
    tail = by_score_desc(pools, score, draws.tie)
    tail_codes = prof.stratum_code[tail]
    grouped = tail[np.argsort(tail_codes, kind="stable")]
    bounds = np.searchsorted(np.sort(tail_codes, kind="stable"), np.arange(caps.size + 1))
    strata_pools = {c: grouped[bounds[c] : bounds[c + 1]] for c in np.unique(tail_codes).tolist()}
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
    gdo_uids = qa["qa_uid"].gather(gdo.rows).unique()
    uni_uids = qa["qa_uid"].gather(uni_rows).unique()
    shared = gdo_uids.len() + uni_uids.len() - pl.concat([gdo_uids, uni_uids]).n_unique()
    overlap = (
        shared / float(min(gdo_uids.len(), uni_uids.len()))
        if gdo_uids.len() and uni_uids.len()
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
    rows: Sequence[int] | None,
    stages: Sequence[str] | None,
    *,
    mode: Mode,
) -> pl.DataFrame:
    """Output rows (one struct column per JSON key) in the published SFT shape; default mode adds stage and terms.

    rows: the rows of qa and scores to write, in order (None: all of them, as they are).
    """
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
    sub = pl.concat([qa.select(needed), scores], how="horizontal")
    if rows is not None:
        sub = sub[pl.Series("row", np.asarray(rows, dtype=np.int64))]
    if stages is not None:
        sub = sub.with_columns(pl.Series("stage", list(stages), dtype=pl.String))
    is_video = pl.col("bucket") == BUCKET_VIDEO
    counts = sorted(set(sub["n_frames"].unique().to_list()) | {1})
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
