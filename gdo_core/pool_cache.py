"""Parsed-pool cache of `gdo build`: each pool file version is parsed once, later builds read Parquet.

A build for another profile, mode, ablation or budget on the same pool files reads the parsed
QA table (and the per-line frame lists and rejects) back from Parquet instead of parsing the JSONL
again. The key covers every file's resolved path, size and modification time, the parse options,
and the source of the parsing modules, so an edited pool, other options or a new gdo version
never hit an old entry. Entries are written under a temporary name and renamed into place;
the newest `KEEP_ENTRIES` are kept.

Question and answer texts are stored uncompressed in their own Arrow IPC file: compressing or
Parquet-encoding them is most of the cost of a store (about 1 CPU-s per million QAs with lz4
Parquet) for roughly 140 MB less on disk. The file is written in record batches of `TEXT_BATCH_ROWS`
rows, so a build can leave the texts on disk (`cached_read_pool(texts_on_disk=True)`) and read
back the rows it writes out (`StoredTexts.take`), one batch in memory at a time; the selection
then tells (question, answer) pairs apart by the `schema.TEXT_CODE` column stored with the table.
The per-line frame lists are a zstd Arrow IPC file:
per million QAs, Parquet's writer holds about 180 MB more while it writes them and its file is
about 3x larger; reading them back costs about 0.05 s more. Every other column is lz4 Parquet.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pyarrow import ipc

from gdo_core import pool as P
from gdo_core import schema as S
from gdo_core.pool_fast import _arrow

KEEP_ENTRIES = 4
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # a pool entry's folder: its key
STALE_TMP_SECONDS = 24 * 3600
_PARTS = ("qa", "rejects")  # Parquet files
_TEXT_FILE, _TEXT_COLUMNS = "text.arrow", ("question", "answer")
# rows per record batch of the text file (`StoredTexts.take` reads one at a time)
TEXT_BATCH_ROWS = 65_536
_FRAMES_FILE = "frames.arrow"
# candidate_score.py: the answer tokeniser whose counts an entry keeps; select.py: the text codes
_PARSER_MODULES = (
    "pool.py",
    "pool_fast.py",
    "strata.py",
    "schema.py",
    "pool_cache.py",
    "candidate_score.py",
    "select.py",
)


def default_cache_dir() -> Path:
    """$GDO_CACHE_DIR, else $XDG_CACHE_HOME/gdo/pools, else ~/.cache/gdo/pools."""
    if os.environ.get("GDO_CACHE_DIR"):
        return Path(os.environ["GDO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gdo" / "pools"


@functools.cache
def _code_digest(modules: tuple[str, ...]) -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in modules:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def entry_key(
    files: list[tuple[str, Path]], options: dict[str, object], modules: tuple[str, ...]
) -> str:
    """Hex key of a cache entry: (kind, file) pairs (path, size, mtime), options and the source of
    the gdo_core modules that decide what the entry holds."""
    identity = []
    for kind, path in files:
        stat = path.stat()
        identity.append([kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps(
        {"files": identity, "options": options, "code": _code_digest(modules)}, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_key(files: list[P.PoolFile], options: dict[str, object]) -> str:
    """Hex key of a parse: files (path, size, mtime), options and the parser's source."""
    return entry_key([(f.kind, f.path) for f in files], options, _PARSER_MODULES)


