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
`gdo build --low-memory` also writes a new entry's text file while the pool is parsed
(`TextSpill`, `parse_to_disk=True`): its rows are in the order the parse produced them, and the
entry's `TEXT_ROW` column says which row holds each QA's texts.
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pyarrow import ipc

from gdo_core import pool as P
from gdo_core import schema as S
from gdo_core.candidate_score import distinct_answer_tokens
from gdo_core.pool_fast import _arrow
from gdo_core.pool_read import read_pool
from gdo_core.select import ANSWER_DISTINCT, codes_of_text_hashes, text_hashes

KEEP_ENTRIES = 4
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # a pool entry's folder: its key
STALE_TMP_SECONDS = 24 * 3600
_PARTS = ("qa", "rejects")  # Parquet files
_TEXT_FILE, _TEXT_COLUMNS = "text.arrow", ("question", "answer")
_TEXT_SCHEMA = pa.schema([(c, pa.large_string()) for c in _TEXT_COLUMNS])
# QA column of a parse whose texts went to the text file as they were parsed (`TextSpill`), kept
# in its entry: the row of the file that holds each QA's texts
TEXT_ROW = "text_row"
# rows per record batch of the text file (`StoredTexts.take` reads one at a time)
TEXT_BATCH_ROWS = 65_536
_FRAMES_FILE = "frames.arrow"
# candidate_score.py: the answer tokeniser whose counts an entry keeps; select.py: the text codes
_PARSER_MODULES = (
    "pool.py",
    "pool_lines.py",
    "pool_rows.py",
    "pool_fast.py",
    "strata.py",
    "schema.py",
    "pool_cache.py",
    "candidate_score.py",
    "select.py",
    "row_codes.py",
    "pool_read.py",
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


@dataclass(frozen=True, eq=False)
class StoredTexts:
    """The question and answer of each row of a QA table, left in a text file (`_write_texts`).

    source: the file, open (it can be read after its folder is renamed or removed); rows: rows in
    the file; order: per table row, its row in the file (None: the same row).
    """

    path: Path
    rows: int
    source: pa.NativeFile
    order: np.ndarray | None = None

    @property
    def height(self) -> int:
        """Rows of the table the texts belong to."""
        return self.rows if self.order is None else self.order.size

    def _batches(self) -> ipc.RecordBatchFileReader:
        return ipc.open_file(self.source, memory_pool=pa.default_memory_pool())

    def read(self) -> pl.DataFrame:
        """Every row, in table order."""
        texts = pl.from_arrow(self._batches().read_all())
        assert isinstance(texts, pl.DataFrame)
        texts = texts.select(pl.col(c).cast(pl.String) for c in _TEXT_COLUMNS)
        return texts if self.order is None else texts[pl.Series(self.order)]

    def take(self, rows: np.ndarray) -> pl.DataFrame:
        """The given table rows (repeats allowed) in the given order, read one record batch at a time.

        Only the taken strings are kept (Arrow's take copies them out of the batch).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return pl.DataFrame(schema={c: pl.String() for c in _TEXT_COLUMNS})
        if rows.min() < 0 or rows.max() >= self.height:
            raise IndexError(f"{self.path}: rows outside 0..{self.height - 1}")
        if self.order is not None:
            rows = self.order[rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        batch_of = unique // TEXT_BATCH_ROWS
        memory = pa.default_memory_pool()
        # read, not mapped (a mapped page counts as resident), a batch's pages handed back after
        # it; each batch's taken rows go to polars at once (one copy of them held, then the gather)
        reader = self._batches()
        parts = []
        for b in np.unique(batch_of).tolist():
            lo, hi = np.searchsorted(batch_of, [b, b + 1])
            local = _arrow(unique[lo:hi] - b * TEXT_BATCH_ROWS)  # (not pa.array: pandas)
            part = pl.from_arrow(reader.get_batch(b).take(local))
            assert isinstance(part, pl.DataFrame)
            parts.append(part)
            memory.release_unused()
        taken = pl.concat(parts, rechunk=False)
        del parts
        return taken[pl.Series(inverse.reshape(-1))]


class TextSpill:
    """Question and answer of QA parts written to a text file (as `_write_texts` writes one) while a
    parse produces them (`pool_read.read_pool(spill_texts=...)`): a part comes back with `TEXT_ROW`
    instead. Parts may come from several threads; their rows go in call order. A worker thread
    hashes the texts (`select.text_hashes`), counts the answers' tokens and writes the rows, beside
    the parse; `close` waits for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.error: OSError | None = None  # the write that failed, if one did
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(1)  # one thread: parts are written in submission order
        self._done: list[Future[tuple[pl.Series, np.ndarray]]] = []
        self._pending: list[pa.Table] = []  # rows not yet written: less than a batch
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = ipc.new_file(self._sink, _TEXT_SCHEMA)

    def __call__(self, part: pl.DataFrame) -> pl.DataFrame:
        """The part with its texts handed to the worker."""
        texts, answer_len = part.select(_TEXT_COLUMNS), part["answer_len"].to_numpy()
        with self._lock:
            start = self.rows
            self.rows += part.height
            self._done.append(self._worker.submit(self._spill, texts, answer_len))
        rows = pl.int_range(start, start + part.height, dtype=pl.Int64, eager=True)
        return part.drop(_TEXT_COLUMNS).with_columns(rows.alias(TEXT_ROW))

    def _spill(self, texts: pl.DataFrame, answer_len: np.ndarray) -> tuple[pl.Series, np.ndarray]:
        """(hashes, answer token counts) of a part, whose texts join the pending rows."""
        if self.error is not None:  # a write failed: the parse is read again without the file
            return pl.Series(dtype=pl.UInt64), np.zeros(0, dtype=np.int64)
        hashes = text_hashes(texts)
        counts = distinct_answer_tokens(texts["answer"], answer_len)
        self._pending.append(texts.to_arrow(compat_level=pl.CompatLevel.oldest()))
        if sum(t.num_rows for t in self._pending) >= TEXT_BATCH_ROWS:
            self._write(final=False)
        return hashes, counts

    def _write(self, final: bool) -> None:
        """Whole batches of the pending rows (and the rest when final) to the file."""
        table = pa.concat_tables(self._pending).combine_chunks()
        whole = table.num_rows if final else table.num_rows - table.num_rows % TEXT_BATCH_ROWS
        try:
            for start in range(0, whole, TEXT_BATCH_ROWS):
                batch = table.slice(start, min(TEXT_BATCH_ROWS, whole - start))
                self._writer.write_batch(batch.combine_chunks().to_batches()[0])
        except OSError as exc:
            self.error = exc
            raise
        self._pending = [table.slice(whole)] if whole < table.num_rows else []
        del table
        pa.default_memory_pool().release_unused()

    def close(self, order: np.ndarray) -> tuple[StoredTexts, pl.Series, np.ndarray]:
        """(the texts, and per table row the texts' hash and the answer's token count) once the rest
        is written and the file closed; order: per table row, its `TEXT_ROW`. A failed write raises
        its OSError."""
        self._worker.shutdown(wait=True)
        parts = [done.result() for done in self._done]
        if self._pending:
            self._write(final=True)
        self._writer.close()
        self._sink.close()
        hashes = pl.concat([h for h, _ in parts]) if parts else pl.Series(dtype=pl.UInt64)
        counts = np.concatenate([c for _, c in parts]) if parts else np.zeros(0, dtype=np.int64)
        table_order = pl.Series(order)
        return _stored_texts(self.path, self.rows, order), hashes[table_order], counts[order]

    def discard(self) -> None:
        """Close the file without finishing it (a failed parse)."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()
        self._sink.close()


def _write_texts(frame: pl.DataFrame, path: Path) -> None:
    """frame's string columns as an uncompressed Arrow file in batches of TEXT_BATCH_ROWS rows
    (plain large strings, which Arrow's take copies out of a batch), converted a batch at a time."""
    oldest = pl.CompatLevel.oldest()
    schema = frame.clear().to_arrow(compat_level=oldest).schema
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for start in range(0, frame.height, TEXT_BATCH_ROWS):
            part = frame.slice(start, TEXT_BATCH_ROWS).to_arrow(compat_level=oldest)
            writer.write_batch(part.combine_chunks().to_batches()[0])


def _stored_texts(path: Path, rows: int, order: np.ndarray | None = None) -> StoredTexts:
    """The text file, opened and checked against its footer (ValueError if it does not fit)."""
    source = pa.OSFile(str(path), memory_pool=pa.default_memory_pool())
    reader = ipc.open_file(source)
    names, batches = reader.schema.names, reader.num_record_batches
    if tuple(names) != _TEXT_COLUMNS or batches != -(-rows // TEXT_BATCH_ROWS):
        source.close()
        raise ValueError(
            f"{path}: not {rows} rows of {_TEXT_COLUMNS} in batches of {TEXT_BATCH_ROWS}"
        )
    if order is not None and order.size != rows:
        source.close()
        raise ValueError(f"{path}: {rows} rows for a table of {order.size}")
    return StoredTexts(path, rows, source, order)


@dataclass
class CachedPool:
    """A parsed pool, whether it came from the cache, and the entry's key.

    texts: the question and answer of the QA table when it has none (`cached_read_pool(texts_on_disk=True)`).
    """

    result: P.PoolResult
    status: str  # "hit", "miss" (parsed and stored), or "off"
    key: str | None = None
    texts: StoredTexts | None = None
    _unstored: Path | None = None  # a miss's folder of files written while parsing, until stored

    def info(self) -> dict[str, object]:
        """What the build report says about the cache."""
        return {"status": self.status, "key": self.key}

    def close(self) -> None:
        """Close the texts' file, and remove what a miss wrote while parsing if it was not stored
        (a failed build; a stored entry has been moved into place)."""
        if self.texts is not None:
            self.texts.source.close()
        if self._unstored is not None:
            shutil.rmtree(self._unstored, ignore_errors=True)


def _columns_in_parse_order(qa: pl.DataFrame) -> list[str]:
    """The table's columns as a parse gives them, texts included, then the derived ones."""
    parsed = [c for c in S.QA_SCHEMA if c in qa.columns or c in _TEXT_COLUMNS]
    return parsed + [c for c in qa.columns if c not in parsed and c != TEXT_ROW]


def _load(entry: Path, texts_on_disk: bool) -> tuple[P.PoolResult, StoredTexts | None] | None:
    """An entry's tables (None if missing or damaged); texts_on_disk: leave question and answer in
    the text file when the entry has the codes that stand in for them (`schema.TEXT_CODE`)."""
    try:
        has_codes = S.TEXT_CODE in pl.read_parquet_schema(entry / "qa.parquet")
        texts_on_disk = texts_on_disk and has_codes
        qa, rejects = (pl.read_parquet(entry / f"{part}.parquet") for part in _PARTS)
        frames = P.few_chunks(pl.read_ipc(entry / _FRAMES_FILE))
        columns = json.loads((entry / "columns.json").read_text())
        order = qa[TEXT_ROW].to_numpy() if TEXT_ROW in qa.columns else None
        qa = qa.drop(TEXT_ROW, strict=False)
        texts = _stored_texts(entry / _TEXT_FILE, qa.height, order)
        if texts_on_disk:
            qa = P.few_chunks(qa.select(c for c in columns if c not in _TEXT_COLUMNS))
            return P.PoolResult(qa, rejects, frames), texts
        with texts.source:
            qa = P.few_chunks(pl.concat([qa, texts.read()], how="horizontal").select(columns))
    except (OSError, ValueError, pa.ArrowException, pl.exceptions.PolarsError):
        return None  # a missing or damaged entry: parse again
    return P.PoolResult(qa, rejects, frames), None


@contextlib.contextmanager
def writing_entry(entry: Path, tmp: Path | None = None) -> Iterator[Path]:
    """A temporary folder beside entry (tmp: one made already) to write into, moved into place as
    entry (replacing an older one) when the block succeeds and removed either way."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
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


def store(
    entry: Path,
    result: P.PoolResult,
    qa_columns: dict[str, pl.Series] | None = None,
    into: Path | None = None,
) -> None:
    """Write an entry under a temporary name and rename it into place; keep the newest entries.

    qa_columns: derived per-QA columns kept with the QA table (e.g. `select.ANSWER_DISTINCT`).
    into: the temporary folder, holding the text file already (written by `TextSpill`; the
    table then has `TEXT_ROW` among qa_columns instead of its texts).
    """
    root = entry.parent
    with writing_entry(entry, into) as tmp:
        frames = result.frames if result.frames is not None else S.empty_frame(P.ROW_FRAMES_SCHEMA)
        qa = result.qa.with_columns(**qa_columns) if qa_columns else result.qa
        text = [c for c in _TEXT_COLUMNS if c in qa.columns]
        for part, frame in zip(_PARTS, (qa.drop(text), result.rejects)):
            frame.write_parquet(tmp / f"{part}.parquet", compression="lz4", statistics=False)
        frames.write_ipc(tmp / _FRAMES_FILE, compression="zstd")
        if into is None:
            _write_texts(qa.select(text), tmp / _TEXT_FILE)
        (tmp / "columns.json").write_text(json.dumps(_columns_in_parse_order(qa)))
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
    parse_to_disk: bool = False,
    file_threads: int | None = None,
    block_bytes: int | None = None,
    **options: object,
) -> CachedPool:
    """`pool_read.read_pool(onevision, video, row_frames=True, **options)` through the cache in cache_dir.

    cache_dir None: no cache. defer_store: is handed the store, `write(qa_columns=None)`, to run
    later (e.g. on a thread while the selection runs) instead of before returning. texts_on_disk:
    a hit leaves question and answer in the entry's text file (`CachedPool.texts`) when the entry
    holds `schema.TEXT_CODE` (a build's entries do); the QA table then has no such columns.
    parse_to_disk: so does a miss, with the new entry's text file, written while the pool is parsed
    (`TextSpill`): the parse never holds the pool's texts, at some cost in time.
    file_threads, block_bytes: see `pool_read.read_pool` (not part of the key: the result is the same).
    """
    read = functools.partial(
        read_pool, row_frames=True, file_threads=file_threads, block_bytes=block_bytes, **options
    )
    if cache_dir is None:
        return CachedPool(read(onevision, video), "off")
    files = P.pool_files(onevision, video)
    key = cache_key(files, options)
    entry = Path(cache_dir) / key
    if entry.is_dir():
        loaded = _load(entry, texts_on_disk)
        if loaded is not None:
            os.utime(entry)  # newest use first when old entries are dropped
            return CachedPool(loaded[0], "hit", key, loaded[1])
    spill, tmp = _text_spill(entry) if parse_to_disk else (None, None)
    texts, qa_columns = None, {}
    try:
        result = read(onevision, video, spill_texts=spill)
        if spill is not None:
            order = result.qa[TEXT_ROW].to_numpy()
            texts, hashes, counts = spill.close(order)
            codes = codes_of_text_hashes(hashes, texts.take)
            qa = result.qa.drop(TEXT_ROW).with_columns(  # the order of a build's derived columns
                pl.Series(S.TEXT_CODE, codes), pl.Series(ANSWER_DISTINCT, counts, dtype=pl.Int32)
            )
            result = P.PoolResult(qa, result.rejects, result.frames)
            qa_columns = {TEXT_ROW: pl.Series(TEXT_ROW, order)}
    except BaseException as exc:
        if spill is None:
            raise
        spill.discard()
        if texts is not None:
            texts.source.close()
        shutil.rmtree(tmp, ignore_errors=True)  # type: ignore[arg-type]
        if not (isinstance(exc, OSError) and spill.error is not None):
            raise
        # the cache folder filled up: parse again, holding the texts
        result, spill, tmp, texts, qa_columns = read(onevision, video), None, None, None, {}
    if cache_key(files, options) != key:  # a file changed while it was read: do not store
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # (the open text file can still be read)
        return CachedPool(result, "off", key, texts)

    def write(derived: dict[str, pl.Series] | None = None) -> None:
        try:
            store(entry, result, {**(derived or {}), **qa_columns}, into=tmp)
        except (OSError, pl.exceptions.PolarsError):  # a full or read-only cache folder must not fail the build
            pass

    if defer_store is None:
        write()
    else:
        defer_store(write)
    return CachedPool(result, "miss", key, texts, tmp)


def _text_spill(entry: Path) -> tuple[TextSpill | None, Path | None]:
    """A `TextSpill` into a new temporary folder beside entry, or (None, None) where none can be made."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError:
        return None, None
    try:
        return TextSpill(tmp / _TEXT_FILE), tmp
    except (OSError, pa.ArrowException):
        shutil.rmtree(tmp, ignore_errors=True)
        return None, None
