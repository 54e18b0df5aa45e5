"""The metrics input of `gdo build`: gdo's DuckDB file (table `descriptors`), a Parquet file or
merged-metrics JSONL(.gz) read into one table, and its prepared metric terms kept in the cache
folder beside the parsed pools (docs/method.md, Budget).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gdo_core import pool as P
from gdo_core.candidate_score import METRIC_COLUMNS
from gdo_core.metric_terms import PreparedMetrics, prepare_metrics
from gdo_core.modes import Mode
from gdo_core.pool_cache import entry_key, keep_newest, writing_entry
from gdo_core.strata import WS_RUN_PATTERN

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is installed with polars' extras here
    orjson = None  # type: ignore[assignment]

# Published metrics files name the shared score quality_score; gdo's descriptors table says quality.
METRIC_ALIASES = {"quality_score": "quality"}
DUCKDB_TABLE = "descriptors"
BAD_EXAMPLES_KEPT = 5


class MetricsError(ValueError):
    """A metrics file that cannot be used (the message names file, line and key)."""


@dataclass
class MetricsTable:
    """Metrics rows in file order (duplicates kept: the published stats count every row)."""

    # qa_uid + METRIC_COLUMNS (Float64, null = missing); None once dropped (`prepared_only`)
    rows: pl.DataFrame | None
    path: str
    format: str
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    # `with_prepared`: the pool-free part of the metric terms
    prepared: PreparedMetrics | None = None

    @property
    def row_count(self) -> int:
        """Rows of the metrics file that were read (bad rows not counted)."""
        if self.rows is not None:
            return self.rows.height
        assert self.prepared is not None  # `prepared_only` keeps the rows of an unprepared table
        return self.prepared.rows

    def with_prepared(self, mode: Mode) -> MetricsTable:
        """The table with its metric terms prepared for a selection mode (`metric_terms.prepare_metrics`)."""
        if self.prepared is None or self.prepared.mode != mode:
            self.prepared = prepare_metrics(self._rows(), mode) if self.row_count else None
        return self

    def prepared_only(self) -> MetricsTable:
        """The table without its rows once its terms are prepared (all a build's selection reads)."""
        if self.prepared is not None:
            self.rows = None
        return self

    def for_selection(self, mode: Mode) -> pl.DataFrame | PreparedMetrics:
        """What `select_subsets` takes: the prepared terms when they fit the mode, else the rows."""
        if self.prepared is not None and self.prepared.mode == mode:
            return self.prepared
        return self._rows()

    def _rows(self) -> pl.DataFrame:
        if self.rows is None:
            mode = self.prepared.mode if self.prepared is not None else None
            raise ValueError(f"{self.path}: only the terms prepared for mode {mode!r} were kept")
        return self.rows

    def info(self) -> dict[str, Any]:
        """What the report says about the metrics input."""
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.row_count,
            "bad_rows": self.bad_rows,
            "bad_examples": self.bad_examples,
        }


_METRIC_SCHEMA = {"qa_uid": pl.String(), **{c: pl.Float64() for c in METRIC_COLUMNS}}


def _file_kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    return "jsonl"


