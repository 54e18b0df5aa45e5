"""Coverage features: stable-hash text bag and RGB statistics."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gdo_core.descriptors.features import stable_token_bin, text_feature, vision_feature


def test_text_feature_is_unit_norm_bag_of_tokens() -> None:
    feature = text_feature("What happens after the dog runs?", "The dog sits.")
    assert feature.dtype == np.float32 and feature.shape == (16,)
    assert float(np.linalg.norm(feature)) == pytest.approx(1.0, abs=1e-6)
    # "the" x2 and "dog" x2 out of 8 tokens: the bins hold token counts before normalising.
    counts = np.zeros(16)
    for token in ["what", "happens", "after", "the", "dog", "runs", "the", "dog", "sits"]:
        counts[stable_token_bin(token)] += 1
    np.testing.assert_allclose(feature, counts / np.linalg.norm(counts), rtol=1e-6)


def test_text_feature_without_tokens_is_zero() -> None:
    assert not text_feature("?!", "...").any()


def test_token_bins_are_pinned() -> None:
    # blake2b is fixed: these bins never change between processes, machines or versions.
    assert [stable_token_bin(t) for t in ("dog", "the", "temporal")] == [9, 14, 8]


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_text_feature_is_the_same_under_any_hash_seed(hash_seed: str) -> None:
    code = "from gdo_core.descriptors.features import text_feature; print(text_feature('a red ball', 'it rolls').tolist())"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(text_feature("a red ball", "it rolls").tolist())


def test_vision_feature_is_rgb_mean_then_std() -> None:
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 2] = 255  # OpenCV frames are BGR
    half = np.full((2, 2, 3), 0, dtype=np.uint8)
    feature = vision_feature([red])
    np.testing.assert_allclose(feature, [1, 0, 0, 0, 0, 0], atol=1e-6)
    # Pixels are pooled over frames: 16 red pixels and 4 black ones.
    pooled = vision_feature([red, half])
    share = 16 / 20
    np.testing.assert_allclose(pooled[:3], [share, 0, 0], atol=1e-6)
    assert pooled[3] == pytest.approx(np.sqrt(share * (1 - share)), abs=1e-6)


def test_vision_feature_without_frames_is_zero() -> None:
    assert not vision_feature([]).any()
