"""The exclusion guard (benchmark decontamination): reference files read into normalised
questions and question<TAB>answer texts, and the pool QAs that match them dropped
(docs/method.md, Pool profile and exclusion guard).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from gdo_core.strata import MEDIA_TOKEN_PATTERN, collapse_ws

ExcludeMode = Literal["question", "qa", "both"]


_MEDIA_RE = re.compile(MEDIA_TOKEN_PATTERN)


class ExclusionError(ValueError):
    """A reference file for the exclusion guard that cannot be read."""


@dataclass
class ExclusionReference:
    """Normalised questions and question+TAB+answer texts of benchmark reference files."""

    mode: ExcludeMode
    questions: set[str] = field(default_factory=set)
    qa_pairs: set[str] = field(default_factory=set)
    stats: dict[str, Any] = field(default_factory=dict)


def _normalize_text(x: object) -> str:
    return "" if x is None else collapse_ws(str(x))


def _reference_pairs(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs of one reference row: its question/answer fields and message pairs."""
    out: list[tuple[str, str]] = []
    q, a = _normalize_text(item.get("question")), _normalize_text(item.get("answer"))
    if q:
        out.append((q, a))
    messages = item.get("messages", item.get("conversations"))
    if isinstance(messages, list):
        user = ""
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = _normalize_text(m.get("role", m.get("from", ""))).lower()
            content = _normalize_text(m.get("content", m.get("value", "")))
            if role in ("user", "human"):
                user = _normalize_text(_MEDIA_RE.sub(" ", content))
            elif role in ("assistant", "gpt") and user:
                answer = _normalize_text(content)
                if answer:
                    out.append((user, answer))
                user = ""
    return list(dict.fromkeys(out))


def load_exclusion_reference(
    paths: Sequence[Path | str], mode: ExcludeMode = "both"
) -> ExclusionReference:
    """Read reference JSONL files into sets of normalised questions and question<TAB>answer texts."""
    if mode not in ("question", "qa", "both"):
        raise ExclusionError(f"exclusion mode must be question, qa or both, got {mode!r}")
    ref = ExclusionReference(mode=mode)
    rows_seen = rows_bad = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ExclusionError(f"{path}: exclusion reference file not found")
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rows_seen += 1
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    rows_bad += 1
                    continue
                if not isinstance(item, dict):
                    rows_bad += 1
                    continue
                for q, a in _reference_pairs(item):
                    if mode in ("question", "both") and q:
                        ref.questions.add(q)
                    if mode in ("qa", "both") and q and a:
                        ref.qa_pairs.add(f"{q}\t{a}")
    ref.stats = {
        "enabled": bool(paths),
        "mode": mode,
        "paths": [str(p) for p in paths],
        "files_loaded": len(paths),
        "rows_seen": rows_seen,
        "rows_bad": rows_bad,
        "q_hashes": len(ref.questions),
        "qa_hashes": len(ref.qa_pairs),
    }
    return ref


def exclusion_reason(qa: pl.DataFrame, ref: ExclusionReference) -> pl.Series:
    """Per QA: "question" or "qa" when it matches the reference (question checked first), else null."""
    q_hit = pl.col("question").is_in(
        pl.lit(pl.Series(sorted(ref.questions), dtype=pl.String)).implode()
    )
    qa_text = pl.concat_str([pl.col("question"), pl.col("answer")], separator="\t")
    qa_hit = qa_text.is_in(pl.lit(pl.Series(sorted(ref.qa_pairs), dtype=pl.String)).implode())
    expr = (
        pl.when(q_hit)
        .then(pl.lit("question"))
        .when(qa_hit)
        .then(pl.lit("qa"))
        .otherwise(pl.lit(None))
    )
    return qa.select(expr.cast(pl.String).alias("reason"))["reason"]


def apply_exclusion(
    qa: pl.DataFrame, exclusion: ExclusionReference | None
) -> tuple[pl.DataFrame, dict[str, Any], bool]:
    """(the pool without the QAs the guard drops, the report's exclusion_guard block, whether any
    row was dropped)."""
    info: dict[str, Any] = {"enabled": False}
    if exclusion is not None and (exclusion.questions or exclusion.qa_pairs):
        reason = exclusion_reason(qa, exclusion)
        keep = reason.is_null()
        excluded = reason.drop_nulls().value_counts(sort=True)
        info = {
            **exclusion.stats,
            "excluded": int((~keep).sum()),
            "excluded_reason": dict(sorted(excluded.iter_rows())),
        }
        if info["excluded"] > 0:
            return qa.filter(keep), info, True
    elif exclusion is not None:
        info = {**exclusion.stats, "excluded": 0, "excluded_reason": {}}
    return qa, info, False
