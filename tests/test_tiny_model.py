"""The tiny Qwen3-VL: reloadable through the Auto classes, real Qwen special ids, finite loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from gdo_core.tiny_model import QWEN_ADDED_TOKENS, build_tiny_model, model_fingerprint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model built once for this module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[torch.nn.Module, object]:
    """Model and processor reloaded through the Auto classes."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def _frames(n: int) -> list[Image.Image]:
    """n 64x64 frames of a square moving right."""
    out = []
    for t in range(n):
        arr = np.full((64, 64, 3), 240, dtype=np.uint8)
        arr[24:40, 4 + 6 * t : 20 + 6 * t] = (220, 30, 30)
        out.append(Image.fromarray(arr))
    return out


def _user(n_images: int, question: str) -> dict:
    """A user turn: the frames as separate image entries, then the question."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    return {"role": "user", "content": content}


def test_special_tokens_sit_at_real_qwen_ids(loaded: tuple[torch.nn.Module, object]) -> None:
    model, processor = loaded
    tok = processor.tokenizer
    for token_id, content, _ in QWEN_ADDED_TOKENS:
        assert tok.convert_tokens_to_ids(content) == token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 151643
    assert (model.config.image_token_id, model.config.video_token_id) == (151655, 151656)
    assert (model.config.vision_start_token_id, model.config.vision_end_token_id) == (
        151652,
        151653,
    )
    assert model.config.text_config.vocab_size >= 151669
    text = "What colour is the red circle? It moves left."
    assert tok.decode(tok(text).input_ids) == text


def test_forward_loss_with_two_images_is_finite(loaded: tuple[torch.nn.Module, object]) -> None:
    model, processor = loaded
    images = _frames(2)
    user = _user(2, "In which direction does the red square move?")
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert prompt.count("<|image_pad|>") == 2 and prompt.endswith("<|im_start|>assistant\n")
    full = processor.apply_chat_template(
        [user, {"role": "assistant", "content": [{"type": "text", "text": "It moves right."}]}],
        tokenize=False,
    )
    assert full.startswith(prompt)
    p = processor(text=[prompt], images=images, return_tensors="pt")
    f = processor(text=[full], images=images, return_tensors="pt")
    # 64x64 frames are not upscaled: 4x4 patches of 16 px, merged 2x2 into 4 tokens each.
    assert f["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    labels = f["input_ids"].clone()
    labels[:, : p["input_ids"].shape[1]] = -100
    with torch.no_grad():
        loss = model(**f, labels=labels).loss
    assert torch.isfinite(loss) and 0 < loss.item() < 30


def test_generate_runs(loaded: tuple[torch.nn.Module, object]) -> None:
    model, processor = loaded
    prompt = processor.apply_chat_template(
        [_user(2, "What moves?")], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(text=[prompt], images=_frames(2), return_tensors="pt")
    n_in = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert 0 < out.shape[1] - n_in <= 4
    text_only = processor(
        text=[
            processor.apply_chat_template(
                [{"role": "user", "content": "Temporal or Static?"}],
                add_generation_prompt=True,
                tokenize=False,
            )
        ],
        return_tensors="pt",
    )
    n_text = text_only["input_ids"].shape[1]
    sampled = []
    for _ in range(2):  # seeded sampling: the same tokens twice
        torch.manual_seed(3)
        out = model.generate(
            **text_only, max_new_tokens=3, do_sample=True, top_p=0.9, temperature=0.8
        )
        assert out[0, :n_text].tolist() == text_only["input_ids"][0].tolist()  # prompt kept
        sampled.append(out[0, n_text:].tolist())
    assert sampled[0] == sampled[1] and 0 < len(sampled[0]) <= 3
    assert all(0 <= t < model.config.text_config.vocab_size for t in sampled[0])


def test_build_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert model_fingerprint(again) == model_fingerprint(model_dir)
    assert model_fingerprint(other) != model_fingerprint(model_dir)
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 2**20
    assert size_mb < 80


def test_fingerprint_rejects_non_model_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        model_fingerprint(tmp_path)
