"""Model signals (docs/method.md, Descriptors): loss_video, loss_blind, VDS, PPL, TNC and SC.

VDS = loss_blind - loss_video (mean answer cross-entropy without and with the frames);
PPL = exp(clip(loss_video, -30, 30)); TNC asks the model (or a regex) whether the question
is temporal; SC is the mean pairwise Jaccard of N sampled answers' token sets.
Batched: the frames of a batch are encoded by the vision tower once and shared by the loss
pass and the SC generation; SC takes one `generate` with `num_return_sequences=N`; padding is
on the left with attention masks, so every QA's numbers match its one-at-a-time numbers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gdo_core.strata import TOKEN_PATTERN, is_temporal_question

if TYPE_CHECKING:
    import torch

LOSS_CLIP = 30.0  # PPL = exp(clip(loss_video, -LOSS_CLIP, LOSS_CLIP))
IGNORE_INDEX = -100
SC_SAMPLES = 5
SC_TOP_P = 0.9
SC_TEMPERATURE = 0.8
SC_MAX_NEW_TOKENS = 32
SC_DISABLED = -1.0
HF_DEFAULT_TOP_K = 50  # SC when disabled or the QA has no readable visuals
TNC_MAX_NEW_TOKENS = 3
TNC_PROMPT = (
    "Decide if the question requires temporal reasoning over multiple frames.\n"
    "Answer only one word: Temporal or Static.\nQuestion: {question}"
)
TNC_TEMPORAL, TNC_STATIC, TNC_UNDECIDED = 1.0, 0.0, 0.5
TNC_LLM, TNC_REGEX = "llm", "regex"
TNC_MODES: tuple[str, ...] = (TNC_LLM, TNC_REGEX)
DEFAULT_BATCH_SIZE = 8
# torch is imported where it is used, so that loading the Dagster definitions does not pay for it.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

_TOKEN_RE = re.compile(TOKEN_PATTERN)


# ---- the statistics themselves ------------------------------------------------------------


def perplexity(loss_video: float) -> float:
    """PPL = exp(clip(loss_video, -30, 30))."""
    return math.exp(min(max(loss_video, -LOSS_CLIP), LOSS_CLIP))


def token_set(text: str) -> frozenset[str]:
    """Lower-cased `[A-Za-z0-9_]+` tokens of a text, as a set."""
    return frozenset(_TOKEN_RE.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two texts' token sets; two empty sets give 1.0."""
    left, right = token_set(a), token_set(b)
    if not left and not right:
        return 1.0
    return len(left & right) / len(left | right)


def self_consistency(answers: Sequence[str]) -> float:
    """SC: mean Jaccard over all pairs of sampled answers (-1 with fewer than two)."""
    pairs = list(itertools.combinations(answers, 2))
    if not pairs:
        return SC_DISABLED
    return float(np.mean([jaccard(a, b) for a, b in pairs]))


def tnc_from_reply(reply: str) -> float:
    """TNC from the model's reply: 1.0 'temporal', 0.0 'static', else 0.5."""
    text = reply.strip().lower()
    if "temporal" in text:
        return TNC_TEMPORAL
    if "static" in text:
        return TNC_STATIC
    return TNC_UNDECIDED


def tnc_regex(question: str) -> float:
    """TNC by the temporal-cue regex of the stratum fields: 1.0 on a match, else 0.0."""
    return TNC_TEMPORAL if is_temporal_question(question) else TNC_STATIC


