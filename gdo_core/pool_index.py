"""The pool index: where every chunk of every pool file starts and ends, and what it holds.

A living pool grows, is cleaned, or loses a file. The index records, per pool file, the cheap
facts of the file (size, mtime, ctime, inode) and, per chunk (`chunk_lines` lines), its byte range
and a fingerprint of those bytes. Refreshing the index stats every file and reads only the files
whose facts changed, once and linearly (newline search and BLAKE2b, both in C); an unchanged file
is not read at all. Reading one chunk then seeks to its byte range (`read_span`), so reading a
whole pool is linear instead of re-reading each file from its start for every chunk.

Appending lines changes the last chunk's fingerprint (and adds chunks); editing a line changes
its chunk's; a shrunk file loses its last chunks; a deleted file loses all of them
(`IndexChanges`). Nothing here knows Dagster: gdo_assets turns chunks into partitions.

Stamps (`write_stamp`, `read_stamp`) record, beside each output, what it was computed from, so
`plan` can say which chunks must be parsed or described again without reading any output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gdo_core.descriptors.cache import write_text_atomic
from gdo_core.pool import (
    ParseOptions,
    PoolFile,
    PoolResult,
    _is_json_array_file,
    _open_binary,
    chunk_key,
    iter_line_chunks,
    parse_records,
    pool_files,
    read_chunk,
)

INDEX_FORMAT = "gdo-pool-index-v1"
SCAN_BLOCK = 8 << 20  # bytes read at a time while indexing a changed file
FINGERPRINT_BYTES = 16
_NEWLINE = 10


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk: lines [index*chunk_lines+1, (index+1)*chunk_lines] of its file.

    start/end: byte range in the file (the decompressed stream for .gz); -1 for .json array
    files, which cannot be read by range. fingerprint: BLAKE2b of the chunk's bytes, the file's
    kind and path, and the chunk's place (what its QA rows depend on).
    """

    key: str
    index: int
    start: int
    end: int
    fingerprint: str


@dataclass(frozen=True)
class FileIndex:
    """One pool file's cheap facts and its chunks (only chunks holding a non-blank line)."""

    path: str
    name: str
    kind: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    chunk_lines: int
    chunks: tuple[ChunkSpan, ...]

    @property
    def seekable(self) -> bool:
        """Whether chunks are read by byte range (.jsonl[.gz]; not .json arrays)."""
        return not _is_json_array_file(Path(self.path))

    def matches(self, stat: os.stat_result, kind: str, chunk_lines: int) -> bool:
        """Whether the file still has the facts it was indexed with (then it is not read again)."""
        return (
            (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.kind, self.chunk_lines)
            == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, kind, chunk_lines)
        )

    def span(self, key: str) -> ChunkSpan | None:
        """The chunk with this key, if the file still has it."""
        return next((c for c in self.chunks if c.key == key), None)


@dataclass(frozen=True)
class PoolIndex:
    """Every configured pool file's index, in configured order (image pools first)."""

    chunk_lines: int
    files: tuple[FileIndex, ...] = ()
    missing: tuple[str, ...] = ()  # configured files that do not exist (their chunks retire)

    def chunks(self) -> dict[str, ChunkSpan]:
        """Chunk key -> span, in scan order (files as configured, chunks by index)."""
        return {c.key: c for f in self.files for c in f.chunks}

    def chunk_keys(self) -> list[str]:
        """Chunk keys in scan order."""
        return [c.key for f in self.files for c in f.chunks]

    def fingerprints(self) -> dict[str, str]:
        """Chunk key -> fingerprint (the chunk's data version)."""
        return {c.key: c.fingerprint for f in self.files for c in f.chunks}

    def file_of(self, key: str) -> FileIndex | None:
        """The file that holds a chunk key."""
        return next((f for f in self.files if f.span(key) is not None), None)

    def file_named(self, name: str) -> FileIndex | None:
        """The indexed file whose pool name is `name`."""
        return next((f for f in self.files if f.name == name), None)

    @property
    def digest(self) -> str:
        """One key over every chunk's fingerprint (changes whenever any chunk does)."""
        return _content_key({"chunk_lines": self.chunk_lines, "chunks": self.fingerprints()})

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what `save_index` writes)."""
        files = []
        for f in self.files:
            entry = {k: v for k, v in asdict(f).items() if k != "chunks"}
            entry["chunks"] = [[c.index, c.start, c.end, c.fingerprint] for c in f.chunks]
            files.append(entry)
        return {"format": INDEX_FORMAT, "chunk_lines": self.chunk_lines, "files": files, "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolIndex:
        """The index from its JSON form."""
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"not a pool index of format {INDEX_FORMAT}")
        files = []
        for entry in data["files"]:
            chunks = tuple(
                ChunkSpan(chunk_key(entry["name"], i), i, start, end, fp) for i, start, end, fp in entry["chunks"]
            )
            files.append(FileIndex(**{**{k: v for k, v in entry.items() if k != "chunks"}, "chunks": chunks}))
        return cls(int(data["chunk_lines"]), tuple(files), tuple(data.get("missing", ())))


@dataclass
class IndexStats:
    """What refreshing the index read: files only stat'ed, files read, bytes read."""

    files_unchanged: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_missing: int = 0


