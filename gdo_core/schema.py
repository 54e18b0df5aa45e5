"""Column names and dtypes of every gdo table, declared once for writers, readers and SQL."""

from __future__ import annotations

import polars as pl

# The seven stratum fields, in the order they are joined into `stratum`
# (docs/method.md, Stratum fields).
STRATUM_FIELDS: tuple[str, ...] = (
    "bucket",
    "duration_bucket",
    "temporal_category",
    "question_form",
    "q_len_bucket",
    "a_len_bucket",
    "source_group",
)

BUCKET_IMAGE = "image_qa"
BUCKET_VIDEO = "short_video"

# One row per QA pair: the output of ingestion (`qa` table, `candidate_pool` partitions).
QA_SCHEMA: dict[str, pl.DataType] = {
    "qa_uid": pl.String(),
    "row_id": pl.String(),
    "video_uid": pl.String(),  # null for image QAs
    "turn": pl.Int32(),
    "question": pl.String(),
    "answer": pl.String(),
    "frames": pl.List(pl.String()),
    "n_frames": pl.Int32(),
    "data_source": pl.String(),
    "source_group": pl.String(),
    "bucket": pl.String(),
    "duration_bucket": pl.String(),
    "temporal_category": pl.String(),
    "question_form": pl.String(),
    "q_len_bucket": pl.String(),
    "a_len_bucket": pl.String(),
    "stratum": pl.String(),
    "question_len": pl.Int32(),
    "answer_len": pl.Int32(),
    "source_file": pl.String(),
    "line": pl.Int64(),
}

# QA columns with few distinct values: `pool_read.read_pool(categorical=True)` holds them as
# Categorical (4 bytes a row instead of a 16-byte string view, plus the long strings' bytes).
LOW_CARD_COLUMNS = ("data_source", *STRATUM_FIELDS, "stratum", "source_file")

# Optional QA column: per QA, the first row with the same (question, answer)
# (`row_codes.text_codes`), kept with a table whose texts stay on disk.
TEXT_CODE = "text_code"

# One row per input line or turn that yielded no QA (`rejects` table).
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "line": pl.Int64(),
    "qa_uid": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}

# Reject reasons: a closed vocabulary so counts per reason are meaningful.
REJECT_BAD_JSON = "bad_json"
REJECT_NOT_OBJECT = "not_an_object"
REJECT_WRONG_TYPE = "wrong_type"
REJECT_MISSING_MEDIA = "missing_media"
REJECT_NO_MESSAGES = "no_messages"
REJECT_NO_PAIR = "no_pair"
REJECT_EMPTY_TEXT = "empty_text"
REJECT_UNREADABLE_VIDEO = "unreadable_video"

REJECT_REASONS: tuple[str, ...] = (
    REJECT_BAD_JSON,
    REJECT_NOT_OBJECT,
    REJECT_WRONG_TYPE,
    REJECT_MISSING_MEDIA,
    REJECT_NO_MESSAGES,
    REJECT_NO_PAIR,
    REJECT_EMPTY_TEXT,
    REJECT_UNREADABLE_VIDEO,
)


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty DataFrame with the given schema."""
    return pl.DataFrame(schema=schema)

TEXT_FEATURE_DIM = 16
VISION_FEATURE_DIM = 6

# One row per QA: the output of descriptor extraction (`descriptor_shards` partitions).
# Names follow the paper; `frame_diversity` and the losses match the published metrics file.
DESCRIPTOR_SCHEMA: dict[str, pl.DataType] = {
    "qa_uid": pl.String(),
    "amm": pl.Float64(),  # average motion magnitude (Farneback)
    "frame_diversity": pl.Float64(),  # mean |cur - prev| / 255
    "loss_video": pl.Float64(),  # null when the model pass failed or was skipped
    "loss_blind": pl.Float64(),
    "vds": pl.Float64(),  # loss_blind - loss_video
    "ppl": pl.Float64(),  # exp(clip(loss_video, -30, 30))
    "tnc_score": pl.Float64(),  # 1.0 temporal, 0.0 static, 0.5 undecided
    "sc": pl.Float64(),  # self-consistency; -1 when disabled or no readable visuals
    "text_feature": pl.Array(pl.Float32(), TEXT_FEATURE_DIM),
    "vision_feature": pl.Array(pl.Float32(), VISION_FEATURE_DIM),
    "n_frames": pl.Int32(),
    "question_len": pl.Int32(),
    "answer_len": pl.Int32(),
    "frames_unreadable": pl.Int32(),
    "error": pl.String(),  # null when every descriptor was computed
    "cache_key": pl.String(),
}

# Signals that get a robust centre/scale at merge time
# (docs/method.md, Merge and the shared score).
ROBUST_SIGNALS: tuple[str, ...] = ("vds", "ppl", "amm", "frame_diversity", "sc")

# Columns the merge adds to the descriptor rows (`descriptors` table in DuckDB).
MERGED_EXTRA_SCHEMA: dict[str, pl.DataType] = {
    "sc_filled": pl.Float64(),  # SC after the fallback for missing values
    "vds3": pl.Float64(),
    "ppl_mid": pl.Float64(),
    "amm_mid": pl.Float64(),
    "cluster_id": pl.Int32(),
    "cluster_dist": pl.Float64(),
    "cluster_rep": pl.Float64(),
    "cluster_hard": pl.Float64(),
    "quality": pl.Float64(),  # the shared score rho(x)
}

# Subset membership (`subset_members` view over the goal_subsets Parquet files).
SUBSET_MEMBER_SCHEMA: dict[str, pl.DataType] = {
    "profile": pl.String(),
    "arm": pl.String(),  # "gdo" or "uni10x"
    "qa_uid": pl.String(),
    "rank": pl.Int32(),
    "stage": pl.String(),
    "score": pl.Float64(),
}

# The arms of a comparison: a profile's GDO 1x subset and its uniform 10x baseline.
ARM_GDO = "gdo"
ARM_UNI = "uni10x"
# Ablation arms: GDO 1x built with score terms switched off
# (docs/method.md, Candidate score and Convergence analysis).
ABLATION_ARMS: tuple[str, ...] = ("gdo_wo_vds", "gdo_wo_ppl", "gdo_wo_sc", "gdo_wo_all")
ARMS: tuple[str, ...] = (ARM_GDO, ARM_UNI, *ABLATION_ARMS)
# The subtask name of a task's overall accuracy in `scores`.
OVERALL = "overall"

# One row per (checkpoint, task, subtask): the `benchmark_scores` partitions (`scores` view).
SCORE_SCHEMA: dict[str, pl.DataType] = {
    "arm": pl.String(),
    "profile": pl.String(),
    "checkpoint": pl.String(),  # the checkpoint folder's name, e.g. checkpoint-12
    "step": pl.Int64(),
    "samples_seen": pl.Int64(),  # step x global batch
    "task": pl.String(),
    "subtask": pl.String(),  # OVERALL for the task's own accuracy
    "accuracy": pl.Float64(),  # percent
}