@dataclass(frozen=True)
class StoredTexts:
    """The question and answer of each QA row of a cache entry, left in its text file."""

    path: Path
    rows: int

    def read(self) -> pl.DataFrame:
        """Every row."""
        return pl.read_ipc(self.path)

    def take(self, rows: np.ndarray) -> pl.DataFrame:
        """The given rows (repeats allowed) in the given order, read one record batch at a time.

        Only the taken strings are kept (Arrow's take copies them out of the batch).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return pl.DataFrame(schema={c: pl.String() for c in _TEXT_COLUMNS})
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"{self.path}: rows outside 0..{self.rows - 1}")
        unique, inverse = np.unique(rows, return_inverse=True)
        batch_of = unique // TEXT_BATCH_ROWS
        memory = pa.default_memory_pool()
        # read, not mapped (a mapped page counts as resident), a batch's pages handed back after it
        with pa.OSFile(str(self.path), memory_pool=memory) as source:
            reader = ipc.open_file(source, memory_pool=memory)
            parts = []
            for b in np.unique(batch_of).tolist():
                lo, hi = np.searchsorted(batch_of, [b, b + 1])
                local = _arrow(unique[lo:hi] - b * TEXT_BATCH_ROWS)  # (not pa.array: pandas)
                parts.append(reader.get_batch(b).take(local))
                memory.release_unused()
        taken = pl.from_arrow(pa.Table.from_batches(parts))
        assert isinstance(taken, pl.DataFrame)
        return taken[pl.Series(inverse.reshape(-1))]


def _write_texts(frame: pl.DataFrame, path: Path) -> None:
    """frame's string columns as an uncompressed Arrow file in batches of TEXT_BATCH_ROWS rows
    (plain large strings, which Arrow's take copies out of a batch), converted a batch at a time."""
    oldest = pl.CompatLevel.oldest()
    schema = frame.clear().to_arrow(compat_level=oldest).schema
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for start in range(0, frame.height, TEXT_BATCH_ROWS):
            part = frame.slice(start, TEXT_BATCH_ROWS).to_arrow(compat_level=oldest)
            writer.write_batch(part.combine_chunks().to_batches()[0])


def _stored_texts(path: Path, rows: int) -> StoredTexts:
    """The entry's text file, checked against its footer (ValueError if it does not fit)."""
    with pa.OSFile(str(path)) as source:
        reader = ipc.open_file(source)
        names, batches = reader.schema.names, reader.num_record_batches
    if tuple(names) != _TEXT_COLUMNS or batches != -(-rows // TEXT_BATCH_ROWS):
        raise ValueError(
            f"{path}: not {rows} rows of {_TEXT_COLUMNS} in batches of {TEXT_BATCH_ROWS}"
        )
    return StoredTexts(path, rows)


@dataclass
class CachedPool:
    """A parsed pool, whether it came from the cache, and the entry's key.

    texts: a hit that left the question and answer on disk (`cached_read_pool(texts_on_disk=True)`).
    """

    result: P.PoolResult
    status: str  # "hit", "miss" (parsed and stored), or "off"
    key: str | None = None
    texts: StoredTexts | None = None

    def info(self) -> dict[str, object]:
        """What the build report says about the cache."""
        return {"status": self.status, "key": self.key}


def _load(entry: Path, texts_on_disk: bool) -> tuple[P.PoolResult, StoredTexts | None] | None:
    """An entry's tables (None if missing or damaged); texts_on_disk: leave question and answer in
    the text file when the entry has the codes that stand in for them (`schema.TEXT_CODE`)."""
    try:
        has_codes = S.TEXT_CODE in pl.read_parquet_schema(entry / "qa.parquet")
        texts_on_disk = texts_on_disk and has_codes
        qa, rejects = (pl.read_parquet(entry / f"{part}.parquet") for part in _PARTS)
        frames = P.few_chunks(pl.read_ipc(entry / _FRAMES_FILE))
        order = json.loads((entry / "columns.json").read_text())
        if texts_on_disk:
            texts = _stored_texts(entry / _TEXT_FILE, qa.height)
            qa = P.few_chunks(qa.select(c for c in order if c not in _TEXT_COLUMNS))
            return P.PoolResult(qa, rejects, frames), texts
        text = pl.read_ipc(entry / _TEXT_FILE)
        qa = P.few_chunks(pl.concat([qa, text], how="horizontal").select(order))
    except (OSError, ValueError, pa.ArrowException, pl.exceptions.PolarsError):
        return None  # a missing or damaged entry: parse again
    return P.PoolResult(qa, rejects, frames), None


@contextlib.contextmanager
def writing_entry(entry: Path) -> Iterator[Path]:
    """A temporary folder beside entry to write into, moved into place as entry (replacing an older
    one) when the block succeeds and removed either way."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        yield tmp
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def keep_newest(entries: Iterable[Path]) -> None:
    """Remove all but the `KEEP_ENTRIES` most recently used of the given entry folders."""
    by_use = sorted(entries, key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in by_use[KEEP_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)


def store(entry: Path, result: P.PoolResult, qa_columns: dict[str, pl.Series] | None = None) -> None:
    """Write an entry under a temporary name and rename it into place; keep the newest entries.

    qa_columns: derived per-QA columns kept with the QA table (e.g. `select.ANSWER_DISTINCT`).
    """
    root = entry.parent
    with writing_entry(entry) as tmp:
        frames = result.frames if result.frames is not None else S.empty_frame(P.ROW_FRAMES_SCHEMA)
        qa = result.qa.with_columns(**qa_columns) if qa_columns else result.qa
        text = [c for c in _TEXT_COLUMNS if c in qa.columns]
        for part, frame in zip(_PARTS, (qa.drop(text), result.rejects)):
            frame.write_parquet(tmp / f"{part}.parquet", compression="lz4", statistics=False)
        frames.write_ipc(tmp / _FRAMES_FILE, compression="zstd")
        _write_texts(qa.select(text), tmp / _TEXT_FILE)
        (tmp / "columns.json").write_text(json.dumps(qa.columns))
    # pool entries only: other entries in the folder (a build's metrics) keep their own count
    keep_newest(p for p in root.iterdir() if p.is_dir() and _ENTRY_NAME.fullmatch(p.name))
    # temporary folders of builds that were killed while storing
    stale = time.time() - STALE_TMP_SECONDS
    for tmp_dir in root.glob(".*"):
        with contextlib.suppress(OSError):
            if tmp_dir.is_dir() and tmp_dir.stat().st_mtime < stale:
                shutil.rmtree(tmp_dir, ignore_errors=True)


def cached_read_pool(
    onevision: Path | None,
    video: Path | None,
    *,
    cache_dir: Path | None,
    defer_store: Callable[[Callable[..., None]], None] | None = None,
    texts_on_disk: bool = False,
    **options: object,
) -> CachedPool:
    """`pool.read_pool(onevision, video, row_frames=True, **options)` through the cache in cache_dir.

    cache_dir None: no cache. defer_store: is handed the store, `write(qa_columns=None)`, to run
    later (e.g. on a thread while the selection runs) instead of before returning. texts_on_disk:
    a hit leaves question and answer in the entry (`CachedPool.texts`) when the entry holds
    `schema.TEXT_CODE` (a build's entries do); the QA table then has no such columns.
    """
    if cache_dir is None:
        return CachedPool(P.read_pool(onevision, video, row_frames=True, **options), "off")  # type: ignore[arg-type]
    files = P.pool_files(onevision, video)
    key = cache_key(files, options)
    entry = Path(cache_dir) / key
    if entry.is_dir():
        loaded = _load(entry, texts_on_disk)
        if loaded is not None:
            os.utime(entry)  # newest use first when old entries are dropped
            return CachedPool(loaded[0], "hit", key, loaded[1])
    result = P.read_pool(onevision, video, row_frames=True, **options)  # type: ignore[arg-type]
    if cache_key(files, options) != key:  # a file changed while it was read: do not store
        return CachedPool(result, "off", key)

    def write(qa_columns: dict[str, pl.Series] | None = None) -> None:
        try:
            store(entry, result, qa_columns)
        except (OSError, pl.exceptions.PolarsError):  # a full or read-only cache folder must not fail the build
            pass

    if defer_store is None:
        write()
    else:
        defer_store(write)
    return CachedPool(result, "miss", key)