@dataclass(frozen=True)
class IndexChanges:
    """How the chunks changed between two indexes."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        """Whether any chunk was added, changed or retired."""
        return bool(self.added or self.changed or self.retired)


def _content_key(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=FINGERPRINT_BYTES).hexdigest()


def _chunk_hasher(pool: PoolFile, chunk_lines: int, index: int) -> Any:
    hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    hasher.update(f"{pool.kind}\0{Path(pool.path).resolve()}\0{chunk_lines}\0{index}\0".encode())
    return hasher


def _scan_lines(pool: PoolFile, chunk_lines: int) -> tuple[list[ChunkSpan], int]:
    """Chunks of a .jsonl[.gz] file by one linear read: (chunks with a non-blank line, bytes read).

    Chunk i ends after newline number (i+1)*chunk_lines; its fingerprint hashes its bytes as they
    are in the file (line endings and blank lines included), so any edit inside it shows.
    """
    name = pool.pool_name
    chunks: list[ChunkSpan] = []
    newlines = 0  # newlines before the current block
    offset = 0  # bytes before the current block
    index, start = 0, 0
    hasher = _chunk_hasher(pool, chunk_lines, index)
    content = False

    def close(end: int) -> None:
        if content:
            chunks.append(ChunkSpan(chunk_key(name, index), index, start, end, hasher.hexdigest()))

    with _open_binary(Path(pool.path)) as fh:
        while block := fh.read(SCAN_BLOCK):
            view = memoryview(block)
            positions = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE)
            first = chunk_lines - (newlines % chunk_lines) - 1  # the newline that ends this chunk
            at = 0
            for cut in (positions[first::chunk_lines] + 1).tolist():
                piece = view[at:cut]
                hasher.update(piece)
                content = content or (cut > at and not block[at:cut].isspace())
                close(offset + cut)
                index, start = index + 1, offset + cut
                hasher, content = _chunk_hasher(pool, chunk_lines, index), False
                at = cut
            hasher.update(view[at:])
            content = content or (len(block) > at and not block[at:].isspace())
            newlines += positions.size
            offset += len(block)
    close(offset)
    return chunks, offset


def _scan_records(pool: PoolFile, chunk_lines: int) -> tuple[list[ChunkSpan], int]:
    """Chunks of a .json array file (read whole: its records are re-encoded elements)."""
    chunks = []
    for index, records in iter_line_chunks(Path(pool.path), chunk_lines):
        hasher = _chunk_hasher(pool, chunk_lines, index)
        for number, raw in records:
            hasher.update(f"{number}:".encode() + raw + b"\n")
        chunks.append(ChunkSpan(chunk_key(pool.pool_name, index), index, -1, -1, hasher.hexdigest()))
    return chunks, Path(pool.path).stat().st_size


def index_file(
    pool: PoolFile, chunk_lines: int, previous: FileIndex | None = None, *, rehash: bool = False
) -> tuple[FileIndex, bool, int]:
    """(index of one existing pool file, whether it was read, bytes read).

    Unless `rehash`, a file whose size, mtime, ctime and inode match `previous` is not read.
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    path = Path(pool.path).resolve()
    stat = path.stat()
    if (
        not rehash
        and previous is not None
        and previous.path == str(path)
        and previous.matches(stat, pool.kind, chunk_lines)
    ):
        return previous, False, 0
    scan = _scan_records if _is_json_array_file(path) else _scan_lines
    chunks, read = scan(PoolFile(path, pool.kind), chunk_lines)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        # Written to while being read: index it again rather than record a torn state.
        return index_file(pool, chunk_lines, None, rehash=True)
    entry = FileIndex(
        str(path), pool.pool_name, pool.kind, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
        stat.st_ino, chunk_lines, tuple(chunks),
    )
    return entry, True, read


