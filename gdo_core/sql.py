"""Read-only SQL over the gdo DuckDB file, views over Parquet outputs, and the README's example queries.

Only one process writes the database (the merge, gdo_core.merge.merge_to_duckdb), and a
read-only connection cannot create persistent views. So views over Parquet outputs are either
created by that writer (`merge_to_duckdb(..., views=...)`) or, for outputs written after the
merge, created per session as TEMP views on the read-only connection (`run_sql(..., views=...)`).

A query session is read-only in the wider sense too (`read_only_connection`): DuckDB itself is
told to touch no file outside the data folder (`enable_external_access` off, `allowed_directories`
the data folder and the folders of the views, `lock_configuration` on so no query can undo it),
and statements that write files or reach other databases or extensions (COPY, ATTACH, DETACH,
INSTALL, LOAD, EXPORT DATABASE), as DuckDB's own parser classifies them, are refused before anything
runs. Every refusal is one line naming what was refused.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from gdo_core.schema import SCORE_SCHEMA, SUBSET_MEMBER_SCHEMA

FORMATS: tuple[str, ...] = ("table", "csv", "json")
# Digits shown for floats in the table format.
TABLE_FLOAT_DIGITS = 6
# Where subset members live, relative to the data folder that holds the DuckDB file.
SUBSET_MEMBERS_GLOB = ("subsets", "*", "subset_members.parquet")
# Where benchmark scores live: one Parquet file per (profile, arm) partition of benchmark_scores.
SCORES_GLOB = ("scores", "*.parquet")
# Views over Parquet written after the merge, relative to the data folder that holds the DuckDB file.
LATE_VIEWS: dict[str, tuple[str, ...]] = {"subset_members": SUBSET_MEMBERS_GLOB, "scores": SCORES_GLOB}

# Views over Parquet outputs that have a declared schema (an empty view is typed from it).
VIEW_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "subset_members": SUBSET_MEMBER_SCHEMA,
    "scores": SCORE_SCHEMA,
}


def late_views(db_path: str | os.PathLike) -> dict[str, str]:
    """The views over outputs written after the merge (subset members, scores), as globs beside the database."""
    folder = Path(db_path).resolve().parent
    return {name: str(folder.joinpath(*parts)) for name, parts in LATE_VIEWS.items()}


class SqlError(ValueError):
    """A query that could not run: a one-line message, no traceback needed."""


def sql_string(value: str | os.PathLike) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_list(paths: Sequence[str | os.PathLike]) -> str:
    """A SQL list literal of paths, for read_parquet."""
    return "[" + ", ".join(sql_string(p) for p in paths) + "]"


def duckdb_type(dtype: pl.DataType) -> str:
    """The DuckDB column type of a polars dtype used in gdo_core.schema."""
    simple = {
        pl.String: "VARCHAR",
        pl.Int8: "TINYINT",
        pl.Int16: "SMALLINT",
        pl.Int32: "INTEGER",
        pl.Int64: "BIGINT",
        pl.UInt32: "UINTEGER",
        pl.UInt64: "UBIGINT",
        pl.Float32: "FLOAT",
        pl.Float64: "DOUBLE",
        pl.Boolean: "BOOLEAN",
        pl.Date: "DATE",
        pl.Datetime: "TIMESTAMP",
    }
    for base, name in simple.items():
        if dtype == base:
            return name
    if isinstance(dtype, pl.Array):
        return f"{duckdb_type(dtype.inner)}[{dtype.size}]"
    if isinstance(dtype, pl.List):
        return f"{duckdb_type(dtype.inner)}[]"
    if isinstance(dtype, pl.Struct):
        fields = ", ".join(f"{sql_identifier(f.name)} {duckdb_type(f.dtype)}" for f in dtype.fields)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB type for polars dtype {dtype}")


def create_table_sql(table: str, schema: Mapping[str, pl.DataType]) -> str:
    """CREATE TABLE with the columns of a gdo schema."""
    columns = ", ".join(
        f"{sql_identifier(name)} {duckdb_type(dtype)}" for name, dtype in schema.items()
    )
    return f"CREATE TABLE {sql_identifier(table)} ({columns})"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _matching_patterns(paths: Sequence[str | os.PathLike] | str) -> list[str]:
    """The files and globs among `paths` that match at least one file now, sorted.

    Globs are kept as globs, so a view over them also reads files written after it was created.
    """
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    kept: set[str] = set()
    for pattern in patterns:
        text = str(pattern)
        if _is_glob(text):
            root = Path(text).anchor or "."
            relative = text[len(root) :] if Path(text).is_absolute() else text
            if any(p.is_file() for p in Path(root).glob(relative)):
                kept.add(text)
        elif Path(text).is_file():
            kept.add(text)
    return sorted(kept)


def parquet_view_sql(
    name: str,
    paths: Sequence[str | os.PathLike] | str,
    *,
    schema: Mapping[str, pl.DataType] | None = None,
    temporary: bool = False,
) -> str:
    """CREATE OR REPLACE [TEMP] VIEW over Parquet files or globs; with no match, an empty view typed by `schema`."""
    files = _matching_patterns(paths)
    schema = schema if schema is not None else VIEW_SCHEMAS.get(name)
    kind = "TEMP VIEW" if temporary else "VIEW"
    if files:
        body = f"SELECT * FROM read_parquet({sql_list(files)}, union_by_name = true)"
    elif schema is not None:
        columns = ", ".join(
            f"CAST(NULL AS {duckdb_type(t)}) AS {sql_identifier(c)}" for c, t in schema.items()
        )
        body = f"SELECT {columns} WHERE false"
    else:
        raise SqlError(
            f"view {name}: no Parquet files match {paths} and no schema is declared for an empty view"
        )
    return f"CREATE OR REPLACE {kind} {sql_identifier(name)} AS {body}"


def create_parquet_views(
    con: duckdb.DuckDBPyConnection,
    views: Mapping[str, Sequence[str | os.PathLike] | str],
    *,
    temporary: bool = False,
) -> None:
    """Create one view per name over its Parquet files (TEMP on a read-only connection)."""
    for name, paths in views.items():
        con.execute(parquet_view_sql(name, paths, temporary=temporary))


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message."""
    return next(
        (line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__
    )


def _cell(value: object) -> str:
    """A value as text for table and CSV output (NULL as empty for CSV is handled by the caller)."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return format(value, f".{TABLE_FLOAT_DIGITS}g")
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(_jsonable(value))
    return str(value)


def _jsonable(value: object) -> object:
    """A value with non-finite floats as None and unknown types as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def format_frame(frame: pl.DataFrame, fmt: str = "table") -> str:
    """A query result as an aligned text table, CSV or a JSON array of row objects."""
    if fmt == "json":
        return json.dumps([_jsonable(row) for row in frame.to_dicts()], ensure_ascii=False)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(frame.columns)
        for row in frame.iter_rows():
            writer.writerow(["" if v is None else _cell(v) for v in row])
        return out.getvalue()
    if fmt != "table":
        raise SqlError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    cells = [[_cell(v) for v in row] for row in frame.iter_rows()]
    widths = [
        max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(frame.columns)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    rows = [line(frame.columns), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    rows.append(f"({frame.height} row{'s' if frame.height != 1 else ''})")
    return "\n".join(rows) + "\n"


# Statement kinds a query session refuses, as DuckDB's parser classifies them: they write files
# (COPY ... TO, EXPORT DATABASE), reach other databases (ATTACH, DETACH) or fetch and load code
# (INSTALL, LOAD). File reads outside the allowed folders are refused by DuckDB itself.
REFUSED_STATEMENTS: dict[duckdb.StatementType, str] = {
    duckdb.StatementType.COPY: "COPY",
    duckdb.StatementType.ATTACH: "ATTACH",
    duckdb.StatementType.DETACH: "DETACH",
    duckdb.StatementType.LOAD: "LOAD",
    duckdb.StatementType.EXPORT: "EXPORT DATABASE",
}
# Catalog names DuckDB reserves; a database file with such a stem is attached under this one.
_RESERVED_CATALOGS = frozenset({"memory", "temp", "system", "main"})
FALLBACK_CATALOG = "gdo"
READ_SCOPE = "gdo sql reads only files under the data folder"
_NO_ACCESS = re.compile(r'Cannot access (?:file|directory) "(?P<path>[^"]*)"')
_LOCKED = re.compile(r'configuration option "(?P<name>[^"]+)"')
_NO_TABLE = re.compile(r"Table with name (?P<name>.+?) does not exist")


def _refused(what: str, why: str) -> SqlError:
    return SqlError(f"refused: {what} ({why})")


def _statement_name(statement: duckdb.Statement) -> str:
    """What a refused statement is called: its kind, with INSTALL told apart from LOAD."""
    name = REFUSED_STATEMENTS[statement.type]
    if statement.type == duckdb.StatementType.LOAD:
        head = statement.query.split(None, 2)[:2]
        if "INSTALL" in (word.upper() for word in head):
            return "INSTALL"
    if statement.type == duckdb.StatementType.COPY and re.search(r"(?i)\bTO\b", statement.query):
        return "COPY ... TO"
    return name


def check_statements(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse the whole query if any statement is of a refused kind (DuckDB's parser decides)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"query failed: {_first_line(exc)}") from None
    for statement in statements:
        try:
            kind = statement.type
        except ValueError:
            # A statement kind this duckdb module has no name for (e.g. UPDATE EXTENSIONS).
            first = " ".join(statement.query.split()[:2]).upper() or "an unknown statement"
            raise _refused(first, "gdo sql runs only statements it knows") from None
        if kind in REFUSED_STATEMENTS:
            raise _refused(
                _statement_name(statement),
                "gdo sql is read-only: COPY, ATTACH, DETACH, INSTALL, LOAD and EXPORT DATABASE"
                " are not allowed",
            )


def _view_folder(pattern: str | os.PathLike) -> Path:
    """The folder a view's file or glob lives in (the part of the path before any wildcard)."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not _is_glob(part), parts))
    if len(fixed) == len(parts):
        fixed = fixed[:-1]  # a file: its folder
    return Path(*fixed) if fixed else Path.cwd()


def allowed_folders(
    db_path: str | os.PathLike,
    views: Mapping[str, Sequence[str | os.PathLike] | str] | None = None,
) -> list[Path]:
    """The folders a query session may read: the database's folder and each view's folder."""
    given = [Path(db_path).parent]
    for paths in (views or {}).values():
        patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        given.extend(_view_folder(p) for p in patterns)
    # Each folder both as written (made absolute) and with symlinks resolved: DuckDB checks the
    # path a query names, which may go through a link.
    return sorted({f.absolute() for f in given} | {f.resolve() for f in given})


def read_only_connection(
    db_path: str | os.PathLike,
    *,
    views: Mapping[str, Sequence[str | os.PathLike] | str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A private read-only DuckDB session on the database that reads no file outside its folders.

    The database is attached READ_ONLY (under its file stem, as `duckdb -readonly FILE` names it)
    to a private in-memory instance, so the locked configuration below never reaches another
    connection of this process to the same file. Then DuckDB's own guards go on: external access
    off except for `allowed_folders` (the data folder and the views' folders), and the
    configuration locked so that no query can turn them off again. TEMP views over `views` are
    created on it.
    """
    given = Path(db_path)
    path = given.resolve()
    catalog = path.stem if path.stem.lower() not in _RESERVED_CATALOGS else FALLBACK_CATALOG
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_string(path)} AS {sql_identifier(catalog)} (READ_ONLY)")
        con.execute(f"USE {sql_identifier(catalog)}")
        # Spill beside the database, as a read-only file connection would (inside the allowed folder).
        con.execute(f"SET temp_directory = {sql_string(str(path) + '.tmp')}")
        con.execute("SET allowed_directories = ?", [[str(f) for f in allowed_folders(given, views)]])
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET lock_configuration = true")
        if views:
            create_parquet_views(con, views, temporary=True)
    except BaseException:
        con.close()
        raise
    return con


def _query_error(exc: duckdb.Error) -> SqlError:
    """A failed query as one line; reads outside the allowed folders are reported as refused."""
    message = _first_line(exc)
    if isinstance(exc, duckdb.PermissionException):
        hit = _NO_ACCESS.search(message)
        what = f"reading {hit['path']}" if hit else message
        return _refused(what, READ_SCOPE)
    if "the configuration has been locked" in message:
        hit = _LOCKED.search(message)
        what = f"changing {hit['name']}" if hit else "changing a setting"
        return _refused(what, "the session's settings are locked")
    if isinstance(exc, duckdb.CatalogException):
        # With external access off, DuckDB does not turn a quoted file path into a table scan.
        hit = _NO_TABLE.search(message)
        if hit and ("/" in hit["name"] or os.sep in hit["name"]) and os.path.exists(hit["name"]):
            return _refused(f"reading {hit['name']}", READ_SCOPE)
    return SqlError(f"query failed: {message}")


def query_frame(
    query: str,
    db_path: str | os.PathLike,
    *,
    views: Mapping[str, Sequence[str | os.PathLike] | str] | None = None,
) -> pl.DataFrame:
    """Run a query on a read-only session (`read_only_connection`); the result as polars."""
    path = Path(db_path)
    if not path.is_file():
        raise SqlError(
            f"{path}: database not found (run `gdo merge` or materialize the descriptors asset first)"
        )
    try:
        con = read_only_connection(path, views=views)
    except duckdb.Error as exc:
        raise SqlError(f"{path}: cannot open read-only: {_first_line(exc)}") from None
    try:
        check_statements(con, query)
        relation = con.sql(query)
        return relation.pl() if relation is not None else pl.DataFrame()
    except duckdb.Error as exc:
        raise _query_error(exc) from None
    finally:
        con.close()


def run_sql(
    query: str,
    db_path: str | os.PathLike,
    fmt: str = "table",
    *,
    views: Mapping[str, Sequence[str | os.PathLike] | str] | None = None,
) -> str:
    """Run a query read-only on the gdo database and format it as table, csv or json."""
    if fmt not in FORMATS:
        raise SqlError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return format_frame(query_frame(query, db_path, views=views), fmt)


@dataclass(frozen=True)
class ExampleQuery:
    """A query the README shows, with what it answers."""

    title: str
    sql: str


# The README's example queries, run by tests/test_sql.py on a small merged database.
README_QUERIES: tuple[ExampleQuery, ...] = (
    ExampleQuery(
        "Top 20 video QAs by visual dependency (VDS)",
        """SELECT q.qa_uid, q.source_group, d.vds, d.quality, q.question
FROM descriptors d JOIN qa q USING (qa_uid)
WHERE q.bucket = 'short_video' AND d.vds IS NOT NULL
ORDER BY d.vds DESC, q.qa_uid
LIMIT 20""",
    ),
    ExampleQuery(
        "Descriptor means per source group",
        """SELECT q.source_group, count(*) AS qas,
       avg(d.vds) AS vds, avg(d.ppl) AS ppl, avg(d.amm) AS amm,
       avg(d.frame_diversity) AS frame_div, avg(d.tnc_score) AS tnc,
       avg(d.sc_filled) AS sc, avg(d.quality) AS quality
FROM descriptors d JOIN qa q USING (qa_uid)
GROUP BY q.source_group
ORDER BY qas DESC, q.source_group""",
    ),
    ExampleQuery(
        "Temporal share per stratum (video QAs the TNC pass judged temporal)",
        """SELECT q.stratum, count(*) AS qas,
       avg(CASE WHEN d.tnc_score >= 1.0 THEN 1.0 ELSE 0.0 END) AS temporal_share,
       avg(d.tnc_score) AS mean_tnc
FROM descriptors d JOIN qa q USING (qa_uid)
WHERE q.bucket = 'short_video'
GROUP BY q.stratum
ORDER BY qas DESC, q.stratum""",
    ),
    ExampleQuery(
        "QAs whose model pass failed, with where they came from",
        """SELECT d.qa_uid, q.source_file, q.line, d.error
FROM descriptors d LEFT JOIN qa q USING (qa_uid)
WHERE d.error IS NOT NULL
ORDER BY d.qa_uid
LIMIT 50""",
    ),
    ExampleQuery(
        "Subset membership joined with the descriptors (once subsets exist)",
        """SELECT m.profile, m.arm, count(*) AS qas,
       avg(CASE WHEN q.bucket = 'short_video' THEN 1.0 ELSE 0.0 END) AS video_share,
       avg(d.vds) AS vds, avg(d.quality) AS quality
FROM subset_members m
JOIN descriptors d USING (qa_uid)
JOIN qa q USING (qa_uid)
GROUP BY m.profile, m.arm
ORDER BY m.profile, m.arm""",
    ),
)
