"""`gdo build` keeps frame lists once per line; its files equal a build from the full QA table."""

from pathlib import Path

import pytest

from gdo_core import build as BLD
from gdo_core.pool import read_pool

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "published_build"


@pytest.mark.skipif(
    not (FIXTURE / "onevision.jsonl.gz").is_file(),
    reason=f"published-build fixture not found at {FIXTURE} (shared/ must sit beside the repository)",
)
@pytest.mark.parametrize("compat", [None, "published"])
def test_row_frames_build_writes_the_same_files(tmp_path, compat):
    ov, vv, metrics = (
        FIXTURE / f for f in ("onevision.jsonl.gz", "video.jsonl.gz", "metrics.jsonl.gz")
    )
    lean = BLD.build_subsets(
        "temp",
        ov,
        vv,
        tmp_path / "lean",
        metrics=metrics,
        compat=compat,
        progress=False,
        target_frames=8,
    )
    pool = read_pool(ov, vv, mcq_on_raw=(compat is None), target_frames=8)
    assert "frames" in pool.qa.columns
    full = BLD.build_from_pool(
        pool.qa,
        "temp",
        tmp_path / "full",
        metrics=BLD.load_metrics(metrics, strict=(compat is None)),
        compat=compat,
        target_frames=8,
    )
    for name in (lean.gdo_path.name, lean.uni_path.name, "subset_members.parquet"):
        assert (tmp_path / "lean" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), (
            name
        )
    assert full.report["hard_constraints"] == lean.report["hard_constraints"]
    assert lean.members.height > 100 and lean.report["target_count"] > 0
