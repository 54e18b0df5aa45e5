"""The seven stratum fields of a QA, as scalar functions and polars expressions
(docs/method.md, Stratum fields)."""

from __future__ import annotations

import re
import threading

import numpy as np
import polars as pl

from gdo_core.schema import BUCKET_IMAGE, STRATUM_FIELDS

TOKEN_PATTERN = r"[A-Za-z0-9_]+"
TEMPORAL_PATTERN = (
    r"(?i)\b(before|after|then|while|during|first|next|finally|sequence|later|earlier|"
    r"transition|happen)\b"
)
# Case-insensitive like the published test; the fix is testing the raw text, not the collapsed one.
MCQ_PATTERN = r"(?i)(\bchoices?\b)|(\nA\.)|(\nA\))"
MEDIA_TOKEN_PATTERN = r"<image>|<video>|<audio>"

# Upper edges (inclusive) and labels; the last label takes everything above the last edge.
DURATION_EDGES: tuple[tuple[int, str], ...] = (
    (1, "image"),
    (8, "very_short"),
    (24, "short"),
    (64, "medium"),
    (160, "long"),
)
DURATION_TOP = "very_long"
Q_LEN_EDGES: tuple[tuple[int, str], ...] = (
    (6, "q_tiny"),
    (14, "q_short"),
    (30, "q_medium"),
    (60, "q_long"),
)
Q_LEN_TOP = "q_very_long"
A_LEN_EDGES: tuple[tuple[int, str], ...] = (
    (2, "a_tiny"),
    (8, "a_short"),
    (24, "a_medium"),
    (64, "a_long"),
)
A_LEN_TOP = "a_very_long"

TEMPORAL, MIXED, STATIC = "Temporal", "Mixed", "Static"
MCQ, OPEN = "MCQ", "Open"
UNKNOWN_SOURCE = "unknown"
SOURCE_GROUP_PARTS = 4

# Only runs that change: 2+ whitespace characters, or one that is not a space (same result as \s+ -> " ").
WS_RUN_PATTERN = r"\s{2,}|[^\S ]"
# Characters whose lower case holds an ASCII token character (KELVIN SIGN, I WITH DOT ABOVE).
_LOWER_TO_ASCII_PATTERN = "[\u212a\u0130]"
_TOKEN_CHUNK_ROWS = 16_384  # rows per numpy pass: its arrays stay a few MB

_TOKEN_RE = re.compile(TOKEN_PATTERN)
_TEMPORAL_RE = re.compile(TEMPORAL_PATTERN)
_MCQ_RE = re.compile(MCQ_PATTERN)
_MEDIA_RE = re.compile(MEDIA_TOKEN_PATTERN)
_SPACE_RE = re.compile(r"\s+")


def clean_question(raw: str) -> str:
    """User text with media tokens stripped and whitespace collapsed."""
    return collapse_ws(_MEDIA_RE.sub(" ", raw))


