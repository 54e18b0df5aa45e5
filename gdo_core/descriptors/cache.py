"""Per-QA descriptor cache: one small JSON file per content key, sharded by key prefix.

A QA's key hashes what its descriptors depend on (question, answer, frame paths with their
sizes and mtimes, model fingerprint, descriptor settings), so a rerun reuses every unchanged QA
wherever it now sits. Files are written to a temporary name and renamed. Entries computed in
one model batch name their batch-mates; an entry counts only when all of them were written, so a
run killed mid-write recomputes that whole batch, with the same padding, and gets the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CACHE_FORMAT = "gdo-descriptors-v1"
KEY_BYTES = 16  # blake2b digest size of a content key (32 hex characters)
SHARD_CHARS = 2  # key prefix length naming the shard folder


def content_key(payload: Any) -> str:
    """Stable hex key of a JSON-serialisable payload (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=KEY_BYTES).hexdigest()


def frame_stats(paths: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """(size, mtime_ns) of each distinct path, None when it cannot be stat'ed."""
    out: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        if path in out:
            continue
        try:
            stat = os.stat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            out[path] = None
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file beside path and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class DescriptorCache:
    """Descriptor rows by content key under one folder (`<root>/<kind>/<key[:2]>/<key>.json`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:SHARD_CHARS] / f"{key}.json"

    def _read(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT else None

    def get_rows(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Complete cached rows for the given keys (entries of a half-written batch are ignored)."""
        found: dict[str, dict[str, Any]] = {}
        present: dict[str, bool] = {}
        for key in dict.fromkeys(keys):
            entry = self._read("rows", key)
            if entry is None:
                continue
            batch = entry.get("batch", [])
            complete = True
            for mate in batch:
                if mate not in present:
                    present[mate] = self._path("rows", mate).is_file()
                complete = complete and present[mate]
            if complete:
                found[key] = entry["row"]
        return found

    def put_rows(self, rows: dict[str, dict[str, Any]], batch: Sequence[str] = ()) -> None:
        """Store rows by key; `batch` names the keys computed together (their padding is shared)."""
        for key, row in rows.items():
            entry = {"format": CACHE_FORMAT, "batch": list(batch), "row": row}
            write_text_atomic(self._path("rows", key), json.dumps(entry, sort_keys=True))

    def get_values(self, kind: str, keys: Iterable[str]) -> dict[str, Any]:
        """Cached scalar values (e.g. TNC per question) by key."""
        out = {}
        for key in dict.fromkeys(keys):
            entry = self._read(kind, key)
            if entry is not None:
                out[key] = entry["value"]
        return out

    def put_values(self, kind: str, values: dict[str, Any]) -> None:
        """Store scalar values by key."""
        for key, value in values.items():
            write_text_atomic(self._path(kind, key), json.dumps({"format": CACHE_FORMAT, "value": value}))
