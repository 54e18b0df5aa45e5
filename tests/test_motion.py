"""Motion descriptors on synthetic clips with known motion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gdo_core.descriptors.motion import (
    FLOW_FRAMES,
    FLOW_SIZE,
    frame_list_motion,
    motion_for_lists,
)

SHIFT_PAD = 64


def _texture(seed: int) -> np.ndarray:
    """A smooth random colour texture a little larger than the flow size (so it can slide)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (FLOW_SIZE // 8 + 8, FLOW_SIZE // 8 + 8, 3), dtype=np.uint8)
    size = FLOW_SIZE + SHIFT_PAD
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def write_clip(folder: Path, n: int, shift: float, seed: int = 0) -> list[str]:
    """n FLOW_SIZE-square PNG frames of a texture sliding `shift` pixels right per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    texture = _texture(seed)
    paths = []
    for i in range(n):
        x = round(i * shift)
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), texture[:FLOW_SIZE, x : x + FLOW_SIZE])
        paths.append(str(path))
    return paths


def test_still_clip_has_no_motion(tmp_path: Path) -> None:
    result = frame_list_motion(write_clip(tmp_path / "still", FLOW_FRAMES, shift=0))
    assert result.amm < 0.01
    assert result.frame_diversity == 0.0
    assert result.frames_unreadable == 0


def test_bigger_motion_gives_bigger_amm_and_diversity(tmp_path: Path) -> None:
    still = frame_list_motion(write_clip(tmp_path / "still", FLOW_FRAMES, shift=0))
    slow = frame_list_motion(write_clip(tmp_path / "slow", FLOW_FRAMES, shift=1))
    fast = frame_list_motion(write_clip(tmp_path / "fast", FLOW_FRAMES, shift=3))
    assert still.amm < slow.amm < fast.amm
    assert still.frame_diversity < slow.frame_diversity < fast.frame_diversity
    # A pure translation of d pixels per frame (no resize at 224x224) gives flow magnitude ~d.
    assert slow.amm == pytest.approx(1.0, rel=0.25)
    assert fast.amm == pytest.approx(3.0, rel=0.25)


def test_one_frame_gives_zero(tmp_path: Path) -> None:
    result = frame_list_motion(write_clip(tmp_path / "one", 1, shift=0))
    assert (result.amm, result.frame_diversity) == (0.0, 0.0)
    assert result.vision_feature.shape == (6,)


def test_only_sampled_frames_are_used(tmp_path: Path) -> None:
    # 32 frames: flow runs on 8 of them, so the per-pair shift is about 31/7 frames' worth.
    result = frame_list_motion(write_clip(tmp_path / "long", 32, shift=0.5))
    assert result.amm == pytest.approx(0.5 * 31 / 7, rel=0.3)


def test_unreadable_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    frames = write_clip(tmp_path / "clip", FLOW_FRAMES, shift=1)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    damaged = [frames[0], str(tmp_path / "missing.png"), *frames[2:6], str(tmp_path / "broken.png"), frames[7]]
    result = frame_list_motion(damaged)
    assert result.frames_unreadable == 2
    assert result.unreadable == (1, 6)
    assert result.amm > 0.5


def test_all_unreadable_gives_zero(tmp_path: Path) -> None:
    result = frame_list_motion([str(tmp_path / f"missing{i}.png") for i in range(4)])
    assert (result.amm, result.frame_diversity, result.frames_unreadable) == (0.0, 0.0, 4)
    assert not result.vision_feature.any()


def test_parallel_equals_serial(tmp_path: Path) -> None:
    lists = [write_clip(tmp_path / f"v{k}", FLOW_FRAMES, shift=k % 3, seed=k) for k in range(8)]
    serial = motion_for_lists(lists, workers=1)
    parallel = motion_for_lists(lists, workers=2)
    assert [(r.amm, r.frame_diversity) for r in serial] == [(r.amm, r.frame_diversity) for r in parallel]
    assert all(np.array_equal(a.vision_feature, b.vision_feature) for a, b in zip(serial, parallel))
