"""Cost of following a living pool: indexing, refreshing and reading chunks (gdo_core.pool_index).

    python benchmarks/pool_index.py                     # 200,000 lines, chunks of 20,000
    python benchmarks/pool_index.py --lines 1000000 --chunk-lines 20000

Writes a generated .jsonl pool (rows shaped like the demo's image rows, about 300 bytes each) to a
temporary folder and times, each the median of --runs:

- `index (first)`: the first index of the file (one linear read: newline search and BLAKE2b);
- `refresh (unchanged)`: a refresh when nothing changed (one stat per file, no byte read);
- `refresh (appended)`: a refresh after appending 1% more lines (the file is read again);
- `old tick`: what the sensor and the observation did on every tick before the index
  (`pool.chunk_fingerprints`: every line of every file hashed in Python);
- `records by range`: every chunk's records read by its byte range (`span_records`), the whole file;
- `records by lines`: every chunk's records as `pool.read_chunk` found them before the index,
  re-reading the file from its start for each chunk (quadratic in the number of chunks);
- `parse, all chunks`: `parse_records` of every chunk (the same for both reads; for scale).

Never asserted in tests; the numbers go in the closing note.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gdo_core import pool as P
from gdo_core import pool_index as I


def _row(i: int) -> str:
    return json.dumps(
        {
            "id": f"ov_{i:08d}",
            "images": [f"images/{i % 5000:06d}.png"],
            "messages": [
                {"role": "user", "content": f"<image>\nWhat is the colour of shape {i} in the image?"},
                {"role": "assistant", "content": ("red", "green", "blue")[i % 3]},
            ],
            "data_source": "CLEVR-Math(MathV360K)",
        }
    )


def _time(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def _records_by_lines(path: Path, chunk_lines: int, n_chunks: int) -> int:
    """What read_chunk did for each chunk: walk the file's lines from the start to the chunk."""
    total = 0
    for wanted in range(n_chunks):
        for i, records in P.iter_line_chunks(path, chunk_lines):
            if i == wanted:
                total += len(records)
                break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--chunk-lines", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.jsonl"
        path.write_text("".join(_row(i) + "\n" for i in range(args.lines)))
        pool = P.PoolFile(path, "onevision")
        size = path.stat().st_size
        first_s, (index, _) = _time(lambda: I.index_pool([pool], args.chunk_lines), args.runs)
        entry = index.files[0]
        unchanged_s, (_, stats) = _time(lambda: I.index_pool([pool], args.chunk_lines, index), args.runs)
        assert stats.bytes_read == 0
        with path.open("a") as fh:
            fh.write("".join(_row(args.lines + i) + "\n" for i in range(args.lines // 100 + 7)))
        appended_s, (grown, _) = _time(lambda: I.index_pool([pool], args.chunk_lines, index), args.runs)
        changes = I.diff_indexes(index, grown)
        old_tick_s, _ = _time(lambda: P.chunk_fingerprints(path, args.chunk_lines), 1)
        entry = grown.files[0]
        by_range_s, n_range = _time(
            lambda: sum(len(I.span_records(path, c, args.chunk_lines)) for c in entry.chunks), args.runs
        )
        by_lines_s, n_lines = _time(lambda: _records_by_lines(path, args.chunk_lines, len(entry.chunks)), 1)
        assert n_range == n_lines
        parse_s, _ = _time(
            lambda: [P.parse_records(I.span_records(path, c, args.chunk_lines), pool) for c in entry.chunks], 1
        )
        mb = size / 2**20
        print(f"pool: {args.lines} lines, {mb:.1f} MiB, chunks of {args.chunk_lines} lines: {len(entry.chunks)} chunks")
        print(f"index (first):        {first_s:8.3f} s ({mb / first_s:.0f} MiB/s)")
        print(f"refresh (unchanged):  {unchanged_s * 1e3:8.3f} ms (no byte read)")
        print(
            f"refresh (appended):   {appended_s:8.3f} s (+1% lines: {len(changes.changed)} chunk changed, "
            f"{len(changes.added)} added, {len(changes.unchanged)} unchanged)"
        )
        print(f"old tick:             {old_tick_s:8.3f} s (every line hashed, every tick; 1 run)")
        print(f"records by range:     {by_range_s:8.3f} s (all chunks)")
        print(f"records by lines:     {by_lines_s:8.3f} s (all chunks, each from the file's start; 1 run)")
        print(f"parse, all chunks:    {parse_s:8.3f} s (1 run)")


if __name__ == "__main__":
    main()
