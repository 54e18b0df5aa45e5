"""Parsed-pool cache of `gdo build`: each pool file version is parsed once, later builds read Parquet.

A build for another profile, mode, ablation or budget on the same pool files reads the parsed
QA table (and the per-line frame lists and rejects) back from Parquet instead of parsing the JSONL
again. The key covers every file's resolved path, size and modification time, the parse options,
and the source of the parsing modules, so an edited pool, other options or a new gdo version
never hit an old entry. Entries are written under a temporary name and renamed into place;
the newest `KEEP_ENTRIES` are kept.

Question and answer texts are stored uncompressed in their own Arrow IPC file: compressing or
Parquet-encoding them is most of the cost of a store (about 1 CPU-s per million QAs with lz4
Parquet) for roughly 140 MB less on disk. The per-line frame lists are a zstd Arrow IPC file:
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

import polars as pl

from gdo_core import pool as P
from gdo_core import schema as S

KEEP_ENTRIES = 4
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # a pool entry's folder: its key
STALE_TMP_SECONDS = 24 * 3600
_PARTS = ("qa", "rejects")  # Parquet files
_TEXT_FILE, _TEXT_COLUMNS = "text.arrow", ("question", "answer")
_FRAMES_FILE = "frames.arrow"
# candidate_score.py: the answer tokeniser whose counts an entry keeps
_PARSER_MODULES = ("pool.py", "pool_fast.py", "strata.py", "schema.py", "pool_cache.py", "candidate_score.py")


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


@dataclass
class CachedPool:
    """A parsed pool, whether it came from the cache, and the entry's key."""

    result: P.PoolResult
    status: str  # "hit", "miss" (parsed and stored), or "off"
    key: str | None = None

    def info(self) -> dict[str, object]:
        """What the build report says about the cache."""
        return {"status": self.status, "key": self.key}


def _load(entry: Path) -> P.PoolResult | None:
    try:
        qa, rejects = (pl.read_parquet(entry / f"{part}.parquet") for part in _PARTS)
        frames = pl.read_ipc(entry / _FRAMES_FILE)
        text = pl.read_ipc(entry / _TEXT_FILE)
        order = json.loads((entry / "columns.json").read_text())
        qa = P.few_chunks(pl.concat([qa, text], how="horizontal").select(order))
        frames = P.few_chunks(frames)
    except (OSError, ValueError, pl.exceptions.PolarsError):  # missing or damaged entry: parse again
        return None
    return P.PoolResult(qa, rejects, frames)


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
        qa.select(text).write_ipc(tmp / _TEXT_FILE, compression="uncompressed")
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
    **options: object,
) -> CachedPool:
    """`pool.read_pool(onevision, video, row_frames=True, **options)` through the cache in cache_dir.

    cache_dir None: no cache. defer_store: is handed the store, `write(qa_columns=None)`, to run
    later (e.g. on a thread while the selection runs) instead of before returning.
    """
    if cache_dir is None:
        return CachedPool(P.read_pool(onevision, video, row_frames=True, **options), "off")  # type: ignore[arg-type]
    files = P.pool_files(onevision, video)
    key = cache_key(files, options)
    entry = Path(cache_dir) / key
    if entry.is_dir():
        loaded = _load(entry)
        if loaded is not None:
            os.utime(entry)  # newest use first when old entries are dropped
            return CachedPool(loaded, "hit", key)
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
