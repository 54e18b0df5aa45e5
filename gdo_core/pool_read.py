"""Reading whole pool files: the fast columnar parser where it applies, the exact one elsewhere.

Above both parsers (`gdo_core.pool` and `gdo_core.pool_fast`, which builds on it), so neither
imports the other back.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa

from gdo_core import schema as S
from gdo_core.pool import (
    DEFAULT_CHUNK_LINES,
    DEFAULT_TARGET_FRAMES,
    ParseOptions,
    PoolFile,
    PoolResult,
    TextSink,
    _auto_workers,
    _map_ordered,
    few_chunks,
    iter_line_chunks,
    low_card,
    parse_records,
    pool_files,
    split_row_frames,
)
from gdo_core.pool_fast import parse_file_fast


def read_pool(
    onevision: Path | list[Path] | None,
    video: Path | list[Path] | None,
    *,
    target_frames: int = DEFAULT_TARGET_FRAMES,
    mcq_on_raw: bool = True,
    media_root: Path | None = None,
    video_frame_dir: Path | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    workers: int | None = None,
    fast: bool = True,
    row_frames: bool = False,
    categorical: bool = False,
    spill_texts: TextSink | None = None,
    file_threads: int | None = None,
    block_bytes: int | None = None,
) -> PoolResult:
    """Parse whole pool files (image pools first, then video pools) into one PoolResult.

    fast: read .jsonl[.gz] files with Arrow's JSON reader, rows of other shapes through the exact
    parser (same result); otherwise, or for .json files, every row goes through the exact parser,
    chunk by chunk on `workers` processes. row_frames: frame lists once per line in
    `PoolResult.frames`, not once per QA (what `gdo build` keeps in memory). categorical: the
    `schema.LOW_CARD_COLUMNS` as Categorical (`low_card`; what `gdo build` holds). spill_texts:
    every part's question and answer are handed to it as they are parsed, and the columns it returns
    stand in for them (the parse then never holds the pool's texts). file_threads: how many files
    are read side by side (default: one thread per file, up to the CPU count; 1 holds less).
    block_bytes: how much of a file the fast path parses at a time (default
    `pool_fast.BLOCK_BYTES`; less holds less). Neither changes the result.
    """
    options = ParseOptions(target_frames, mcq_on_raw, media_root, video_frame_dir)
    files = pool_files(onevision, video)
    # Arrow and polars release the GIL, so files are read side by side on threads.
    threads_wanted = file_threads or min(len(files), os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, threads_wanted)) as threads:
        fast_results = list(
            threads.map(
                lambda f: parse_file_fast(
                    f,
                    options,
                    row_frames=row_frames,
                    categorical=categorical,
                    spill_texts=spill_texts,
                    block_bytes=block_bytes,
                )
                if fast
                else None,
                files,
            )
        )
    qa, rejects, frames = [], [], []
    for pool, result in zip(files, fast_results):
        if result is None:
            result = _read_exact([pool], options, chunk_lines, _auto_workers([pool], workers))
            if row_frames:
                result = split_row_frames(result)
            if spill_texts is not None:
                result = PoolResult(spill_texts(result.qa), result.rejects, result.frames)
        qa.append(low_card(result.qa) if categorical else result.qa)
        rejects.append(result.rejects)
        frames.append(low_card(result.frames) if categorical and row_frames else result.frames)
    # Arrow's allocator keeps the pages the reader freed for reuse: about 130 MB at 230k QAs.
    pa.default_memory_pool().release_unused()
    return PoolResult(
        few_chunks(pl.concat(qa)) if qa else S.empty_frame(S.QA_SCHEMA),
        pl.concat(rejects) if rejects else S.empty_frame(S.REJECT_SCHEMA),
        few_chunks(pl.concat(frames)) if row_frames and frames else None,
    )


def _read_exact(files: list[PoolFile], options: ParseOptions, chunk_lines: int, workers: int) -> PoolResult:
    """Every row of the files through the exact parser, chunk by chunk on `workers` processes."""
    jobs = (
        (records, pool, options) for pool in files for _, records in iter_line_chunks(pool.path, chunk_lines)
    )
    qa, rejects = [], []
    for result in _map_ordered(parse_records, jobs, workers):
        qa.append(result.qa)
        rejects.append(result.rejects)
    return PoolResult(
        pl.concat(qa) if qa else S.empty_frame(S.QA_SCHEMA),
        pl.concat(rejects) if rejects else S.empty_frame(S.REJECT_SCHEMA),
    )
