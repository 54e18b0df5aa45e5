"""The pool profile: counts of the full pool per field value, stratum, data_source, source group
and bucket, in first-seen order (docs/method.md, Pool profile and exclusion guard), and the
per-QA inputs of the candidate score (docs/method.md, Candidate score).

The `pool_profile` asset's JSON is `pool_stats.pool_profile`; this is the profile the build uses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from gdo_core.candidate_score import ScoreInputs, distinct_answer_tokens
from gdo_core.row_codes import first_seen_codes
from gdo_core.schema import BUCKET_VIDEO, STRATUM_FIELDS


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


# Optional QA column: `answer_distinct_tokens` kept with a table (e.g. a cached pool).
ANSWER_DISTINCT = "answer_distinct"


def answer_distinct_tokens(qa: pl.DataFrame) -> np.ndarray:
    """Distinct answer tokens per QA (the naturalness repeat term): the table's `answer_distinct`
    column when it has one (e.g. a cached pool), else counted from the answers."""
    if ANSWER_DISTINCT in qa.columns and not qa[ANSWER_DISTINCT].has_nulls():
        return qa[ANSWER_DISTINCT].to_numpy().astype(np.int64)
    return distinct_answer_tokens(qa["answer"], qa["answer_len"].to_numpy())


def with_answer_distinct(qa: pl.DataFrame) -> pl.DataFrame:
    """The QA table with its `answer_distinct` column, counted once where a chunk is parsed."""
    return qa.with_columns(pl.Series(ANSWER_DISTINCT, answer_distinct_tokens(qa), dtype=pl.Int32))


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
