"""`gdo sql` is read-only: no file written, no database attached, no extension, no file read outside the data folder."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_merge import write_pool  # tests/ is on sys.path under pytest's default import mode
from typer.testing import CliRunner

from gdo_core import merge, sql
from gdo_core.cli import app
from gdo_core.schema import SCORE_SCHEMA, SUBSET_MEMBER_SCHEMA

runner = CliRunner()

# Every table and view the README documents, with its row count in the fixture below.
DOCUMENTED = {
    "qa": 110,  # 5 of each shard's 60 QAs have no qa row
    "descriptors": 120,
    "rejects": 2,
    "merge_report": 1,
    "subset_members": 8,
    "scores": 6,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data folder as the pipeline leaves it (database, subsets, scores) and files beside it."""
    root = tmp_path_factory.mktemp("readonly")
    data = root / "data"
    pool = write_pool(data / "pool", shards=2, shard_rows=60)
    db = data / "gdo.duckdb"
    # As the descriptors asset does: persistent views over outputs that do not exist yet.
    merge.merge_to_duckdb(
        pool["shards"], pool["qa"], pool["rejects"], db, clusters=4, views=sql.late_views(db)
    )
    members = data / "subsets" / "minloss" / "subset_members.parquet"
    members.parent.mkdir(parents=True)
    pl.DataFrame(
        {
            "profile": ["minloss"] * 8,
            "arm": ["gdo"] * 2 + ["uni10x"] * 6,
            "qa_uid": [f"ov::row{i}::t0" for i in range(8)],
            "rank": list(range(8)),
            "stage": ["stratum_quota"] * 8,
            "score": [0.5] * 8,
        },
        schema=SUBSET_MEMBER_SCHEMA,
    ).write_parquet(members)
    scores = data / "scores" / "minloss__gdo.parquet"
    scores.parent.mkdir()
    pl.DataFrame(
        {
            "arm": ["gdo"] * 6,
            "profile": ["minloss"] * 6,
            "checkpoint": ["checkpoint-1"] * 3 + ["checkpoint-2"] * 3,
            "step": [1] * 3 + [2] * 3,
            "samples_seen": [8] * 3 + [16] * 3,
            "task": ["mvbench"] * 6,
            "subtask": ["overall", "a", "b"] * 2,
            "accuracy": [30.0, 20.0, 40.0, 35.0, 25.0, 45.0],
        },
        schema=SCORE_SCHEMA,
    ).write_parquet(scores)
    outside = root / "outside"
    outside.mkdir()
    pl.DataFrame({"secret": [42]}).write_parquet(outside / "x.parquet")
    (outside / "x.csv").write_text("secret\n42\n")
    return {"root": root, "data": data, "db": db, "outside": outside}


