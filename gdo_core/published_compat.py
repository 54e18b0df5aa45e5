"""The published-compatibility glue: the QA table as the published build step's reader saw it
(docs/method.md, Fixes and the published mode). `compat="published"` builds select from this
view, in the published mode.
"""

from __future__ import annotations

import polars as pl

from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO, STRATUM_FIELDS
from gdo_core.strata import MCQ, MCQ_PATTERN, OPEN, WS_RUN_PATTERN, source_group_expr

# The published reader's data_source when a row has none.
PUBLISHED_DEFAULT_SOURCE = {BUCKET_IMAGE: "onevision", BUCKET_VIDEO: "llava_video"}


def published_view(qa: pl.DataFrame, *, mcq_collapsed: bool = False) -> pl.DataFrame:
    """The QA table as the published reader saw it: collapsed data_source (default name when empty),
    MCQ tested case-insensitively on the collapsed question, groups and strata recomputed.

    mcq_collapsed: question_form was already tested on the collapsed question (a pool parsed with
    mcq_on_raw=False), so only the data_source side is redone; a table it leaves unchanged is returned as is.
    """
    source = (
        pl.col("data_source")
        .cast(pl.String)  # (Categorical in a `gdo build` table)
        .fill_null("")
        .str.replace_all(WS_RUN_PATTERN, " ")
        .str.strip_chars()
    )
    default = pl.col("bucket").replace_strict(PUBLISHED_DEFAULT_SOURCE, default="")
    # data_source and its group once per distinct (data_source, bucket), then joined back
    sources = (
        qa.select("data_source", "bucket", "source_group")
        .unique(["data_source", "bucket"])
        .with_columns(published_source=pl.when(source == "").then(default).otherwise(source))
        .with_columns(published_group=source_group_expr("published_source"))
    )
    same = (pl.col("published_source") == pl.col("data_source")) & (
        pl.col("published_group") == pl.col("source_group")
    )
    if mcq_collapsed and sources.select(same.fill_null(False).all()).item():
        return qa
    sources = sources.drop("source_group")
    looked_up = qa.select("data_source", "bucket").join(
        sources, on=["data_source", "bucket"], how="left", nulls_equal=True, maintain_order="left"
    )
    out = qa.with_columns(
        data_source=looked_up["published_source"],
        source_group=looked_up["published_group"],
    )
    if not mcq_collapsed:
        out = out.with_columns(
            question_form=pl.when(pl.col("question").str.contains(MCQ_PATTERN))
            .then(pl.lit(MCQ))
            .otherwise(pl.lit(OPEN)),
        )
    return out.with_columns(
        stratum=pl.concat_str([pl.col(f) for f in STRATUM_FIELDS], separator="|")
    )
