"""Read-only SQL over the merged database, Parquet views, and the README's example queries."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_merge import write_pool  # tests/ is on sys.path under pytest's default import mode

from gdo_core import merge, sql
from gdo_core.schema import DESCRIPTOR_SCHEMA, QA_SCHEMA, REJECT_SCHEMA, SUBSET_MEMBER_SCHEMA


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sqlpool")
    pool = write_pool(root, shards=2, shard_rows=60)
    path = root / "gdo.duckdb"
    merge.merge_to_duckdb(pool["shards"], pool["qa"], pool["rejects"], path, clusters=4)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A subset_members Parquet file over QAs of the db fixture (two profiles, two arms)."""
    root = tmp_path_factory.mktemp("subsets")
    uids = [f"{'vv' if i % 3 else 'ov'}::row{i}::t0" for i in range(40)]
    frame = pl.DataFrame(
        {
            "profile": ["minloss"] * 20 + ["temp"] * 20,
            "arm": (["gdo"] * 5 + ["uni10x"] * 15) * 2,
            "qa_uid": uids,
            "rank": list(range(40)),
            "stage": ["quota"] * 40,
            "score": [0.1 * i for i in range(40)],
        },
        schema=SUBSET_MEMBER_SCHEMA,
    )
    path = root / "members.parquet"
    frame.write_parquet(path)
    return path


def test_table_format(db: Path) -> None:
    out = sql.run_sql("SELECT reason, line FROM rejects ORDER BY line", db)
    assert out.splitlines() == [
        "reason      line",
        "----------  ----",
        "bad_json       7",
        "empty_text     9",
        "(2 rows)",
    ]


def test_csv_and_json_formats(db: Path) -> None:
    query = (
        "SELECT qa_uid, vds, error FROM descriptors WHERE error IS NOT NULL ORDER BY qa_uid LIMIT 2"
    )
    rows = list(csv.reader(io.StringIO(sql.run_sql(query, db, "csv"))))
    assert rows[0] == ["qa_uid", "vds", "error"]
    assert len(rows) == 3 and rows[1][1] == "" and rows[1][2].startswith("model pass failed")
    records = json.loads(sql.run_sql(query, db, "json"))
    assert records[0]["vds"] is None and set(records[0]) == {"qa_uid", "vds", "error"}
    nested = json.loads(sql.run_sql("SELECT stats FROM merge_report", db, "json"))
    assert [s["signal"] for s in nested[0]["stats"]] == [
        "vds",
        "ppl",
        "amm",
        "frame_diversity",
        "sc",
    ]
    assert "text_feature" in sql.run_sql("SELECT text_feature FROM descriptors LIMIT 1", db, "csv")


def test_errors_are_one_line(db: Path, tmp_path: Path) -> None:
    with pytest.raises(
        sql.SqlError, match=r"^query failed: Parser Error: syntax error at or near \"SELEC\"$"
    ):
        sql.run_sql("SELEC 1", db)
    with pytest.raises(
        sql.SqlError, match=r"^query failed: Catalog Error: Table with name nope does not exist"
    ):
        sql.run_sql("SELECT * FROM nope", db)
    with pytest.raises(sql.SqlError, match="database not found"):
        sql.run_sql("SELECT 1", tmp_path / "missing.duckdb")
    with pytest.raises(sql.SqlError, match="unknown format 'xml'"):
        sql.run_sql("SELECT 1", db, "xml")


def test_connection_is_read_only(db: Path) -> None:
    with pytest.raises(sql.SqlError, match="read-only") as info:
        sql.run_sql("DELETE FROM rejects", db)
    assert "\n" not in str(info.value)
    assert "2" in sql.run_sql("SELECT count(*) AS n FROM rejects", db)


def test_reader_does_not_block_a_writer_of_another_file(db: Path) -> None:
    # A read-only session stays open while a writer opens a different database file.
    con = duckdb.connect(str(db), read_only=True)
    try:
        other = duckdb.connect(str(db.with_name("other.duckdb")))
        other.execute("CREATE TABLE t AS SELECT 1 AS x")
        other.close()
        assert con.execute("SELECT count(*) FROM qa").fetchall()[0][0] > 0
    finally:
        con.close()


def test_temp_views_over_parquet_on_a_read_only_connection(db: Path, members: Path) -> None:
    out = sql.run_sql(
        "SELECT arm, count(*) AS n FROM subset_members GROUP BY arm ORDER BY arm",
        db,
        "json",
        views={"subset_members": str(members.parent / "*.parquet")},
    )
    assert json.loads(out) == [{"arm": "gdo", "n": 10}, {"arm": "uni10x", "n": 30}]
    # No files yet: the view is empty but typed from the declared schema.
    empty = sql.query_frame(
        "SELECT * FROM subset_members",
        db,
        views={"subset_members": [members.parent / "none.parquet"]},
    )
    assert empty.height == 0 and empty.schema == pl.Schema(SUBSET_MEMBER_SCHEMA)
    with pytest.raises(sql.SqlError, match="no Parquet files match"):
        sql.parquet_view_sql("unknown_view", [members.parent / "none.parquet"])


def test_view_sql_quotes_names_and_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(odd)
    statement = sql.parquet_view_sql('we"ird', [odd], temporary=True)
    assert statement.startswith('CREATE OR REPLACE TEMP VIEW "we""ird" AS')
    con = duckdb.connect()
    con.execute(statement)
    assert con.execute('SELECT a FROM "we""ird"').fetchall() == [(1,)]


@pytest.mark.parametrize(
    "schema",
    [
        QA_SCHEMA,
        REJECT_SCHEMA,
        DESCRIPTOR_SCHEMA,
        merge.DESCRIPTOR_TABLE_SCHEMA,
        merge.MERGE_REPORT_SCHEMA,
    ],
)
def test_every_schema_maps_to_duckdb_and_back(schema: dict) -> None:
    con = duckdb.connect()
    con.execute(sql.create_table_sql("t", schema))
    assert con.sql("SELECT * FROM t").pl().schema == pl.Schema(schema)


def test_duckdb_types() -> None:
    assert sql.duckdb_type(pl.Array(pl.Float32, 16)) == "FLOAT[16]"
    assert sql.duckdb_type(pl.List(pl.String)) == "VARCHAR[]"
    with pytest.raises(TypeError):
        sql.duckdb_type(pl.Object())


def test_the_five_readme_queries_run(db: Path, members: Path) -> None:
    assert len(sql.README_QUERIES) == 5
    results = {}
    for example in sql.README_QUERIES:
        frame = sql.query_frame(example.sql, db, views={"subset_members": [members]})
        assert frame.height > 0, example.title
        results[example.title] = frame
        assert sql.run_sql(example.sql, db, views={"subset_members": [members]}).endswith("rows)\n")
    top_vds, means, temporal, errors, subsets = results.values()
    assert top_vds["vds"].to_list() == sorted(top_vds["vds"].to_list(), reverse=True)
    assert (
        means["qas"].sum() == 110
    )  # QAs with a descriptor and a qa row (5 per shard lack a qa row)
    assert temporal["temporal_share"].is_between(0, 1).all()
    assert errors["error"].str.starts_with("model pass failed").all()
    assert subsets.select("profile", "arm").rows() == [
        ("minloss", "gdo"),
        ("minloss", "uni10x"),
        ("temp", "gdo"),
        ("temp", "uni10x"),
    ]
