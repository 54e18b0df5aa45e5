"""Descriptor extraction: shards, per-QA cache reuse, unreadable frames, failures, determinism, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from gdo_core.descriptors.cache import DescriptorCache
from gdo_core.descriptors.extract import (
    ALL_UNREADABLE,
    DescriptorSettings,
    describe_qa_frame,
    extract_descriptors,
)
from gdo_core.descriptors.model_signals import SignalModel
from gdo_core.pool import ingest
from gdo_core.schema import DESCRIPTOR_SCHEMA

FRAME_SIZE = 64
RUN_OPTIONS = {"batch_size": 2, "sc_samples": 2, "motion_workers": 1, "torch_threads": 1, "progress": False}


def _write_frames(folder: Path, n: int, speed: int, shade: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(n):
        image = np.full((FRAME_SIZE, FRAME_SIZE, 3), shade, np.uint8)
        x = 4 + (t * speed) % (FRAME_SIZE - 20)
        cv2.rectangle(image, (x, 20), (x + 14, 34), (255, 255, 255), -1)
        path = folder / f"{t:03d}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def make_pool(root: Path, n_videos: int = 3, qas_per_video: int = 3, n_images: int = 2) -> Path:
    """Video rows of `qas_per_video` turns each over moving-square frames, plus image rows; ingested."""
    video_rows = []
    for v in range(n_videos):
        frames = _write_frames(root / "frames" / f"v{v}", 8, speed=v + 1, shade=30 * v)
        messages = []
        for q in range(qas_per_video):
            when = "after" if q % 2 else "in"
            messages += [
                {"role": "user", "content": f"<video>\nWhat happens {when} part {q} of clip {v}?"},
                {"role": "assistant", "content": f"The white square moves right {q + v} times."},
            ]
        video_rows.append({"id": f"vid{v}", "video_id": f"v{v}", "images": frames, "messages": messages, "data_source": "synthetic"})
    image_rows = []
    for i in range(n_images):
        image = np.full((FRAME_SIZE, FRAME_SIZE, 3), 200, np.uint8)
        cv2.circle(image, (32, 32), 10 + i, (255, 0, 0), -1)
        path = root / "frames" / f"image{i}.png"
        cv2.imwrite(str(path), image)
        messages = [{"role": "user", "content": "<image>\nWhat colour is the circle?"}, {"role": "assistant", "content": "Blue."}]
        image_rows.append({"id": f"img{i}", "images": [str(path)], "messages": messages, "data_source": "synthetic"})
    for name, rows in (("video.jsonl", video_rows), ("onevision.jsonl", image_rows)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return reingest(root)


def reingest(root: Path) -> Path:
    """(Re-)ingest the pool files under root into root/ingested, two lines per chunk."""
    ingest(root / "onevision.jsonl", root / "video.jsonl", root / "ingested", chunk_lines=2)
    return root / "ingested"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gdo_core.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def _all_rows(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))])


# ---- motion only (no model) ---------------------------------------------------------------


def test_motion_only_shards_follow_the_schema_and_share_motion_per_video(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    summary = extract_descriptors(pool, tmp_path / "out", motion_only=True, motion_workers=1, progress=False)
    assert [p.name for p in summary.shards] == ["onevision-00000.parquet", "video-00000.parquet", "video-00001.parquet"]
    rows = _all_rows(tmp_path / "out")
    assert rows.schema == pl.Schema(DESCRIPTOR_SCHEMA)
    assert rows.height == 11 and summary.stats.computed == 11
    assert summary.stats.frame_lists == 5  # 3 videos + 2 images: motion ran once per frame list
    per_video = rows.filter(pl.col("qa_uid").str.starts_with("vv::")).group_by(pl.col("qa_uid").str.slice(0, 8))
    assert per_video.agg(pl.col("amm").n_unique())["amm"].to_list() == [1, 1, 1]
    videos = rows.filter(pl.col("qa_uid").str.starts_with("vv::")).sort("qa_uid")
    assert videos["amm"].to_list()[0] < videos["amm"].to_list()[-1]  # clip 2 moves 3x as fast as clip 0
    images = rows.filter(pl.col("qa_uid").str.starts_with("ov::"))
    assert images["amm"].to_list() == [0.0, 0.0]
    assert rows["loss_video"].null_count() == 11 and rows["sc"].to_list() == [-1.0] * 11
    assert rows["tnc_score"].null_count() == 0  # regex TNC without a model
    assert rows["error"].null_count() == 11


def test_rerun_reuses_every_qa_and_writes_the_same_bytes(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    extract_descriptors(pool, tmp_path / "out", motion_only=True, motion_workers=1, progress=False)
    first = _shard_bytes(tmp_path / "out")
    again = extract_descriptors(pool, tmp_path / "out", motion_only=True, motion_workers=1, progress=False)
    assert (again.stats.computed, again.stats.reused) == (0, 11)
    assert _shard_bytes(tmp_path / "out") == first


def test_unreadable_frames_are_counted_and_noted(tmp_path: Path) -> None:
    frames = _write_frames(tmp_path / "clip", 8, speed=2, shade=0)
    os.remove(frames[3])
    qa = pl.DataFrame(
        {
            "qa_uid": ["vv::a::t0", "vv::b::t0"],
            "question": ["What happens?", "What happens?"],
            "answer": ["It moves.", "Nothing."],
            "frames": [frames, [str(tmp_path / "gone0.jpg"), str(tmp_path / "gone1.jpg")]],
            "question_len": [2, 2],
            "answer_len": [2, 1],
        }
    )
    shard, stats = describe_qa_frame(qa, DescriptorSettings(motion_only=True, motion_workers=1))
    damaged, gone = shard.to_dicts()
    assert damaged["frames_unreadable"] == 1 and damaged["amm"] > 0 and damaged["error"] is None
    assert gone["frames_unreadable"] == 2 and gone["amm"] == 0.0
    assert gone["error"] == ALL_UNREADABLE.format(n=2)
    assert stats.errors == 1 and stats.frames_unreadable == 3


def test_a_torn_batch_in_the_cache_is_not_reused(tmp_path: Path) -> None:
    cache = DescriptorCache(tmp_path)
    cache.put_rows({"aa11": {"x": 1}, "bb22": {"x": 2}}, batch=["aa11", "bb22"])
    assert set(cache.get_rows(["aa11", "bb22"])) == {"aa11", "bb22"}
    (tmp_path / "rows" / "bb" / "bb22.json").unlink()  # as if killed between the two writes
    assert cache.get_rows(["aa11", "bb22"]) == {}


# ---- with the tiny model ------------------------------------------------------------------


def test_model_descriptors_fill_every_column(tmp_path: Path, tiny_model: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    summary = extract_descriptors(pool, tmp_path / "out", model=tiny_model, **RUN_OPTIONS)
    rows = _all_rows(tmp_path / "out")
    assert summary.stats.errors == 0 and rows["error"].null_count() == rows.height
    for column in ("loss_video", "loss_blind", "vds", "ppl", "tnc_score"):
        assert rows[column].null_count() == 0, column
    assert ((rows["sc"] >= 0) & (rows["sc"] <= 1)).all()
    assert (rows["vds"] - (rows["loss_blind"] - rows["loss_video"])).abs().max() < 1e-12


def test_editing_one_line_recomputes_only_its_qa(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "pool"
    pool = make_pool(root)
    cache = tmp_path / "cache"
    extract_descriptors(pool, tmp_path / "out", model=tiny_model, cache_dir=cache, **RUN_OPTIONS)
    lines = (root / "video.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["messages"][1]["content"] = "The white square stays still."
    lines[2] = json.dumps(row)
    (root / "video.jsonl").write_text("\n".join(lines) + "\n")
    reingest(root)
    again = extract_descriptors(pool, tmp_path / "out", model=tiny_model, cache_dir=cache, **RUN_OPTIONS)
    assert (again.stats.computed, again.stats.reused) == (1, 10)


def test_a_failed_model_pass_keeps_motion_and_is_retried(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(tmp_path / "pool", n_videos=1, n_images=1)

    def fail(self: SignalModel, items: list, n: int) -> list:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(SignalModel, "signals", fail)
    failed = extract_descriptors(pool, tmp_path / "out", model=tiny_model, **RUN_OPTIONS)
    rows = _all_rows(tmp_path / "out")
    assert failed.stats.errors == 4
    assert rows["error"].str.contains("simulated failure").all()
    assert rows["loss_video"].null_count() == 4 and rows["amm"].null_count() == 0
    monkeypatch.undo()
    retried = extract_descriptors(pool, tmp_path / "out", model=tiny_model, **RUN_OPTIONS)
    assert (retried.stats.computed, retried.stats.errors) == (4, 0)


# ---- determinism across processes ---------------------------------------------------------

RUN_SCRIPT = """
import sys
from pathlib import Path
from gdo_core.descriptors.extract import extract_descriptors
summary = extract_descriptors(Path(sys.argv[1]), Path(sys.argv[2]), model=Path(sys.argv[3]),
    batch_size=2, sc_samples=2, motion_workers=1, torch_threads=1, progress=False)