def sample_seed(base_seed: int, question: str, answer: str, frames: Sequence[str]) -> int:
    """A 63-bit seed for a QA's SC samples from its content (stable across runs and batches)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (str(base_seed), question, answer, *frames):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "little") >> 1


def row_seed(qa_seed: int, sample: int) -> int:
    """Seed of one SC sample of a QA (independent streams per sample)."""
    return sample_seed(qa_seed, "sample", str(sample), ())


# ---- inputs and outputs -------------------------------------------------------------------


@dataclass
class QAInput:
    """One QA for the model: texts, decoded RGB frames, a key naming its frame list, SC seed."""

    question: str
    answer: str
    images: list[np.ndarray]
    frames_key: str
    seed: int


@dataclass
class ModelSignals:
    """The model descriptors of one QA (None where the pass failed)."""

    loss_video: float | None = None
    loss_blind: float | None = None
    vds: float | None = None
    ppl: float | None = None
    sc: float = SC_DISABLED
    answers: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class SignalSettings:
    """What the model pass computes: TNC mode, SC sample count, batch size, seed."""

    tnc_mode: str = TNC_LLM
    sc_samples: int = SC_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tnc_mode not in TNC_MODES:
            raise ValueError(f"tnc_mode must be one of {TNC_MODES}, got {self.tnc_mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def key_fields(self) -> dict[str, Any]:
        """The settings that change results (batch size does not)."""
        return {
            "tnc_mode": self.tnc_mode,
            "tnc_prompt": TNC_PROMPT,
            "tnc_max_new_tokens": TNC_MAX_NEW_TOKENS,
            "sc_samples": self.sc_samples,
            "sc_top_p": SC_TOP_P,
            "sc_temperature": SC_TEMPERATURE,
            "sc_max_new_tokens": SC_MAX_NEW_TOKENS,
            "loss_clip": LOSS_CLIP,
            "seed": self.seed,
        }


class SeededSampler:
    """SC sampling (temperature, top-k, top-p, draw) with one seeded generator per row."""

    # Each row draws from its own generator, so a QA's samples depend on its seed alone,
    # not on the global RNG or on which QAs share its batch.

    def __init__(
        self, seeds: Sequence[int], top_k: int, temperature: float = SC_TEMPERATURE, top_p: float = SC_TOP_P
    ) -> None:
        import torch
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.top_k, self.temperature, self.top_p = top_k, temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Same filters and order as transformers' Temperature, TopK and TopP warpers.
        import torch
        k = min(self.top_k, scores.shape[-1]) if self.top_k > 0 else scores.shape[-1]
        top, ids = torch.topk(scores.float() / self.temperature, k, dim=-1)  # descending
        probs = torch.softmax(top, dim=-1).cpu()
        tail_mass = probs.flip(-1).cumsum(-1).flip(-1) - probs  # mass of the tokens below each one
        keep = tail_mass + probs > 1 - self.top_p  # ascending cumsum > 1 - top_p survives
        keep[:, 0] = True
        probs = probs * keep
        cdf = probs.cumsum(-1)
        draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        picks = torch.searchsorted(cdf.double(), (draws * cdf[:, -1].double()).unsqueeze(-1)).clamp(max=k - 1)
        # Under greedy decoding the drawn token must be the argmax: lift it above everything.
        scores[torch.arange(scores.shape[0]), ids.gather(-1, picks.to(ids.device)).squeeze(-1)] = float("inf")
        return scores


def sampling_kwargs(seeds: Sequence[int], top_k: int) -> dict[str, Any]:
    """`generate` arguments for SC: greedy decoding over the token our sampler drew."""
    # Not do_sample: transformers' own multinomial over a 152k vocabulary costs ~80 ms a step
    # on a CPU, and the draw is ours anyway.
    return {
        "do_sample": False,
        "max_new_tokens": SC_MAX_NEW_TOKENS,
        "logits_processor": [SeededSampler(seeds, top_k)],
    }


# ---- the model ----------------------------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class SignalModel:
    """A Qwen-VL-style model and its processor, loaded once, computing the model signals."""

    def __init__(self, model: Any, processor: Any, device: str, dtype: torch.dtype, fingerprint: str) -> None:
        import torch
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        self.merge_size = processor.image_processor.merge_size
        self.pad_token_id = self.tokenizer.pad_token_id
        eos = model.generation_config.eos_token_id
        self.eos_token_id = eos if eos is not None else self.tokenizer.eos_token_id
        # The published call sets only top_p and temperature; top-k comes from the model's
        # generation config, else transformers' default.
        self.sc_top_k = int(model.generation_config.top_k or HF_DEFAULT_TOP_K)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        device: str = "cpu",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        fingerprint: str | None = None,
    ) -> SignalModel:
        """Load a model directory (save_pretrained layout) and its processor."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU")
        dtype_name = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        if dtype_name not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
        torch_dtype = getattr(torch, dtype_name)
        processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        model.to(device).eval()
        return cls(model, processor, device, torch_dtype, fingerprint or model_fingerprint_of(model_dir))

    # -- encoding -------------------------------------------------------------------------

    def chat_text(self, question: str, answer: str | None, n_images: int) -> str:
        """The chat-template text of a user turn (n image entries, then the question), plus the answer."""
        user = {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}
        if answer is None:
            return self.processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
        assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        return self.processor.apply_chat_template([user, assistant], tokenize=False)

    def encode_images(self, items: Sequence[QAInput]) -> tuple[dict[str, Any] | None, list[list[int]]]:
        """Vision outputs per image in QA order (each frame list encoded once) and tokens per image per QA."""
        import torch
        distinct: dict[str, list[np.ndarray]] = {}
        for item in items:
            if item.images:
                distinct.setdefault(item.frames_key, item.images)
        if not distinct:
            return None, [[] for _ in items]
        keys = list(distinct)
        images = [image for key in keys for image in distinct[key]]
        pixels = self.processor.image_processor(images=images, return_tensors="pt")
        grid = pixels["image_grid_thw"]
        with torch.inference_mode():
            vision = self.model.model.get_image_features(
                pixels["pixel_values"].to(self.device, self.dtype), grid.to(self.device), return_dict=True
            )
        start: dict[str, int] = {}
        offset = 0
        for key in keys:
            start[key] = offset
            offset += len(distinct[key])
        order = [start[item.frames_key] + i for item in items for i in range(len(item.images))]
        tokens_per_image = (grid.prod(-1) // self.merge_size**2).tolist()
        counts = [[tokens_per_image[start[item.frames_key] + i] for i in range(len(item.images))] for item in items]
        encoded = {
            "pooler_output": [vision.pooler_output[i] for i in order],
            "deepstack_features": [[layer[i] for i in order] for layer in vision.deepstack_features],
            "image_grid_thw": grid[order],
        }
        return encoded, counts

    def _mm_outputs(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """A fresh encoder-output object for one model call (generate rewrites it in place)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        output = BaseModelOutputWithPooling(pooler_output=tuple(encoded["pooler_output"]))
        output.deepstack_features = [tuple(layer) for layer in encoded["deepstack_features"]]
        return {"image": output}

    def _expand(self, text: str, counts: Sequence[int]) -> str:
        """Each image placeholder repeated to its token count, as the processor does."""
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(counts):
            raise ValueError(f"chat template produced {len(parts) - 1} image placeholders for {len(counts)} images")
        out = [parts[0]]
        for count, part in zip(counts, parts[1:]):
            out.append(self.image_token * count)
            out.append(part)
        return "".join(out)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded ids, attention mask and modality ids (1 on image tokens) on the device."""
        import torch
        batch = self.tokenizer(list(texts), padding=True, padding_side="left", return_tensors="pt")
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).to(torch.int32)
        return {k: v.to(self.device) for k, v in batch.items()}

    # -- signals --------------------------------------------------------------------------

    def answer_losses(
        self, items: Sequence[QAInput], encoded: dict[str, Any] | None, counts: Sequence[Sequence[int]]
    ) -> list[float]:
        """Mean answer cross-entropy per QA; with visuals when `encoded` is given, else blind."""
        import torch
        with_visuals = encoded is not None
        prompts, fulls = [], []
        for item, item_counts in zip(items, counts):
            n = len(item_counts) if with_visuals else 0
            prompts.append(self._expand(self.chat_text(item.question, None, n), item_counts[:n]))
            fulls.append(self._expand(self.chat_text(item.question, item.answer, n), item_counts[:n]))
        prompt_lens = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        batch = self.tokenize(fulls)
        full_lens = batch["attention_mask"].sum(-1).tolist()
        scored = [full - prompt for full, prompt in zip(full_lens, prompt_lens)]
        if min(scored) < 1:
            raise ValueError("the chat template left no answer tokens to score")
        keep = max(scored) + 1
        kwargs: dict[str, Any] = {"use_cache": False, "logits_to_keep": keep}
        if with_visuals and any(counts):
            kwargs["mm_encoder_outputs"] = self._mm_outputs(encoded)
            kwargs["image_grid_thw"] = encoded["image_grid_thw"].to(self.device)
        else:
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions
            batch.pop("mm_token_type_ids")
        with torch.inference_mode():
            logits = self.model(**batch, **kwargs).logits.float()
        # Kept logits at positions L-keep..L-1 predict the tokens at L-keep+1..L (the last is unused).
        targets = batch["input_ids"][:, -keep + 1 :]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(len(items), keep - 1)
        column = torch.arange(keep - 1, device=losses.device)
        mask = column[None, :] >= (keep - 1 - torch.tensor(scored, device=losses.device))[:, None]
        return ((losses * mask).sum(-1) / mask.sum(-1)).tolist()

    def sample_answers(
        self, items: Sequence[QAInput], encoded: dict[str, Any], counts: Sequence[Sequence[int]], n: int
    ) -> list[list[str]]:
        """n sampled answers per QA from one `generate` over each prompt repeated n times (vision shared)."""
        import torch
        prompts = [self._expand(self.chat_text(it.question, None, len(c)), c) for it, c in zip(items, counts)]
        batch = self.tokenize([p for p in prompts for _ in range(n)])
        rows = [i for i in range(len(items)) for _ in range(n)]
        repeated = _select_images(encoded, counts, rows)
        seeds = [row_seed(items[i].seed, k) for i in range(len(items)) for k in range(n)]  # QA-major rows
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                mm_encoder_outputs=self._mm_outputs(repeated),
                image_grid_thw=repeated["image_grid_thw"].to(self.device),
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
                **sampling_kwargs(seeds, self.sc_top_k),
            )
        texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return [texts[i * n : (i + 1) * n] for i in range(len(items))]

    def tnc(self, questions: Sequence[str]) -> list[float]:
        """TNC by asking the model, text only and greedy, at most 3 new tokens."""
        import torch
        prompts = [self.chat_text(TNC_PROMPT.format(question=q), None, 0) for q in questions]
        batch = self.tokenize(prompts)
        batch.pop("mm_token_type_ids")
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=TNC_MAX_NEW_TOKENS,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
            )
        replies = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [tnc_from_reply(r) for r in replies]

    def signals(self, items: Sequence[QAInput], sc_samples: int) -> list[ModelSignals]:
        """Losses, VDS, PPL and SC of a batch of QAs (one vision pass shared by loss and SC)."""
        encoded, counts = self.encode_images(items)
        blind = self.answer_losses(items, None, counts)
        seen = [i for i, c in enumerate(counts) if c]
        video = list(blind)
        if seen:
            seen_items, seen_counts = [items[i] for i in seen], [counts[i] for i in seen]
            seen_encoded = _select_images(encoded, counts, seen)
            for i, loss in zip(seen, self.answer_losses(seen_items, seen_encoded, seen_counts)):
                video[i] = loss
        answers: list[list[str]] = [[] for _ in items]
        if sc_samples >= 2 and seen:
            for i, sampled in zip(seen, self.sample_answers(seen_items, seen_encoded, seen_counts, sc_samples)):
                answers[i] = sampled
        out = []
        for i in range(len(items)):
            sc = self_consistency(answers[i]) if answers[i] else SC_DISABLED
            out.append(ModelSignals(video[i], blind[i], blind[i] - video[i], perplexity(video[i]), sc, answers[i]))
        return out


