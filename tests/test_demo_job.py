"""`gdo demo` end to end: the demo world is built and the asset chain materializes on it."""

import json

import polars as pl
import pytest

from dagster_project.demo import run_demo
from gdo_core.demo import make_demo_pool


@pytest.mark.e2e
def test_demo_job_runs_end_to_end(tmp_path):
    data_dir = tmp_path / "gdo"
    lines = []
    report = run_demo(data_dir, seed=0, chunk_lines=40, echo=lines.append)
    expected = make_demo_pool(tmp_path / "again", seed=0)
    assert report["qa_per_bucket"] == {"image_qa": expected.n_image_qas, "short_video": expected.n_video_qas}
    n_broken = sum(len(v) for v in expected.broken_lines.values())
    assert report["rejects"] == n_broken
    assert any(line.startswith("QA pairs: ") for line in lines)
    assert (data_dir / "tiny-model" / "config.json").is_file()
    profile = json.loads((data_dir / "pool" / "profile.json").read_text())
    assert profile["total"] == expected.n_image_qas + expected.n_video_qas
    rejects = pl.concat([pl.read_parquet(p) for p in (data_dir / "pool" / "rejects").glob("*.parquet")])
    for name, broken in expected.broken_lines.items():
        got = rejects.filter(pl.col("source_file").str.ends_with(name))["line"].to_list()
        assert sorted(got) == sorted(broken)
    # a second run reuses the model and the registered partitions
    again = run_demo(data_dir, seed=0, chunk_lines=40, echo=lines.append)
    assert again["qa_rows"] == report["qa_rows"]
