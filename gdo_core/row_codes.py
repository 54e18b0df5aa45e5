"""Integer codes the selection compares instead of strings: first-seen codes of a column, exact
codes of any values, and the (question, answer) text identity of a QA (docs/method.md, Candidate
pools and acceptance).

`text_hashes` and `codes_of_text_hashes` are also what a cached pool keeps (`pool_cache`), so a
QA gets the same text code whether its texts are in memory or left on disk
(`text_codes` is the in-memory entry point).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

TEXT_KEY_SEPARATOR = "|||"  # (question, answer) identity, as the published text hash joins them
TEXT_CODE_CHUNK_ROWS = 65_536  # rows whose joined texts are hashed at a time


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
