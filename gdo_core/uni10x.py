"""The Uni-10x baseline: the seeded shuffled reservoir through the acceptance rule, then with the
text rule relaxed, then anything left (docs/method.md, Uni-10x baseline). Its size is
`budget.uni_size`; its reservoir comes from `draws`.
"""

from __future__ import annotations

import numpy as np

from gdo_core.acceptance import _Acceptor, _RowAttrs

STAGE_UNI = "uni_random"


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
