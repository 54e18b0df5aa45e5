"""Coverage features: a 16-bin stable-hash text bag and a 6-d RGB statistic
(docs/method.md, Descriptors, Coverage features)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import cv2
import numpy as np

from gdo_core.schema import TEXT_FEATURE_DIM, VISION_FEATURE_DIM
from gdo_core.strata import TOKEN_PATTERN

TEXT_BINS = TEXT_FEATURE_DIM  # 16 hashing-trick bins
VISION_FRAMES = 6  # frames the RGB mean/std is taken over
HASH_BYTES = 8  # blake2b digest size used for the token hash
PIXEL_SCALE = 255.0

_TOKEN_RE = re.compile(TOKEN_PATTERN)


def stable_token_bin(token: str, bins: int = TEXT_BINS) -> int:
    """Bin of a token by blake2b (the fix: the published salted `hash()` differs per process)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=HASH_BYTES).digest()
    return int.from_bytes(digest, "little") % bins


def text_feature(question: str, answer: str) -> np.ndarray:
    """L2-normalised 16-bin bag of the question+answer tokens (lower-cased `[A-Za-z0-9_]+`)."""
    counts = np.zeros(TEXT_BINS, dtype=np.float64)
    for token in _TOKEN_RE.findall(f"{question} {answer}".lower()):
        counts[stable_token_bin(token)] += 1.0
    norm = float(np.linalg.norm(counts))
    return (counts / norm if norm > 0 else counts).astype(np.float32)


def vision_feature(frames_bgr: Sequence[np.ndarray]) -> np.ndarray:
    """Per-channel RGB mean then std in [0,1], pooled over every pixel of the given frames."""
    if not frames_bgr:
        return np.zeros(VISION_FEATURE_DIM, dtype=np.float32)
    weights, means, squares = [], [], []
    for frame in frames_bgr:
        mean, std = cv2.meanStdDev(frame)  # per channel, population std
        weights.append(frame.shape[0] * frame.shape[1])
        means.append(mean.ravel())
        squares.append(np.square(std.ravel()) + np.square(mean.ravel()))
    w = np.asarray(weights, dtype=np.float64)[:, None] / float(sum(weights))
    mean = (w * np.asarray(means)).sum(axis=0) / PIXEL_SCALE
    second = (w * np.asarray(squares)).sum(axis=0) / PIXEL_SCALE**2
    std = np.sqrt(np.maximum(second - np.square(mean), 0.0))
    # OpenCV decodes BGR; the feature is RGB-ordered.
    return np.concatenate([mean[::-1], std[::-1]]).astype(np.float32)
