"""SFT-ready rows in the published shape: a user turn of image tokens and the question, an
assistant turn with the answer, the frame paths, and the meta block with the score and its
detail (default mode adds every score term and the stage) (docs/method.md, Outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from gdo_core.modes import Mode
from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO

# Output-row constants of the published SFT files.
SOURCE_NAME = {BUCKET_IMAGE: "llava_onevision_full", BUCKET_VIDEO: "llava_video_full"}
SOURCE_DOMAIN = {BUCKET_IMAGE: "image", BUCKET_VIDEO: "video_short"}
IMAGE_TOKEN = "<image>"
# The QA columns `sft_rows` reads, in its order (the score columns come from the score table).
QA_COLUMNS = (
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
)
# Score terms default mode adds to meta.filter_score_detail.
DETAIL_TERMS = (
    "naturalness",
    "difficulty",
    "alignment",
    "temporal_bonus",
    "source_prior",
    "base_norm",
    "has_metrics",
)


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
    sub = pl.concat([qa.select(list(QA_COLUMNS)), scores], how="horizontal")
    if rows is not None:
        sub = sub[pl.Series("row", np.asarray(rows, dtype=np.int64))]
    if stages is not None:
        sub = sub.with_columns(pl.Series("stage", list(stages), dtype=pl.String))
    return sub.with_columns(_messages(sub)).select(
        pl.col("qa_uid"),
        pl.col("video_uid").fill_null(""),
        pl.col("question_form").alias("question_type"),
        pl.col("question"),
        pl.col("answer"),
        pl.col("messages"),
        pl.col("frames").alias("images"),
        pl.struct(pl.col("n_frames"), pl.col("temporal_category")).alias("data_quality_metrics"),
        pl.struct(_meta(mode, with_stage=stages is not None)).alias("meta"),
    )


def _meta(mode: Mode, *, with_stage: bool) -> list[pl.Expr]:
    """The fields of a row's `meta` struct: bucket, source names, score and its detail (default
    mode: every score term, and the stage when there is one)."""
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
        terms = [pl.col(t) for t in DETAIL_TERMS]
        meta.append(pl.struct([*detail, *terms]).alias("filter_score_detail"))
        if with_stage:
            meta.append(pl.col("stage"))
    return meta


def _messages(sub: pl.DataFrame) -> pl.Series:
    """Per row, [user turn, assistant turn]: `<image>` once (a video QA: once per frame), a
    newline and the question; then the answer."""
    is_video = pl.col("bucket") == BUCKET_VIDEO
    counts = sorted(set(sub["n_frames"].unique().to_list()) | {1})
    image_tokens = pl.col("n_frames").replace_strict(
        {n: IMAGE_TOKEN * n for n in counts}, return_dtype=pl.String
    )
    user_prefix = pl.when(is_video).then(image_tokens).otherwise(pl.lit(IMAGE_TOKEN))
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
    return (
        both.reshape((n, 2)).arr.to_list().alias("messages")
        if n
        else pl.Series("messages", [], dtype=pl.List(both.dtype))
    )