def _select_images(encoded: dict[str, Any], counts: Sequence[Sequence[int]], rows: Sequence[int]) -> dict[str, Any]:
    """The encoder outputs of the chosen QAs only (for batches mixing QAs with and without frames)."""
    starts = list(itertools.accumulate((len(c) for c in counts), initial=0))
    index = [j for r in rows for j in range(starts[r], starts[r + 1])]
    return {
        "pooler_output": [encoded["pooler_output"][j] for j in index],
        "deepstack_features": [[layer[j] for j in index] for layer in encoded["deepstack_features"]],
        "image_grid_thw": encoded["image_grid_thw"][index],
    }


def model_fingerprint_of(model_dir: Path) -> str:
    """Fingerprint of a model directory (gdo_core.tiny_model's, which hashes config and weights)."""
    from gdo_core.tiny_model import model_fingerprint

    return model_fingerprint(model_dir)


# ---- batching with failure isolation ------------------------------------------------------


def run_split_on_failure(
    items: Sequence[Any], compute: Callable[[Sequence[Any]], list[Any]], on_error: Callable[[Any, str], Any]
) -> list[Any]:
    """compute(items), halving a failing batch (OOM or other) down to single items, whose failure is on_error."""
    import torch
    try:
        return compute(items)
    except Exception as exc:  # noqa: BLE001 - one bad QA or an OOM must not lose the batch
        if _is_oom(exc) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) == 1:
            return [on_error(items[0], f"model pass failed: {type(exc).__name__}: {exc}"[:500])]
        half = len(items) // 2
        return run_split_on_failure(items[:half], compute, on_error) + run_split_on_failure(
            items[half:], compute, on_error
        )