def _normalise_columns(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    frame = frame.rename(
        {k: v for k, v in METRIC_ALIASES.items() if k in frame.columns and v not in frame.columns}
    )
    if "qa_uid" not in frame.columns:
        raise MetricsError(f"{where}: missing key 'qa_uid' (columns: {', '.join(frame.columns)})")
    present = [c for c in METRIC_COLUMNS if c in frame.columns]
    if not present:
        raise MetricsError(
            f"{where}: none of the metric keys {', '.join(METRIC_COLUMNS)} (or quality_score) is present"
        )
    out = []
    for col in METRIC_COLUMNS:
        if col not in frame.columns:
            out.append(pl.lit(None, dtype=pl.Float64).alias(col))
            continue
        dtype = frame.schema[col]
        if not (dtype.is_numeric() or dtype == pl.Null):
            raise MetricsError(f"{where}: key {col!r} must be numeric, got column type {dtype}")
        value = pl.col(col).cast(pl.Float64)
        out.append(pl.when(value.is_finite()).then(value).otherwise(None).alias(col))
    uid = pl.col("qa_uid").cast(pl.String).str.replace_all(WS_RUN_PATTERN, " ").str.strip_chars()
    return frame.select(uid, *out)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _read_metrics_jsonl_rows(raw: bytes, where: str, strict: bool) -> MetricsTable:
    """Line-by-line reader: nested `data_quality_metrics` allowed; strict raises, lenient counts bad rows."""
    loads = orjson.loads if orjson is not None else json.loads
    cols: dict[str, list[Any]] = {name: [] for name in _METRIC_SCHEMA}
    bad, examples = 0, []

    def fail(line: int, message: str) -> None:
        nonlocal bad
        if strict:
            raise MetricsError(f"{where}:{line}: {message}")
        bad += 1
        if len(examples) < BAD_EXAMPLES_KEPT:
            examples.append(f"line {line}: {message}")

    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = loads(line)
        except ValueError as exc:
            try:  # json also takes NaN / Infinity tokens, as the published reader did
                item = json.loads(line)
            except ValueError:
                fail(number, f"not valid JSON ({exc})")
                continue
        if not isinstance(item, dict):
            fail(number, "expected a JSON object")
            continue
        uid = item.get("qa_uid", item.get("id", ""))
        uid = " ".join(str(uid).split()) if uid is not None else ""
        if not uid:
            fail(number, "missing key 'qa_uid'")
            continue
        nested = item.get("data_quality_metrics")
        source = nested if isinstance(nested, dict) else item
        cols["qa_uid"].append(uid)
        for col in METRIC_COLUMNS:
            keys = [col] + [alias for alias, target in METRIC_ALIASES.items() if target == col]
            value = None
            for key in keys:
                value = source.get(key, item.get(key))
                if value is not None:
                    break
            number_value = _as_float(value)
            if (
                number_value is None
                and value is not None
                and strict
                and not isinstance(value, float)
            ):
                raise MetricsError(
                    f"{where}:{number}: key {keys[-1]!r} must be a number, got {value!r}"
                )
            cols[col].append(number_value)
    table = pl.DataFrame(cols, schema=_METRIC_SCHEMA)
    return MetricsTable(table, where, "jsonl", bad, examples)


def load_metrics(path: Path | str, *, strict: bool = True) -> MetricsTable:
    """Metrics from gdo's DuckDB file (table `descriptors`), a Parquet file, or merged-metrics JSONL(.gz).

    strict: bad rows raise an error naming file, line and key; otherwise they are skipped and counted
    (the published reader's behaviour, used in compat mode).
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise MetricsError(f"{where}: metrics file not found")
    kind = _file_kind(path)
    if kind == "parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several error types for corrupt files
            raise MetricsError(f"{where}: unreadable Parquet file ({exc})") from exc
        return MetricsTable(P.few_chunks(_normalise_columns(frame, where)), where, "parquet")
    if kind == "duckdb":
        import duckdb

        try:
            con = duckdb.connect(str(path), read_only=True)
        except Exception as exc:  # duckdb.IOException and friends
            raise MetricsError(f"{where}: cannot open DuckDB file ({exc})") from exc
        try:
            tables = {
                r[0]
                for r in con.execute("select table_name from information_schema.tables").fetchall()
            }
            if DUCKDB_TABLE not in tables:
                raise MetricsError(
                    f"{where}: no table {DUCKDB_TABLE!r} (tables: {', '.join(sorted(tables)) or 'none'})"
                )
            columns = [
                r[0]
                for r in con.execute(
                    "select column_name from information_schema.columns where table_name = ? order by ordinal_position",
                    [DUCKDB_TABLE],
                ).fetchall()
            ]
            wanted = [
                c for c in columns if c == "qa_uid" or c in METRIC_COLUMNS or c in METRIC_ALIASES
            ]
            frame = con.sql(f"select {', '.join(wanted) or '*'} from {DUCKDB_TABLE}").pl()
        finally:
            con.close()
        return MetricsTable(
            P.few_chunks(_normalise_columns(frame, f"{where} [{DUCKDB_TABLE}]")), where, "duckdb"
        )
    raw = gzip.decompress(path.read_bytes()) if kind == "jsonl.gz" else None
    try:  # fast path: flat, well-formed rows (plain files are read by polars without a copy here)
        frame = pl.read_ndjson(io.BytesIO(raw) if raw is not None else path)
        if "data_quality_metrics" not in frame.columns and frame.height == _line_count(raw, path):
            frame = _normalise_columns(frame, where)
            if (
                frame["qa_uid"].null_count() == 0
                and not (frame["qa_uid"].str.strip_chars() == "").any()
            ):
                return MetricsTable(P.few_chunks(frame), where, "jsonl")
    except (pl.exceptions.PolarsError, MetricsError, ValueError):
        pass
    return _read_metrics_jsonl_rows(raw if raw is not None else path.read_bytes(), where, strict)


METRICS_ENTRY_PREFIX = "metrics-"  # entries beside the parsed pools in the cache folder
# The modules whose code decides what a metrics entry holds (reading, z-statistics, z-terms).
_METRICS_MODULES = ("metrics_file.py", "metric_terms.py", "candidate_score.py")


def _metrics_key(path: Path, strict: bool, mode: Mode) -> str:
    """Hex key of a prepared metrics file: the file (path, size, mtime), the options and the code."""
    return entry_key([("metrics", path)], {"strict": strict, "mode": mode}, _METRICS_MODULES)


def _store_metrics(entry: Path, table: MetricsTable) -> None:
    """Write a metrics entry under a temporary name, rename it into place, keep the newest ones."""
    with writing_entry(entry) as tmp:
        prepared = table.prepared
        if prepared is None:  # (no rows, or not prepared): the rows themselves
            table._rows().write_parquet(tmp / "rows.parquet", compression="lz4", statistics=False)
        info: dict[str, Any] = {
            "format": table.format,
            "bad_rows": table.bad_rows,
            "bad_examples": table.bad_examples,
            "prepared": None,
        }
        if prepared is not None:
            prepared.uids.write_parquet(tmp / "uids.parquet", compression="lz4", statistics=False)
            np.save(tmp / "vds3.npy", prepared.vds3)
            np.save(tmp / "quality.npy", prepared.quality)
            stats = {k: list(v) for k, v in prepared.stats.items()}  # floats round-trip exactly
            info["prepared"] = {"mode": prepared.mode, "rows": prepared.rows, "stats": stats}
        (tmp / "info.json").write_text(json.dumps(info))
    keep_newest(p for p in entry.parent.glob(f"{METRICS_ENTRY_PREFIX}*") if p.is_dir())


def _load_metrics_entry(entry: Path, where: str) -> MetricsTable | None:
    """A stored metrics entry (None if missing or damaged): prepared terms only, or else the rows."""
    try:
        info = json.loads((entry / "info.json").read_text())
        table = MetricsTable(
            None if info["prepared"] is not None else pl.read_parquet(entry / "rows.parquet"),
            where,
            info["format"],
            info["bad_rows"],
            info["bad_examples"],
        )
        if info["prepared"] is not None:
            p = info["prepared"]
            table.prepared = PreparedMetrics(
                p["mode"],
                p["rows"],
                pl.read_parquet(entry / "uids.parquet"),
                {k: (float(m), float(s)) for k, (m, s) in p["stats"].items()},
                np.load(entry / "vds3.npy"),
                np.load(entry / "quality.npy"),
            )
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None
    return table


def cached_metrics(
    path: Path | str, *, strict: bool, mode: Mode, cache_dir: Path | None
) -> tuple[MetricsTable, str]:
    """(`load_metrics(path).with_prepared(mode).prepared_only()`, cache status) through the cache
    in cache_dir.

    A build on an unchanged metrics file reads the prepared z-terms back from Parquet and NumPy
    files instead of parsing the file and computing the statistics again. Status is "hit", "miss"
    (loaded and stored) or "off" (no cache_dir). The rows themselves are kept only when there is
    nothing prepared (an empty file): a million rows hold about 70 MB that no selection reads.
    """
    path = Path(path)
    if cache_dir is None or not path.is_file():  # a missing file: load_metrics says so
        return load_metrics(path, strict=strict).with_prepared(mode).prepared_only(), "off"
    key = _metrics_key(path, strict, mode)
    entry = Path(cache_dir) / f"{METRICS_ENTRY_PREFIX}{key}"
    if entry.is_dir():
        loaded = _load_metrics_entry(entry, str(path))
        if loaded is not None:
            os.utime(entry)  # newest use first when old entries are dropped
            return loaded, "hit"
    table = load_metrics(path, strict=strict).with_prepared(mode).prepared_only()
    if _metrics_key(path, strict, mode) != key:
        return table, "off"  # the file changed while it was read: do not store
    # A full cache must not fail the build.
    with contextlib.suppress(OSError, pl.exceptions.PolarsError):
        _store_metrics(entry, table)
    return table, "miss"


def _line_count(raw: bytes | None, path: Path) -> int:
    """Lines of a file (a last line without a newline counts), from its bytes or memory-mapped."""
    if raw is None:
        if path.stat().st_size == 0:
            return 0
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = np.frombuffer(data, dtype=np.uint8)
            block = 16 * 2**20  # bounds the comparison's temporary array
            count = sum(
                int(np.count_nonzero(view[i : i + block] == ord("\n")))
                for i in range(0, view.size, block)
            )
            ends_open = view[-1] != ord("\n")
            del view  # the mmap cannot close while numpy holds its buffer
        return count + int(ends_open)
    return raw.count(b"\n") + (0 if not raw or raw.endswith(b"\n") else 1)
