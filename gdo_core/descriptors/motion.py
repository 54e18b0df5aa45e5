"""Motion descriptors: AMM (mean Farneback flow magnitude) and frame diversity
(docs/method.md, Descriptors).

Both depend only on the frames, so they are computed once per distinct frame list and fanned
out to its QAs; each list's frames are decoded once, and the lists run in parallel threads.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from gdo_core.descriptors.features import VISION_FRAMES, vision_feature
from gdo_core.pool import resample_indices

FLOW_FRAMES = 8  # frames sampled uniformly from the QA's frame list for flow and diversity
FLOW_SIZE = 224  # frames are resized to FLOW_SIZE x FLOW_SIZE with INTER_AREA
FARNEBACK_PYR_SCALE = 0.5
FARNEBACK_LEVELS = 2
FARNEBACK_WINSIZE = 15
FARNEBACK_ITERATIONS = 2
FARNEBACK_POLY_N = 5
FARNEBACK_POLY_SIGMA = 1.1
PIXEL_SCALE = 255.0

# Settings that change motion results: part of every cache key.
MOTION_SETTINGS: dict[str, float] = {
    "flow_frames": FLOW_FRAMES,
    "flow_size": FLOW_SIZE,
    "pyr_scale": FARNEBACK_PYR_SCALE,
    "levels": FARNEBACK_LEVELS,
    "winsize": FARNEBACK_WINSIZE,
    "iterations": FARNEBACK_ITERATIONS,
    "poly_n": FARNEBACK_POLY_N,
    "poly_sigma": FARNEBACK_POLY_SIGMA,
    "vision_frames": VISION_FRAMES,
}


@dataclass(frozen=True)
class MotionResult:
    """AMM, frame diversity and the vision feature of one frame list, with unreadable frames."""

    amm: float
    frame_diversity: float
    vision_feature: np.ndarray
    unreadable: tuple[int, ...] = field(default=())  # indices into the frame list
    attempted: int = 0  # sampled frames it tried to decode

    @property
    def frames_unreadable(self) -> int:
        """Number of sampled frames that could not be decoded."""
        return len(self.unreadable)


def read_bgr(path: str) -> np.ndarray | None:
    """A frame decoded by OpenCV (BGR), or None when the file is missing or not an image."""
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return image if image is not None and image.size else None


def flow_gray(frame_bgr: np.ndarray) -> np.ndarray:
    """A frame as the FLOW_SIZE x FLOW_SIZE grey image the flow runs on."""
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, (FLOW_SIZE, FLOW_SIZE), interpolation=cv2.INTER_AREA)


def flow_magnitude(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean Farneback flow magnitude between two grey frames (published parameters)."""
    flow = cv2.calcOpticalFlowFarneback(
        prev,
        cur,
        None,
        FARNEBACK_PYR_SCALE,
        FARNEBACK_LEVELS,
        FARNEBACK_WINSIZE,
        FARNEBACK_ITERATIONS,
        FARNEBACK_POLY_N,
        FARNEBACK_POLY_SIGMA,
        0,
    )
    return float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean())


def pair_diversity(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean |cur - prev| / 255 between two grey frames."""
    return float(cv2.absdiff(cur, prev).mean()) / PIXEL_SCALE


def motion_of_grays(grays: Sequence[np.ndarray]) -> tuple[float, float]:
    """(AMM, frame diversity) over consecutive pairs; one frame or none gives (0, 0)."""
    if len(grays) < 2:
        return 0.0, 0.0
    pairs = list(itertools.pairwise(grays))
    amm = float(np.mean([flow_magnitude(p, c) for p, c in pairs]))
    diversity = float(np.mean([pair_diversity(p, c) for p, c in pairs]))
    return amm, diversity


def frame_list_motion(frames: Sequence[str]) -> MotionResult:
    """Motion and vision feature of one frame list, decoding each needed frame once."""
    flow_idx = resample_indices(len(frames), FLOW_FRAMES)
    vision_idx = resample_indices(len(frames), VISION_FRAMES)
    decoded: dict[int, np.ndarray | None] = {i: read_bgr(frames[i]) for i in sorted({*flow_idx, *vision_idx})}
    unreadable = tuple(i for i, image in decoded.items() if image is None)
    grays = [flow_gray(decoded[i]) for i in flow_idx if decoded[i] is not None]
    amm, diversity = motion_of_grays(grays)
    rgb_stats = vision_feature([decoded[i] for i in vision_idx if decoded[i] is not None])
    return MotionResult(amm, diversity, rgb_stats, unreadable, len(decoded))


def default_workers() -> int:
    """Threads for motion: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def motion_for_lists(frame_lists: Sequence[Sequence[str]], workers: int | None = None) -> list[MotionResult]:
    """Motion of each distinct frame list, the lists spread over `workers` threads.

    Threads, not processes: decoding, resizing and Farneback run in OpenCV with the GIL released,
    so threads use every core without process start-up (benchmarks/descriptors.py measures both).
    """
    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, len(frame_lists))
    if workers <= 1:
        return [frame_list_motion(frames) for frames in frame_lists]
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one list per thread already; OpenCV's own threads would oversubscribe
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="gdo-motion") as pool:
            return list(pool.map(frame_list_motion, frame_lists))
    finally:
        cv2.setNumThreads(previous)
