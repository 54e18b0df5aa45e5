"""`gdo demo` end to end on a small demo world: pool, descriptors, subsets, both arms trained and scored, report."""

import dataclasses

import polars as pl
import pytest
from typer.testing import CliRunner

from dagster_project.cli import app
from dagster_project.demo import run_demo
from gdo_core import schema as S
from gdo_core.demo import BENCHMARK_CATEGORIES, make_demo_pool
from gdo_core.demo_settings import DEMO

SMALL = dataclasses.replace(
    DEMO, n_image_rows=40, n_videos=20, chunk_lines=1000, target_count=8, benchmark_questions=len(BENCHMARK_CATEGORIES),
    tnc_mode="regex",
)


@pytest.mark.e2e
def test_demo_job_runs_end_to_end(tmp_path, monkeypatch):
    data_dir = tmp_path / "gdo"
    lines = []
    report = run_demo(data_dir, settings=SMALL, echo=lines.append)
    expected = make_demo_pool(tmp_path / "again", seed=0, n_image_rows=SMALL.n_image_rows, n_videos=SMALL.n_videos)
    assert report["qa_per_bucket"] == {"image_qa": expected.n_image_qas, "short_video": expected.n_video_qas}
    assert report["rejects"] == sum(len(v) for v in expected.broken_lines.values())
    assert (data_dir / "tiny-model" / "config.json").is_file()
    rejects = pl.concat([pl.read_parquet(p) for p in (data_dir / "pool" / "rejects").glob("*.parquet")])
    for name, broken in expected.broken_lines.items():
        got = rejects.filter(pl.col("source_file").str.ends_with(name))["line"].to_list()
        assert sorted(got) == sorted(broken)
    for profile, subset in report["subsets"].items():
        assert subset["target_count"] == SMALL.target_count, profile
    # the demo trains temp_plus's two arms and compares them on the demo benchmark
    summary = report["summary"]
    assert summary.select("profile", "task").rows() == [("temp_plus", "gdo_demo")]
    assert summary["gdo_samples"][0] == SMALL.target_count - 1  # one row held out, batch 1
    losses = report["held_out_loss"]
    assert sorted(losses["arm"].to_list()) == [S.ARM_GDO, S.ARM_UNI]
    assert set(report["final"]["subtask"]) == {S.OVERALL, *BENCHMARK_CATEGORIES}
    # the last lines are the result and where to look, not a JSON dump
    text = "\n".join(lines)
    assert "== GDO demo: convergence" in text and "peak_match_samples" in text
    assert lines[-1].startswith("done in ") and any(line.startswith("DuckDB:") for line in lines[-4:])
    assert (data_dir / "report" / "curves.png").is_file()
    # the settings file the demo wrote gives `gdo backfill` (and `make ui`) the demo's project: nothing is stale
    monkeypatch.setenv("GDO_SETTINGS", str(data_dir / "gdo.toml"))
    monkeypatch.setenv("DAGSTER_HOME", str(data_dir / "dagster_home"))
    dry = CliRunner().invoke(app, ["backfill", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    for line in ("partitions to register: none", "candidate_pool to run: none", "descriptor_shards to run: none",
                 "descriptors (merge): current", "goal_subsets to run: none"):
        assert line in dry.output.splitlines(), dry.output
