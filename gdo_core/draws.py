"""The seeded draws: a tie-break per QA and the Uni reservoir with its shuffled order
(docs/method.md, Candidate pools and acceptance).

published mode replays the published code's one `random.Random(seed)` stream in scan order
(only the rejection sampling of its reservoir draws is walked in Python); default mode draws the
same quantities from numpy (PCG64), vectorised and independent of the scan order.
"""

from __future__ import annotations

import math
import random
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


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