def configured_files(
    onevision: Sequence[str | Path] | str | Path | None, video: Sequence[str | Path] | str | Path | None
) -> tuple[list[PoolFile], list[str]]:
    """(configured pool files that exist, paths of those that do not), image pools first.

    Two files with the same pool name are still an error (`pool.pool_files`).
    """
    def listed(value: Any) -> list[Path]:
        if value is None:
            return []
        return [Path(value)] if isinstance(value, (str, Path)) else [Path(p) for p in value]

    present = {"onevision": [p for p in listed(onevision) if p.is_file()], "video": [p for p in listed(video) if p.is_file()]}
    missing = [str(p) for p in listed(onevision) + listed(video) if not p.is_file()]
    return pool_files(present["onevision"], present["video"]), missing


def index_pool(
    files: Sequence[PoolFile],
    chunk_lines: int,
    previous: PoolIndex | None = None,
    *,
    missing: Sequence[str] = (),
    rehash: bool = False,
) -> tuple[PoolIndex, IndexStats]:
    """The index of the given (existing) files; files unchanged since `previous` are not read."""
    stats = IndexStats(files_missing=len(missing))
    known = {f.path: f for f in previous.files} if previous is not None and previous.chunk_lines == chunk_lines else {}
    entries = []
    for pool in files:
        entry, was_read, read = index_file(
            pool, chunk_lines, known.get(str(Path(pool.path).resolve())), rehash=rehash
        )
        entries.append(entry)
        stats.files_read += was_read
        stats.files_unchanged += not was_read
        stats.bytes_read += read
    return PoolIndex(chunk_lines, tuple(entries), tuple(missing)), stats


def diff_indexes(old: PoolIndex | Mapping[str, str] | None, new: PoolIndex) -> IndexChanges:
    """Chunks added, changed (other fingerprint), retired and unchanged from `old` to `new`.

    `old` may be an index or a mapping of chunk key -> fingerprint (None: nothing known).
    """
    before = old.fingerprints() if isinstance(old, PoolIndex) else dict(old or {})
    after = new.fingerprints()
    return IndexChanges(
        added=tuple(k for k in after if k not in before),
        changed=tuple(k for k in after if k in before and before[k] != after[k]),
        retired=tuple(sorted(k for k in before if k not in after)),
        unchanged=tuple(k for k in after if before.get(k) == after[k]),
    )


def load_index(path: Path) -> PoolIndex | None:
    """The index saved at `path` (None when there is none or it cannot be read)."""
    try:
        return PoolIndex.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_index(index: PoolIndex, path: Path) -> None:
    """Write the index (to a temporary name, then renamed into place)."""
    write_text_atomic(Path(path), json.dumps(index.to_dict(), separators=(",", ":")))


# ---- reading one chunk --------------------------------------------------------------------


def span_records(path: Path, span: ChunkSpan, chunk_lines: int) -> list[tuple[int, bytes]]:
    """The (line number, raw line) records of one chunk, read from its byte range.

    The same records `pool.iter_line_chunks` gives for the chunk (raw lines keep their newline;
    blank lines are skipped but counted).
    """
    with _open_binary(Path(path)) as fh:
        fh.seek(span.start)
        data = fh.read(span.end - span.start)
    parts = data.split(b"\n")
    first = span.index * chunk_lines + 1
    records = []
    for i, part in enumerate(parts):
        raw = part + b"\n" if i < len(parts) - 1 else part
        if raw.strip():
            records.append((first + i, raw))
    return records


def read_span(
    pool: PoolFile, entry: FileIndex, index: int, options: ParseOptions | None = None
) -> tuple[PoolResult, str]:
    """(parsed chunk `index` of a pool file, how it was read): by its byte range while the file
    still has the facts it was indexed with ("range"), else by counting lines from the file's
    start ("scan": a file changed since it was indexed, or a .json array file)."""
    options = options or ParseOptions()
    path = Path(pool.path)
    span = next((c for c in entry.chunks if c.index == index), None)
    if span is not None and entry.seekable and entry.matches(path.stat(), pool.kind, entry.chunk_lines):
        return parse_records(span_records(path, span, entry.chunk_lines), pool, options), "range"
    return read_chunk(pool, index, entry.chunk_lines, options), "scan"


# ---- stamps: what an output was computed from ---------------------------------------------


STAMP_SUFFIX = ".stamp.json"


