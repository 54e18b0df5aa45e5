"""Model signals: the statistics on fixed inputs, and the batched pass against the one-QA-at-a-time one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gdo_core.descriptors.model_signals import (
    SC_DISABLED,
    ModelSignals,
    QAInput,
    SeededSampler,
    SignalModel,
    compute_signals,
    jaccard,
    perplexity,
    published_signals,
    run_split_on_failure,
    self_consistency,
    tnc_from_reply,
    tnc_regex,
)

# ---- the statistics -----------------------------------------------------------------------


def test_jaccard_on_fixed_strings() -> None:
    assert jaccard("a red ball", "the red ball") == pytest.approx(2 / 4)
    assert jaccard("Red, BALL!", "ball red") == 1.0  # lower-cased word tokens, punctuation ignored
    assert jaccard("", "") == 1.0
    assert jaccard("", "ball") == 0.0
    assert jaccard("cat", "dog") == 0.0


def test_self_consistency_is_mean_pairwise_jaccard() -> None:
    assert self_consistency(["a b", "a b", "a c"]) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert self_consistency(["same", "same", "same", "same", "same"]) == 1.0
    assert self_consistency(["only one"]) == SC_DISABLED
    assert self_consistency([]) == SC_DISABLED


@pytest.mark.parametrize(
    ("reply", "score"),
    [("Temporal", 1.0), (" temporal.", 1.0), ("Static", 0.0), ("STATIC!", 0.0), ("Maybe", 0.5), ("", 0.5)],
)
def test_tnc_from_reply(reply: str, score: float) -> None:
    assert tnc_from_reply(reply) == score


@pytest.mark.parametrize(
    ("question", "score"),
    [
        ("What happens after the ball falls?", 1.0),
        ("What does she do FIRST?", 1.0),
        ("Describe the transition between scenes.", 1.0),
        ("What colour is the ball?", 0.0),
        ("Is this afterwards or thereafter?", 0.0),  # whole words only
    ],
)
def test_tnc_regex(question: str, score: float) -> None:
    assert tnc_regex(question) == score


def test_perplexity_is_exp_of_clipped_loss() -> None:
    assert perplexity(1.5) == pytest.approx(math.exp(1.5))
    assert perplexity(100.0) == pytest.approx(math.exp(30.0))
    assert perplexity(-100.0) == pytest.approx(math.exp(-30.0))


def test_sampler_rows_depend_only_on_their_seed() -> None:
    torch.manual_seed(0)
    scores = torch.randn(3, 500)
    alone = SeededSampler([7], top_k=50)(None, scores[:1].clone()).argmax(-1)
    together = SeededSampler([7, 8, 9], top_k=50)(None, scores.clone()).argmax(-1)
    assert alone.item() == together[0].item()
    picks = {SeededSampler([s], top_k=50)(None, scores[:1].clone()).argmax(-1).item() for s in range(40)}
    assert len(picks) > 1  # it does sample


def test_sampler_applies_top_p() -> None:
    scores = torch.full((1, 100), -10.0)
    scores[0, 42] = 10.0  # ~all of the mass: top-p 0.9 keeps this token alone
    picks = {SeededSampler([s], top_k=50)(None, scores.clone()).argmax(-1).item() for s in range(30)}
    assert picks == {42}


def test_failing_batches_are_split_down_to_the_bad_item() -> None:
    calls: list[list[str]] = []

    def compute(batch: list[str]) -> list[str]:
        calls.append(list(batch))
        if "bad" in batch:
            raise RuntimeError("CUDA out of memory")
        return [f"ok:{x}" for x in batch]

    out = run_split_on_failure(["a", "b", "bad", "c"], compute, lambda item, msg: f"error:{item}:{msg[:17]}")
    assert out == ["ok:a", "ok:b", "error:bad:model pass failed", "ok:c"]
    assert calls[0] == ["a", "b", "bad", "c"] and ["a", "b"] in calls


# ---- on the tiny model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SignalModel:
    from gdo_core.tiny_model import build_tiny_model

    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    return SignalModel.load(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


def _frames(n: int, seed: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _mixed_batch() -> list[QAInput]:
    video = _frames(4, seed=1)
    return [
        QAInput("What happens after the square moves?", "It stops near the edge.", video, "v1", 11),
        QAInput("What colour is the square?", "Red.", video, "v1", 12),
        QAInput("How many objects are in the image?", "There are two objects.", _frames(1, 2, 96, 64), "i2", 13),
        QAInput("Which way does it move?", "Left, then right, then left again.", _frames(6, 3), "v3", 14),
        QAInput("Describe the scene.", "Shapes on a plain background.", [], "none", 15),
    ]


def test_our_encoding_matches_the_processor(tiny: SignalModel) -> None:
    item = _mixed_batch()[3]
    encoded, counts = tiny.encode_images([item])
    text = tiny.chat_text(item.question, item.answer, len(item.images))
    ours = tiny.tokenize([tiny._expand(text, counts[0])])
    theirs = tiny.processor(text=[text], images=item.images, return_tensors="pt")
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["mm_token_type_ids"].tolist() == theirs["mm_token_type_ids"].tolist()
    assert encoded["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist()


def test_batched_signals_equal_one_at_a_time(tiny: SignalModel) -> None:
    items = _mixed_batch()
    batched = compute_signals(tiny, items, sc_samples=3)
    for item, signal in zip(items, batched):
        reference, _ = published_signals(tiny, item, sc_samples=3, tnc_mode="regex")
        assert signal.error is None
        assert signal.loss_video == pytest.approx(reference.loss_video, abs=1e-4)
        assert signal.loss_blind == pytest.approx(reference.loss_blind, abs=1e-4)
        assert signal.answers == reference.answers  # per-QA seeds: same samples in any batch
        assert signal.sc == reference.sc


def test_definitions_hold_per_qa(tiny: SignalModel) -> None:
    items = _mixed_batch()
    for item, signal in zip(items, compute_signals(tiny, items, sc_samples=2)):
        assert signal.vds == pytest.approx(signal.loss_blind - signal.loss_video)
        assert signal.ppl == pytest.approx(math.exp(min(signal.loss_video, 30.0)))
        if item.images:
            assert len(signal.answers) == 2 and -1.0 < signal.sc <= 1.0
        else:  # no visuals: loss_video is the blind loss, SC is disabled
            assert signal.loss_video == signal.loss_blind and signal.sc == SC_DISABLED


def test_tnc_llm_gives_a_score_per_question(tiny: SignalModel) -> None:
    questions = ["What happens after the ball falls?", "What colour is it?", "Why?"]
    scores = tiny.tnc(questions)
    assert len(scores) == 3 and all(s in (0.0, 0.5, 1.0) for s in scores)
    assert tiny.tnc(questions) == scores  # greedy: the same replies again


def test_tnc_llm_reads_each_reply_after_its_prompt(
    tiny: SignalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for generate that appends known replies to the (left-padded) prompts: each
    question gets the score of its own reply, with padding and special tokens ignored."""
    replies = [" Temporal", "Static.", "Maybe"]
    seen: dict = {}

    def generate(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.update(kwargs, rows=input_ids.shape[0])
        new = [tiny.tokenizer(r, add_special_tokens=False).input_ids for r in replies]
        width = max(len(ids) for ids in new) + 1  # every reply ends in at least one pad token
        tails = [ids + [tiny.pad_token_id] * (width - len(ids)) for ids in new]
        return torch.cat([input_ids, torch.tensor(tails)], dim=1)

    monkeypatch.setattr(tiny.model, "generate", generate)
    scores = tiny.tnc(["What happens after the ball falls?", "What colour is it?", "Why?"])
    assert scores == [1.0, 0.0, 0.5]
    assert seen["rows"] == 3 and seen["do_sample"] is False and seen["max_new_tokens"] == 3


def test_a_failing_qa_keeps_the_rest_of_its_batch(tiny: SignalModel, monkeypatch: pytest.MonkeyPatch) -> None:
    original = SignalModel.signals

    def signals(self: SignalModel, items: list[QAInput], n: int) -> list[ModelSignals]:
        if any(item.question == "boom" for item in items):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, items, n)

    monkeypatch.setattr(SignalModel, "signals", signals)
    items = _mixed_batch()[:2] + [QAInput("boom", "x", [], "none", 1)]
    out = compute_signals(tiny, items, sc_samples=0)
    assert [o.error is None for o in out] == [True, True, False]
    assert "out of memory" in out[2].error and out[2].loss_video is None


