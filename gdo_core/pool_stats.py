"""Profile of the full pool: counts per field value, stratum and source
(docs/method.md, Pool profile and exclusion guard)."""

from __future__ import annotations

from typing import Any

import polars as pl

from gdo_core.schema import BUCKET_VIDEO, STRATUM_FIELDS


def _counts(qa: pl.DataFrame, column: str) -> dict[str, int]:
    """Value -> count of one column, most frequent first, ties by value."""
    if qa.height == 0:
        return {}
    counted = qa.group_by(column).len().sort(["len", column], descending=[True, False])
    return {str(k): int(v) for k, v in counted.iter_rows()}


def pool_profile(qa: pl.DataFrame) -> dict[str, Any]:
    """Counts per field value, stratum, data_source, source_group, bucket and video temporal category."""
    videos = qa.filter(pl.col("bucket") == BUCKET_VIDEO)
    return {
        "total": qa.height,
        "fields": {name: _counts(qa, name) for name in STRATUM_FIELDS},
        "strata": _counts(qa, "stratum"),
        "data_source": _counts(qa, "data_source"),
        "source_group": _counts(qa, "source_group"),
        "bucket": _counts(qa, "bucket"),
        "video_temporal_category": _counts(videos, "temporal_category"),
        "videos": videos.select(pl.col("video_uid").n_unique()).item() if videos.height else 0,
    }
