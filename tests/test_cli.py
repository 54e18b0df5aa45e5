"""The `gdo` command line: help everywhere, one-line errors, ingest output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dagster_project.cli import app

runner = CliRunner()
COMMANDS = [
    "demo-data", "tiny-model", "ingest", "extract", "merge", "sql", "build", "resample", "register-pool", "demo",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_missing_pool_file_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["ingest", "--onevision", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"gdo: error: --onevision {tmp_path / 'nope.jsonl'}: file not found"]


def test_ingest_needs_a_pool(tmp_path):
    result = runner.invoke(app, ["ingest", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "give at least one of --onevision and --video" in result.output
    assert "Traceback" not in result.output


def test_ingest_prints_counts(tmp_path):
    rows = [
        {"id": "a", "images": ["x.jpg"], "messages": [{"role": "user", "content": "<image>\nQ?"},
                                                      {"role": "assistant", "content": "A"}]},
    ]
    pool = tmp_path / "ov.jsonl"
    pool.write_text("\n".join([json.dumps(rows[0]), "not json"]) + "\n")
    result = runner.invoke(app, ["ingest", "--onevision", str(pool), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "QA pairs: 1 (image_qa 1)" in result.output
    assert "rejects: 1 (bad_json 1)" in result.output
    assert (tmp_path / "out" / "qa" / "ov-00000.parquet").is_file()
    assert (tmp_path / "out" / "rejects.parquet").is_file()


def test_console_script_runs():
    gdo = Path(sys.executable).with_name("gdo")
    out = subprocess.run([str(gdo), "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out


@pytest.mark.e2e
def test_ingest_extract_merge_sql_build_chain_on_the_demo_pool(tmp_path):
    """The method's commands chained by hand, as a user without Dagster would run them."""
    from gdo_core.demo import make_demo_pool

    demo = make_demo_pool(tmp_path / "pool", seed=0)
    work = tmp_path / "work"

    def gdo(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    gdo("ingest", "--onevision", demo.onevision, "--video", demo.video, "--out", work, "--chunk-lines", 60)
    out = gdo("extract", "--pool", work, "--out", work / "shards", "--motion-only")
    assert str(demo.n_image_qas + demo.n_video_qas) in out
    gdo("merge", "--shards", work / "shards", "--pool", work, "--db", work / "gdo.duckdb", "--clusters", 16)
    csv = gdo("sql", "SELECT count(*) AS n, count(DISTINCT cluster_id) AS k FROM descriptors",
              "--db", work / "gdo.duckdb", "--format", "csv")
    assert csv.strip().splitlines() == ["n,k", f"{demo.n_image_qas + demo.n_video_qas},16"]
    gdo("build", "--profile", "temp", "--onevision", demo.onevision, "--video", demo.video,
        "--metrics", work / "gdo.duckdb", "--out", work / "temp", "--target-count", 40)
    rows = [json.loads(line) for line in (work / "temp" / "gdo_1x_32f.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    bad = runner.invoke(app, ["sql", "SELEC 1", "--db", str(work / "gdo.duckdb")])
    assert bad.exit_code == 2 and bad.output.startswith("gdo: error:")