def compute_signals(model: SignalModel, items: Sequence[QAInput], sc_samples: int) -> list[ModelSignals]:
    """Model signals of one batch; failures are isolated to the QAs that cause them."""
    return run_split_on_failure(
        list(items), lambda batch: model.signals(batch, sc_samples), lambda _item, msg: ModelSignals(error=msg)
    )


def compute_tnc(model: SignalModel, questions: Sequence[str]) -> list[float | None]:
    """LLM TNC per question; None where the model pass failed."""
    return run_split_on_failure(list(questions), model.tnc, lambda _q, _msg: None)


# ---- the published way, one QA at a time (reference for tests and the benchmark) ---------


def published_signals(model: SignalModel, item: QAInput, sc_samples: int, tnc_mode: str) -> tuple[ModelSignals, float]:
    """One QA as the published code does it: processor per pass, 2 forwards, TNC, N generate calls."""
    import torch
    n = len(item.images)
    proc = model.processor

    def loss(with_visuals: bool) -> float:
        k = n if with_visuals else 0
        images = item.images if k else None
        prompt = proc(text=[model.chat_text(item.question, None, k)], images=images, return_tensors="pt")
        full = proc(text=[model.chat_text(item.question, item.answer, k)], images=images, return_tensors="pt")
        labels = full["input_ids"].clone()
        labels[:, : prompt["input_ids"].shape[1]] = IGNORE_INDEX
        inputs = {key: v.to(model.device) for key, v in full.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            return float(model.model(**inputs, labels=labels.to(model.device), use_cache=False).loss)

    loss_video, loss_blind = loss(True), loss(False)
    if tnc_mode == TNC_LLM:
        tnc_prompt = proc(text=[model.chat_text(TNC_PROMPT.format(question=item.question), None, 0)], return_tensors="pt")
        tnc_prompt = {k: v.to(model.device) for k, v in tnc_prompt.items() if k != "mm_token_type_ids"}
        with torch.inference_mode():
            out = model.model.generate(
                **tnc_prompt, do_sample=False, max_new_tokens=TNC_MAX_NEW_TOKENS,
                pad_token_id=model.pad_token_id, eos_token_id=model.eos_token_id,
            )
        tnc = tnc_from_reply(model.tokenizer.decode(out[0, tnc_prompt["input_ids"].shape[1] :], skip_special_tokens=True))
    else:
        tnc = tnc_regex(item.question)
    answers: list[str] = []
    if n and sc_samples >= 2:
        prompt = proc(text=[model.chat_text(item.question, None, n)], images=item.images, return_tensors="pt")
        prompt = {k: v.to(model.device) for k, v in prompt.items()}
        prompt["pixel_values"] = prompt["pixel_values"].to(model.dtype)
        for k in range(sc_samples):
            with torch.inference_mode():
                out = model.model.generate(
                    **prompt, **sampling_kwargs([row_seed(item.seed, k)], model.sc_top_k),
                    pad_token_id=model.pad_token_id, eos_token_id=model.eos_token_id,
                )
            answers.append(model.tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    sc = self_consistency(answers) if answers else SC_DISABLED
    return ModelSignals(loss_video, loss_blind, loss_blind - loss_video, perplexity(loss_video), sc, answers), tnc