def gdo_sql(db: Path, query: str, *extra: str):
    return runner.invoke(app, ["sql", query, "--db", str(db), *extra])


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_documented_table_and_view_answers(world: dict[str, Path], name: str) -> None:
    result = gdo_sql(world["db"], f"SELECT count(*) AS n FROM {name}", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["n", str(DOCUMENTED[name])]


def test_files_in_the_data_folder_can_still_be_read(world: dict[str, Path]) -> None:
    data = world["data"]
    for query in (
        f"SELECT count(*) AS n FROM read_parquet('{data}/scores/*.parquet')",
        f"SELECT count(*) AS n FROM '{data}/subsets/minloss/subset_members.parquet'",
        f"SELECT count(*) AS n FROM read_parquet('{data}/pool/qa/*.parquet')",
    ):
        frame = sql.query_frame(query, world["db"])
        assert frame["n"].item() > 0, query


def refused_cases(world: dict[str, Path]) -> list[tuple[str, str]]:
    """(query, what the one-line error must name)."""
    data, outside = world["data"], world["outside"]
    return [
        # COPY ... TO, even into the data folder.
        (f"COPY qa TO '{data}/qa.csv'", "COPY ... TO"),
        (
            f"COPY (SELECT * FROM descriptors) TO '{world['root']}/d.parquet' (FORMAT parquet)",
            "COPY ... TO",
        ),
        ("SELECT 1; COPY rejects TO 'rejects.csv'", "COPY ... TO"),
        (f"ATTACH '{data}/other.duckdb' AS other", "ATTACH"),
        ("ATTACH ':memory:' AS scratch", "ATTACH"),
        ("INSTALL httpfs", "INSTALL"),
        ("FORCE INSTALL json", "INSTALL"),
        ("LOAD parquet", "LOAD"),
        (f"EXPORT DATABASE '{data}/export'", "EXPORT DATABASE"),
        (f"EXPORT DATABASE '{world['root']}/export' (FORMAT parquet)", "EXPORT DATABASE"),
        # Reading files outside the data folder, by function or by a bare path.
        ("SELECT * FROM read_csv('/etc/passwd')", "/etc/passwd"),
        ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
        (f"SELECT * FROM read_parquet('{outside}/x.parquet')", f"{outside}/x.parquet"),
        (f"SELECT * FROM '{outside}/x.parquet'", f"{outside}/x.parquet"),
        (f"SELECT * FROM read_csv_auto('{outside}/x.csv')", f"{outside}/x.csv"),
        (f"SELECT * FROM read_parquet('{data}/../outside/x.parquet')", "outside/x.parquet"),
        ("SELECT * FROM read_text('/etc/hostname')", "/etc/hostname"),
        ("SELECT * FROM glob('/etc/*')", "/etc/*"),
        # The guards themselves cannot be switched off from a query.
        ("SET enable_external_access = true", "enable_external_access"),
        ("RESET allowed_directories", "allowed_directories"),
        ("SET lock_configuration = false", "lock_configuration"),
    ]


def test_refusals_are_one_line_naming_what_was_refused(world: dict[str, Path]) -> None:
    for query, named in refused_cases(world):
        with pytest.raises(sql.SqlError) as info:
            sql.run_sql(query, world["db"])
        message = str(info.value)
        assert "\n" not in message, query
        assert message.startswith("refused: "), (query, message)
        assert named in message, (query, message)
        assert "42" not in message and "root:" not in message  # nothing of the file leaks


def test_the_cli_refuses_with_a_non_zero_exit_and_one_line(world: dict[str, Path]) -> None:
    for query, named in refused_cases(world):
        result = gdo_sql(world["db"], query)
        assert result.exit_code != 0, (query, result.output)
        lines = result.output.splitlines()
        assert len(lines) == 1, (query, result.output)
        assert lines[0].startswith("gdo: error: refused: ") and named in lines[0], (query, lines)


def test_refused_statements_left_nothing_behind(world: dict[str, Path]) -> None:
    for query, _ in refused_cases(world):
        gdo_sql(world["db"], query)
    data, root = world["data"], world["root"]
    for path in (
        data / "qa.csv",
        root / "d.parquet",
        data / "other.duckdb",
        data / "export",
        root / "export",
    ):
        assert not path.exists(), path
    assert not Path("rejects.csv").exists()
    # Still a working database afterwards.
    assert sql.query_frame("SELECT count(*) AS n FROM rejects", world["db"])["n"].item() == 2


def test_other_errors_keep_their_own_message(world: dict[str, Path]) -> None:
    with pytest.raises(sql.SqlError, match=r"^query failed: Catalog Error: Table with name nope"):
        sql.run_sql("SELECT * FROM nope", world["db"])
    with pytest.raises(sql.SqlError, match="read-only"):
        sql.run_sql("DELETE FROM rejects", world["db"])


def test_the_locked_session_does_not_reach_other_connections(world: dict[str, Path]) -> None:
    # Another connection of this process to the same file keeps its own settings.
    other = duckdb.connect(str(world["db"]), read_only=True)
    try:
        assert sql.query_frame("SELECT count(*) AS n FROM qa", world["db"])["n"].item() == 110
        outside = world["outside"] / "x.parquet"
        assert other.execute(f"SELECT secret FROM read_parquet('{outside}')").fetchall() == [(42,)]
        other.execute("SET threads = 1")
    finally:
        other.close()


def test_allowed_folders_are_the_data_folder_and_the_views_folders(world: dict[str, Path]) -> None:
    data = world["data"].resolve()
    assert sql.allowed_folders(world["db"]) == [data]
    views = {
        "subset_members": [world["outside"] / "x.parquet"],
        "scores": str(data / "scores" / "*.parquet"),
    }
    assert sql.allowed_folders(world["db"], views) == sorted(
        {data, data / "scores", world["outside"].resolve()}
    )


def test_a_data_folder_reached_through_a_link_still_reads(world: dict[str, Path]) -> None:
    link = world["root"] / "linked"
    if not link.exists():
        link.symlink_to(world["data"], target_is_directory=True)
    db = link / "gdo.duckdb"
    query = f"SELECT count(*) AS n FROM read_parquet('{link}/scores/*.parquet')"
    assert sql.query_frame(query, db)["n"].item() == 6
    result = gdo_sql(db, "SELECT count(*) AS n FROM scores", "--format", "csv")
    assert result.exit_code == 0 and result.output.split() == ["n", "6"], result.output
    with pytest.raises(sql.SqlError, match="^refused: reading "):
        sql.run_sql(f"SELECT * FROM read_parquet('{link}/../outside/x.parquet')", db)