print(summary.line())
"""


# RUN_SCRIPT in a process that kills itself (SIGKILL: no cleanup, as a crash or OOM kill) right
# after the per-QA cache has been handed KILL_AFTER_ROWS rows: the kill lands at the same point
# of the run on any machine.
KILL_AFTER_ROWS = 4
KILLED_RUN_SCRIPT = (
    f"""
import os, signal
from gdo_core.descriptors.cache import DescriptorCache
put_rows, written = DescriptorCache.put_rows, []
def put_rows_then_die(self, rows, batch=()):
    put_rows(self, rows, batch)
    written.extend(rows)
    if len(written) >= {KILL_AFTER_ROWS}:
        os.kill(os.getpid(), signal.SIGKILL)
DescriptorCache.put_rows = put_rows_then_die
"""
    + RUN_SCRIPT
)


def _run(
    pool: Path, out: Path, model: Path, hash_seed: str, script: str = RUN_SCRIPT
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(pool), str(out), str(model)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("determinism")
    pool = make_pool(root / "pool", n_videos=4)
    _finish(_run(pool, root / "reference", tiny_model, hash_seed="1"))
    return pool, _shard_bytes(root / "reference")


def test_shards_are_identical_under_different_hash_seeds(
    tmp_path: Path, tiny_model: Path, reference_run: tuple[Path, dict[str, bytes]]
) -> None:
    pool, reference = reference_run
    _finish(_run(pool, tmp_path / "out", tiny_model, hash_seed="2"))
    assert _shard_bytes(tmp_path / "out") == reference


def test_killed_run_resumes_to_identical_shards(
    tmp_path: Path, tiny_model: Path, reference_run: tuple[Path, dict[str, bytes]]
) -> None:
    pool, reference = reference_run
    out = tmp_path / "out"
    process = _run(pool, out, tiny_model, hash_seed="3", script=KILLED_RUN_SCRIPT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, err[-2000:]
    # Chunks in order: onevision-00000 (2 image QAs, one batch) is done and its shard written;
    # video-00000 had its first batch of 2 QAs cached when the run died.
    assert len(list((out / "cache" / "rows").glob("*/*.json"))) == KILL_AFTER_ROWS
    assert list(_shard_bytes(out)) == ["onevision-00000.parquet"]
    assert _shard_bytes(out)["onevision-00000.parquet"] == reference["onevision-00000.parquet"]
    assert len(reference) == 3
    printed = _finish(_run(pool, out, tiny_model, hash_seed="4"))
    assert _shard_bytes(out) == reference
    assert "14 QAs in 3 shards: 10 computed, 4 reused" in printed
