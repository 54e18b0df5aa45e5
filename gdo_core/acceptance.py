"""The acceptance rule: a QA is taken only if its qa_uid and (question, answer) identity are
unused, the video count is below its maximum and its video is under the per-video cap
(docs/method.md, Candidate pools and acceptance).

Only the rows acceptance can see (the pools and the reservoir) get their attributes, as integer
codes (`_row_attrs`). Small pools are walked in order in Python; larger ones settle the same
in-order greedy in a few vectorised rounds (`_greedy_accept`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from gdo_core.row_codes import _joined_texts, _series_codes, _value_codes, first_seen_codes
from gdo_core.schema import BUCKET_VIDEO, TEXT_CODE

GREEDY_LOOP_MAX = 512  # pools up to this size are walked in Python; larger ones are vectorised
GREEDY_MAX_ROUNDS = 64  # rounds of the vectorised greedy before it falls back to the walk


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