def stamp_path(output: Path) -> Path:
    """Where the stamp of an output file lives (beside it)."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".parquet") + STAMP_SUFFIX)


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes (outputs are small Parquet files)."""
    digest = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_stamp(output: Path, **fields: Any) -> Path:
    """Record what `output` was computed from (written after the output, so a crash between
    the two leaves an output without a current stamp: it is redone, never trusted)."""
    path = stamp_path(output)
    write_text_atomic(path, json.dumps(fields, sort_keys=True))
    return path


def read_stamp(output: Path) -> dict[str, Any] | None:
    """The stamp of an output, or None when the output or its stamp is missing."""
    if not Path(output).is_file():
        return None
    try:
        value = json.loads(stamp_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def drop_stamp(output: Path) -> None:
    """Remove an output's stamp (before the output is rewritten)."""
    stamp_path(output).unlink(missing_ok=True)


def content_key(payload: Any) -> str:
    """Stable key of a JSON-serialisable payload (settings, input lists)."""
    return _content_key(payload)


# ---- what is stale ------------------------------------------------------------------------


@dataclass
class ChunkPlan:
    """Which chunks must be parsed and described again, and why (key -> reason)."""

    parse: dict[str, str] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        """Whether any chunk needs work."""
        return bool(self.parse or self.describe)


def plan_chunks(
    index: PoolIndex,
    qa_dir: Path,
    shards_dir: Path,
    *,
    parse_version: str,
    descriptor_version: str | None,
) -> ChunkPlan:
    """Chunks whose QA rows are missing or stale (other content or parse settings), and chunks
    whose descriptor shard is missing or stale (other QA rows or descriptor settings).

    A chunk to be parsed is also to be described ("its QAs may change"): after the parse, plan
    again, and only the chunks whose QA rows really changed remain. `descriptor_version` None:
    descriptors are not planned.
    """
    plan = ChunkPlan()
    for key, span in index.chunks().items():
        qa_file = Path(qa_dir) / f"{key}.parquet"
        qa = read_stamp(qa_file)
        if qa is None:
            plan.parse[key] = "missing"
        elif qa.get("chunk") != span.fingerprint:
            plan.parse[key] = "content changed"
        elif qa.get("parse") != parse_version:
            plan.parse[key] = "parse settings changed"
        if descriptor_version is not None:
            shard = read_stamp(Path(shards_dir) / f"{key}.parquet")
            if key in plan.parse:
                plan.describe[key] = "missing" if shard is None else "its QAs may change"
            elif shard is None:
                plan.describe[key] = "missing"
            elif shard.get("qa") != qa.get("qa"):
                plan.describe[key] = "its QAs changed"
            elif shard.get("code_version") != descriptor_version:
                plan.describe[key] = "descriptor settings changed"
        if key not in plan.parse and key not in plan.describe:
            plan.current.append(key)
    return plan


def inputs_digest(index: PoolIndex, qa_dir: Path, shards_dir: Path) -> str:
    """One key over what the merge reads: every live chunk's QA and shard as their stamps name
    them (a chunk without a stamp counts by its file's size and mtime)."""
    items = []
    for key in index.chunk_keys():
        entry = [key]
        for folder, field_name in ((qa_dir, "qa"), (shards_dir, "shard")):
            path = Path(folder) / f"{key}.parquet"
            stamp = read_stamp(path)
            if stamp is not None and field_name in stamp:
                entry.append(stamp[field_name])
            elif path.is_file():
                stat = path.stat()
                entry.append([stat.st_size, stat.st_mtime_ns])
            else:
                entry.append(None)
        items.append(entry)
    return _content_key(items)


def chunk_outputs(folders: Iterable[Path], keys: Iterable[str]) -> list[Path]:
    """The existing output files (Parquet and stamps) of the given chunk keys in the folders."""
    out = []
    for folder in folders:
        for key in keys:
            for path in (Path(folder) / f"{key}.parquet", stamp_path(Path(folder) / f"{key}.parquet")):
                if path.exists():
                    out.append(path)
    return out


def orphan_keys(index: PoolIndex, folders: Iterable[Path]) -> list[str]:
    """Chunk keys that have output files in the folders but are no longer in the pool."""
    live = set(index.chunk_keys())
    found = set()
    for folder in folders:
        if Path(folder).is_dir():
            for path in Path(folder).glob("*.parquet"):
                if path.stem not in live:
                    found.add(path.stem)
    return sorted(found)
