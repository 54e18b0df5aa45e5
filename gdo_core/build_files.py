"""The files `gdo build` writes, and how: the SFT file names, the subset_members table, the
selected rows' columns and frame lists, files written atomically (NDJSON from frames made on
worker threads, appended in order); and `gdo resample`, which rewrites an SFT file with its frame
lists resampled (docs/method.md, Outputs).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from gdo_core.pool import resample_indices
from gdo_core.pool_cache import StoredTexts
from gdo_core.schema import SUBSET_MEMBER_SCHEMA
from gdo_core.select import SelectionResult
from gdo_core.sft_rows import QA_COLUMNS

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is installed with polars' extras here
    orjson = None  # type: ignore[assignment]

ARM_GDO, ARM_UNI = "gdo", "uni10x"
# QA columns `sft_rows` reads besides `frames` (gathered only for the selected rows).
SFT_QA_COLUMNS = frozenset(QA_COLUMNS) - {"frames"}


class BuildError(ValueError):
    """Invalid build arguments (or an SFT file `resample_jsonl` cannot read)."""


def output_names(target_frames: int) -> tuple[str, str]:
    """File names of the GDO 1x and Uni-10x SFT files for a frame count."""
    return f"gdo_1x_{target_frames}f.jsonl", f"uni_10x_{target_frames}f.jsonl"


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`: moved into place when the block succeeds, removed when it
    fails (no partial file is left behind)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(data)


def _write_ndjson_atomic(
    frames: Iterable[Callable[[], pl.DataFrame]], path: Path, workers: int = 1
) -> None:
    """NDJSON rows of the frames (each made by its callable), one after the other, written to
    `path` atomically; workers: frames made and serialised at once, on as many threads, and
    written in order.

    polars serialises each frame straight into its own part file beside `path` (no Python buffer
    to grow and page-fault), which is then appended to the output in the kernel and removed.
    """
    parts = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".parts", dir=path.parent))
    try:
        with (
            _atomic(path) as tmp,
            open(tmp, "wb") as fh,
            ThreadPoolExecutor(max(1, workers)) as pool,
        ):
            pending: collections.deque[Future[Path]] = collections.deque()
            for i, frame in enumerate(frames):
                if len(pending) >= max(1, workers):
                    _append_file(pending.popleft().result(), fh)
                pending.append(pool.submit(_ndjson_part, frame, parts / f"{i}.jsonl"))
            while pending:
                _append_file(pending.popleft().result(), fh)
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _ndjson_part(frame: Callable[[], pl.DataFrame], part: Path) -> Path:
    """part, holding the NDJSON rows of the frame the callable makes."""
    frame().write_ndjson(part)
    return part


def _append_file(part: Path, fh: BinaryIO) -> None:
    """part's bytes appended to the open file fh (copied in the kernel where it can), then part removed."""
    fh.flush()
    with open(part, "rb") as src:
        size, copied = os.fstat(src.fileno()).st_size, 0
        with contextlib.suppress(AttributeError, OSError):  # no copy_file_range: copied below
            while copied < size and (
                n := os.copy_file_range(src.fileno(), fh.fileno(), size - copied)
            ):
                copied += n
        if copied < size:
            src.seek(copied)
            fh.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, fh)
    part.unlink()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def members_table(profile: str, result: SelectionResult) -> pl.DataFrame:
    """subset_members rows (profile, arm, qa_uid, rank, stage, score) of both arms."""
    score = result.scores["score"]
    uid = result.qa["qa_uid"]
    parts = []
    for arm, rows, stages in (
        (ARM_GDO, result.gdo.rows, result.gdo.stages),
        (ARM_UNI, result.uni_rows, ["uni_random"] * len(result.uni_rows)),
    ):
        idx = np.asarray(rows, dtype=np.int64)
        parts.append(
            pl.DataFrame(
                {
                    "profile": [profile] * idx.size,
                    "arm": [arm] * idx.size,
                    "qa_uid": uid.gather(idx) if idx.size else pl.Series([], dtype=pl.String),
                    "rank": np.arange(idx.size, dtype=np.int32),
                    "stage": list(stages),
                    "score": score.gather(idx) if idx.size else pl.Series([], dtype=pl.Float64),
                },
                schema=SUBSET_MEMBER_SCHEMA,
            )
        )
    return pl.concat(parts)


def frame_rows(selected: pl.DataFrame, row_frames: pl.DataFrame) -> pl.Series:
    """Per row of `selected` (source_file, line), the row of row_frames holding its frame list
    (null without one)."""
    # Joined on one integer per (source_file, line): a file's code (few files) and the line.
    files = row_frames["source_file"].unique().to_list()
    code = pl.col("source_file").replace_strict(
        {name: i for i, name in enumerate(files)}, default=-1, return_dtype=pl.Int64
    )
    key = (code * 2**40 + pl.col("line").cast(pl.Int64)).alias("key")
    found = selected.select(key).join(
        row_frames.select(key).with_row_index("frame_row"),
        on="key",
        how="left",
        maintain_order="left",
    )
    if found.height != selected.height:
        raise ValueError("row frames hold a (source_file, line) more than once")
    return found["frame_row"]