def collapse_ws(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped."""
    return _SPACE_RE.sub(" ", text).strip()


def count_tokens(text: str) -> int:
    """Number of `[A-Za-z0-9_]+` tokens in the lower-cased text."""
    return len(_TOKEN_RE.findall(text.lower()))


def _edge_label(value: int, edges: tuple[tuple[int, str], ...], top: str) -> str:
    for upper, label in edges:
        if value <= upper:
            return label
    return top


def duration_bucket(n_frames: int) -> str:
    """Duration bucket from the frame count after resampling."""
    return _edge_label(n_frames, DURATION_EDGES, DURATION_TOP)


def q_len_bucket(n_tokens: int) -> str:
    """Question-length bucket from the question token count."""
    return _edge_label(n_tokens, Q_LEN_EDGES, Q_LEN_TOP)


def a_len_bucket(n_tokens: int) -> str:
    """Answer-length bucket from the answer token count."""
    return _edge_label(n_tokens, A_LEN_EDGES, A_LEN_TOP)


def is_temporal_question(question: str) -> bool:
    """Whether the question matches the temporal-cue regex."""
    return _TEMPORAL_RE.search(question) is not None


def temporal_category(bucket: str, question: str) -> str:
    """Static for images; Temporal or Mixed for videos by the temporal regex."""
    if bucket == BUCKET_IMAGE:
        return STATIC
    return TEMPORAL if is_temporal_question(question) else MIXED


def question_form(user_text: str) -> str:
    """MCQ or Open; pass the raw user text (the fix) or the collapsed one (published quirk)."""
    return MCQ if _MCQ_RE.search(user_text) else OPEN


def source_group(data_source: str | None) -> str:
    """Group of a data_source: text before the first '(' or its first four '_' parts."""
    source = (data_source or "").strip()
    if not source:
        return UNKNOWN_SOURCE
    if "(" in source:
        group = source.split("(", 1)[0].strip()
    else:
        group = "_".join(source.split("_")[:SOURCE_GROUP_PARTS])
    return group or UNKNOWN_SOURCE


def stratum_key(fields: dict[str, str]) -> str:
    """The seven field values joined by '|'."""
    return "|".join(fields[name] for name in STRATUM_FIELDS)


# ---- vectorised forms over a polars frame -------------------------------------------------


def _edge_expr(col: pl.Expr, edges: tuple[tuple[int, str], ...], top: str) -> pl.Expr:
    expr = pl.when(col <= edges[0][0]).then(pl.lit(edges[0][1]))
    for upper, label in edges[1:]:
        expr = expr.when(col <= upper).then(pl.lit(label))
    return expr.otherwise(pl.lit(top))


def collapse_ws_expr(col: str) -> pl.Expr:
    """Vectorised `collapse_ws` over a string column."""
    return pl.col(col).str.replace_all(WS_RUN_PATTERN, " ").str.strip_chars(" ")


def clean_question_expr(col: str) -> pl.Expr:
    """Vectorised `clean_question` over a string column."""
    stripped = pl.col(col).str.replace_all(MEDIA_TOKEN_PATTERN, " ")
    return stripped.str.replace_all(WS_RUN_PATTERN, " ").str.strip_chars(" ")


def token_count_expr(col: str) -> pl.Expr:
    """Vectorised `count_tokens` over a string column."""
    text = pl.col(col)
    # Lower-casing only changes the count for two characters; skip it (and its copy) elsewhere.
    lowered = text.str.to_lowercase().str.count_matches(TOKEN_PATTERN)
    counted = pl.when(text.str.contains(_LOWER_TO_ASCII_PATTERN)).then(lowered)
    return counted.otherwise(text.str.count_matches(TOKEN_PATTERN)).cast(pl.Int32)


def token_counts(texts: pl.Series) -> pl.Series:
    """`count_tokens` of every text (Int32, nulls kept), counted on the UTF-8 bytes with numpy.

    Token characters are ASCII, so a token starts at each token byte not preceded by one within
    its text; this costs about half the CPU of the regex. Texts holding a character whose lower
    case is ASCII (see `token_count_expr`) are counted by the regex.
    """
    parts = [
        _token_counts_of(texts.slice(i, _TOKEN_CHUNK_ROWS))
        for i in range(0, texts.len(), _TOKEN_CHUNK_ROWS)
    ]
    counts = pl.Series(texts.name, np.concatenate(parts) if parts else [], dtype=pl.Int32)
    special = texts.str.contains(_LOWER_TO_ASCII_PATTERN).fill_null(False)
    if special.any():
        exact = texts.filter(special).to_frame("t").select(token_count_expr("t")).to_series()
        counts = counts.scatter(special.arg_true(), exact)
    return counts.set(texts.is_null(), None) if texts.has_nulls() else counts


class _ByteScratch:
    """Work arrays reused by the pieces of `token_counts` (one set per thread, see `_SCRATCH`)."""

    def __init__(self) -> None:
        self.work = np.empty(0, dtype=np.uint8)
        self.flags = np.empty(0, dtype=bool)
        self.other = np.empty(0, dtype=bool)
        self.int32 = np.empty(0, dtype=np.int32)

    def of(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8, bool, bool) arrays of `size` elements."""
        if size > self.work.size:
            self.work = np.empty(size, dtype=np.uint8)
            self.flags, self.other = np.empty(size, dtype=bool), np.empty(size, dtype=bool)
        return self.work[:size], self.flags[:size], self.other[:size]

    def int32_of(self, size: int) -> np.ndarray:
        """An int32 array of `size` elements."""
        if size > self.int32.size:
            self.int32 = np.empty(size, dtype=np.int32)
        return self.int32[:size]


# Texts are counted in pieces of whole texts of about this many bytes: the six numpy passes over a
# piece stay in the CPU's cache, and the work arrays are small enough to keep for the thread (an
# array a chunk long, fresh per call, was page-faulted each time: ~250k faults at 1M QAs).
_TOKEN_PIECE_BYTES = 2**18
_SCRATCH = threading.local()


def _thread_scratch() -> _ByteScratch:
    """This thread's work arrays (`_TOKEN_PIECE_BYTES` each, up to twice that once a longer piece came)."""
    scratch = getattr(_SCRATCH, "arrays", None)
    if scratch is None:
        scratch = _SCRATCH.arrays = _ByteScratch()
        scratch.of(_TOKEN_PIECE_BYTES)
        scratch.int32_of(_TOKEN_PIECE_BYTES)
    return scratch


def _token_counts_of(texts: pl.Series) -> np.ndarray:
    """Token counts of a few thousand texts from their Arrow bytes (nulls count 0)."""
    array = texts.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets
    if hasattr(array, "combine_chunks"):
        array = array.combine_chunks()
    _, offset_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    counts = np.zeros(len(array), dtype=np.int32)
    first, last = int(offsets[0]), int(offsets[-1])
    if data_buffer is None or last == first:
        return counts
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    scratch = _thread_scratch()
    # pieces of whole texts: text `cuts[k]` up to (not including) text `cuts[k + 1]`
    targets = np.arange(first + _TOKEN_PIECE_BYTES, last, _TOKEN_PIECE_BYTES)
    cuts = np.unique(np.concatenate(([0], np.searchsorted(offsets, targets), [len(array)])))
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        ends = offsets[lo : hi + 1]
        piece = data[ends[0] : ends[-1]]
        if piece.size == 0:
            continue
        # (the thread keeps arrays of up to 2 pieces; a longer text gets arrays of its own)
        arrays = scratch if piece.size <= 2 * _TOKEN_PIECE_BYTES else _ByteScratch()
        work, is_token, starts = arrays.of(piece.size)
        is_token_byte(piece, out=is_token, work=work, other=starts)
        starts[0] = is_token[0]
        np.greater(is_token[1:], is_token[:-1], out=starts[1:])
        nonempty = ends[1:] > ends[:-1]
        text_starts = ends[:-1][nonempty] - ends[0]
        starts[text_starts] = is_token[text_starts]  # a text's first byte follows no token byte
        # each non-empty text's bytes run up to the next non-empty text's first byte (summed as
        # int32 already: reduceat casts its whole input to the sum's type in a fresh array)
        as_int = arrays.int32_of(piece.size)
        np.copyto(as_int, starts, casting="unsafe")
        counts[lo:hi][nonempty] = np.add.reduceat(as_int, text_starts, dtype=np.int32)
    return counts


def is_token_byte(
    data: np.ndarray,
    *,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
    other: np.ndarray | None = None,
) -> np.ndarray:
    """Which bytes (uint8) are `[A-Za-z0-9_]`, by range tests (faster than a lookup table);
    out (bool), work (uint8) and other (bool), of data's size, are used in place of new arrays."""
    out = np.empty(data.shape, dtype=bool) if out is None else out
    work = np.empty(data.shape, dtype=np.uint8) if work is None else work
    other = np.empty(data.shape, dtype=bool) if other is None else other
    np.bitwise_or(data, np.uint8(0x20), out=work)  # both cases; others wrap to >= 26
    np.subtract(work, np.uint8(ord("a")), out=work)
    np.less(work, np.uint8(26), out=out)
    np.subtract(data, np.uint8(ord("0")), out=work)
    out |= np.less(work, np.uint8(10), out=other)
    out |= np.equal(data, np.uint8(ord("_")), out=other)
    return out


def source_group_expr(col: str = "data_source") -> pl.Expr:
    """Vectorised `source_group` over a string column (see `with_source_group` for many rows)."""
    source = pl.col(col).fill_null("").str.strip_chars()
    before_paren = source.str.split("(").list.first().str.strip_chars()
    first_parts = source.str.split("_").list.head(SOURCE_GROUP_PARTS).list.join("_")
    group = pl.when(source.str.contains("(", literal=True)).then(before_paren).otherwise(first_parts)
    return pl.when(group == "").then(pl.lit(UNKNOWN_SOURCE)).otherwise(group)


def with_source_group(frame: pl.DataFrame, col: str = "data_source") -> pl.DataFrame:
    """`source_group` added to a frame, computed once per distinct data_source."""
    distinct = frame.select(pl.col(col).unique()).with_columns(source_group=source_group_expr(col))
    return frame.join(distinct, on=col, how="left", nulls_equal=True, maintain_order="left")


def with_stratum_fields(qa: pl.DataFrame, mcq_text_col: str = "user_text") -> pl.DataFrame:
    """Add lengths, the seven stratum fields and `stratum` to a frame of parsed QAs.

    Needs columns bucket, question, answer, n_frames, data_source and `mcq_text_col`
    (the raw user text for the fix, the collapsed question for the published quirk).
    """
    is_image = pl.col("bucket") == BUCKET_IMAGE
    temporal = pl.col("question").str.contains(TEMPORAL_PATTERN)
    if (qa["bucket"] == BUCKET_IMAGE).all():  # image QAs only (a OneVision file): no regex to run
        category = pl.lit(STATIC)
    else:
        category = (
            pl.when(is_image).then(pl.lit(STATIC)).when(temporal).then(pl.lit(TEMPORAL))
        ).otherwise(pl.lit(MIXED))
    out = qa.with_columns(
        question_len=token_counts(qa["question"]),
        answer_len=token_counts(qa["answer"]),
        duration_bucket=_edge_expr(pl.col("n_frames"), DURATION_EDGES, DURATION_TOP),
        temporal_category=category,
        question_form=pl.when(pl.col(mcq_text_col).str.contains(MCQ_PATTERN))
        .then(pl.lit(MCQ))
        .otherwise(pl.lit(OPEN)),
    )
    out = with_source_group(out).with_columns(
        q_len_bucket=_edge_expr(pl.col("question_len"), Q_LEN_EDGES, Q_LEN_TOP),
        a_len_bucket=_edge_expr(pl.col("answer_len"), A_LEN_EDGES, A_LEN_TOP),
    )
    return out.with_columns(stratum=pl.concat_str([pl.col(f) for f in STRATUM_FIELDS], separator="|"))