def test_vds_is_positive_when_the_answer_needs_the_picture(tmp_path: Path) -> None:
    """Fit a fresh tiny model on two QAs whose answer is the image colour: without the picture
    the model cannot tell them apart, so the blind loss must exceed the loss with the picture."""
    from gdo_core.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SignalModel.load(build_tiny_model(tmp_path / "fit"))
    solid = lambda rgb: [np.tile(np.array(rgb, np.uint8), (32, 32, 1))]
    items = [
        QAInput("What colour is the image?", "red", solid((255, 0, 0)), "r", 1),
        QAInput("What colour is the image?", "blue", solid((0, 0, 255)), "b", 2),
    ]
    examples = []
    for item in items:
        prompt = model.processor(text=[model.chat_text(item.question, None, 1)], images=item.images, return_tensors="pt")
        full = model.processor(text=[model.chat_text(item.question, item.answer, 1)], images=item.images, return_tensors="pt")
        labels = full["input_ids"].clone()
        labels[:, : prompt["input_ids"].shape[1]] = -100
        examples.append((full, labels))
    optimiser = torch.optim.Adam(model.model.parameters(), lr=3e-3)
    model.model.train()
    for _ in range(25):
        for full, labels in examples:
            optimiser.zero_grad()
            model.model(**full, labels=labels).loss.backward()
            optimiser.step()
    model.model.eval()
    red, blue = compute_signals(model, items, sc_samples=0)
    assert red.vds > 0 and blue.vds > 0
    # Blind, p(red) + p(blue) <= 1 on the colour token: the two blind losses cannot both be small.
    assert red.vds + blue.vds > 0.3