def gather_chunked(column: pl.Series, rows: pl.Series) -> pl.Series:
    """`column.gather(rows)` (null rows give nulls), gathered chunk by chunk.

    A gather from a list column in several chunks costs time in proportion to the whole column
    (about 20 ms a call on a million frame lists), so each chunk is gathered on its own.
    """
    lengths = column.chunk_lengths()
    if len(lengths) <= 1:
        return column.gather(rows)
    valid = rows.is_not_null().to_numpy()
    idx = rows.drop_nulls().cast(pl.Int64).to_numpy()
    starts = np.cumsum([0, *lengths])
    chunk = np.searchsorted(starts, idx, side="right") - 1
    order = np.argsort(chunk, kind="stable")  # rows grouped by chunk, in their order within
    grouped, chunk_of = idx[order], chunk[order]
    parts = [column.slice(0, 0)]
    for c in np.unique(chunk).tolist():
        local = grouped[chunk_of == c] - starts[c]
        parts.append(column.slice(int(starts[c]), lengths[c]).gather(pl.Series(local)))
    taken = pl.concat([*parts, pl.Series([None], dtype=column.dtype)]).rechunk()
    at = np.full(rows.len(), idx.size, dtype=np.int64)  # the appended null
    at[np.flatnonzero(valid)[order]] = np.arange(idx.size)
    return taken.gather(pl.Series(at)).alias(column.name)


def _selected_rows(
    result: SelectionResult, rows: Sequence[int], row_frames: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series | None]:
    """(QA columns the SFT rows need, score terms, row of row_frames per row) of the selected rows
    in their order; the third is None when the QA table has its own frame lists."""
    idx = pl.Series(np.asarray(rows, dtype=np.int64))
    keys = ["source_file", "line"] if row_frames is not None else []
    columns = [c for c in result.qa.columns if c in SFT_QA_COLUMNS or c == "frames" or c in keys]
    selected = result.qa.select(columns)[idx]
    if row_frames is None:
        return selected, result.scores[idx], None
    return selected.drop(keys), result.scores[idx], frame_rows(selected, row_frames)


@dataclass
class SelectedArms:
    """What the files need of a selection, without the score terms of every row (`gather_arms`)."""

    gathered: dict[str, tuple[pl.DataFrame, pl.DataFrame, pl.Series | None]]  # `_selected_rows`
    rows: dict[str, np.ndarray]  # each arm's rows in the pool, in output order
    gdo_stages: list[str]
    texts_of: Callable[[np.ndarray], pl.DataFrame] | None  # texts of rows left on disk
    members: pl.DataFrame
    report: dict[str, Any]


def gather_arms(
    result: SelectionResult,
    profile_name: str,
    row_frames: pl.DataFrame | None,
    texts: StoredTexts | None,
) -> SelectedArms:
    """Each arm's selected rows gathered from the selection (`_selected_rows`), its members
    table and report."""
    texts_of = None
    if texts is not None and "question" not in result.qa.columns:
        texts_of = texts.take  # each arm's texts, read in its order on its writer thread
    members = members_table(profile_name, result)
    rows = {
        "gdo": np.asarray(result.gdo.rows, dtype=np.int64),
        "uni": np.asarray(result.uni_rows, dtype=np.int64),
    }
    return SelectedArms(
        gathered={arm: _selected_rows(result, r, row_frames) for arm, r in rows.items()},
        rows=rows,
        gdo_stages=result.gdo.stages,
        texts_of=texts_of,
        members=members,
        report=result.report,
    )


# ---- resampling SFT files -------------------------------------------------------------------


def resample_row(row: dict[str, Any], target_frames: int) -> dict[str, Any]:
    """One SFT row with `images` resampled to at most target_frames and its `<image>` tokens matched."""
    images = row.get("images")
    if not isinstance(images, list) or len(images) <= target_frames:
        return row
    old_n = len(images)
    new_images = [images[i] for i in resample_indices(old_n, target_frames)]
    row = dict(row)
    row["images"] = new_images
    messages = row.get("messages")
    if isinstance(messages, list):
        new_messages = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and content.startswith("<image>" * old_n):
                m = {
                    **m,
                    "content": "<image>" * len(new_images) + content[len("<image>") * old_n :],
                }
            new_messages.append(m)
        row["messages"] = new_messages
    dqm = row.get("data_quality_metrics")
    if isinstance(dqm, dict) and "n_frames" in dqm:
        row["data_quality_metrics"] = {**dqm, "n_frames": len(new_images)}
    return row


def resample_jsonl(input: Path | str, output: Path | str, target_frames: int) -> int:
    """`gdo resample`: rewrite an SFT JSONL file with every frame list resampled; returns rows written."""
    if target_frames < 1:
        raise BuildError(f"target frames must be >= 1, got {target_frames}")
    src, dst = Path(input), Path(output)
    if not src.is_file():
        raise BuildError(f"{src}: input file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    loads = orjson.loads if orjson is not None else json.loads
    count = 0
    opener = gzip.open if src.name.endswith(".gz") else open
    with _atomic(dst) as tmp, opener(src, "rb") as fin, open(tmp, "wb") as fout:
        for number, line in enumerate(fin, start=1):
            if not line.strip():
                continue
            try:
                row = loads(line)
            except ValueError as exc:
                raise BuildError(f"{src}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise BuildError(f"{src}:{number}: expected a JSON object")
            if "images" in row and not isinstance(row["images"], list):
                raise BuildError(f"{src}:{number}: key 'images' must be a list of frame paths")
            row = resample_row(row, target_frames)
            fout.write(
                orjson.dumps(row) + b"\n"
                if orjson is not None
                else (json.dumps(row, ensure_ascii=False) + "\n").encode()
            )
            count += 1
    return count
