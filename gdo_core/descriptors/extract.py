"""Descriptor extraction: every descriptor of every QA of a pool chunk, cached per QA, one shard per chunk.

Motion runs once per distinct frame list of the QAs not in the cache (in threads); the model
pass runs in batches ordered by frame list, so QAs of one video share a batch and its vision
pass. Shards follow DESCRIPTOR_SCHEMA, one row per QA in the chunk's order, and are written to a
temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import polars as pl

from gdo_core.descriptors.cache import DescriptorCache, content_key, frame_stats
from gdo_core.descriptors.features import text_feature
from gdo_core.descriptors.model_signals import (
    DEFAULT_BATCH_SIZE,
    SC_DISABLED,
    SC_SAMPLES,
    TNC_LLM,
    TNC_MODES,
    TNC_REGEX,
    QAInput,
    SignalModel,
    SignalSettings,
    compute_signals,
    compute_tnc,
    sample_seed,
    tnc_regex,
)
from gdo_core.descriptors.motion import MOTION_SETTINGS, MotionResult, motion_for_lists, read_bgr
from gdo_core.pool import write_parquet_atomic
from gdo_core.schema import DESCRIPTOR_SCHEMA

QA_COLUMNS: tuple[str, ...] = ("qa_uid", "question", "answer", "frames", "question_len", "answer_len")
ALL_UNREADABLE = "all {n} frames unreadable"
TNC_FAILED = "TNC model pass failed"
CACHE_DIR_NAME = "cache"
# Small files of a model folder that change what it computes besides config and weights.
MODEL_AUX_SUFFIXES: tuple[str, ...] = (".json", ".jinja", ".txt", ".model", ".tiktoken")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin")


@dataclass(frozen=True)
class DescriptorSettings:
    """How descriptors are computed; every field but batch size, workers and device index is in the cache key."""

    model_dir: Path | None = None
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    tnc_mode: str = TNC_LLM
    sc_samples: int = SC_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    motion_only: bool = False  # no model: losses null, SC -1, TNC by regex
    seed: int = 0
    motion_workers: int | None = None  # None: one thread per available core
    trust_remote_code: bool = False
    torch_threads: int | None = None  # None: torch's default; 1 is fastest for tiny models on busy CPUs

    def __post_init__(self) -> None:
        if self.tnc_mode not in TNC_MODES:
            raise ValueError(f"tnc_mode must be one of {TNC_MODES}, got {self.tnc_mode!r}")
        if self.sc_samples < 0:
            raise ValueError(f"sc_samples must be >= 0, got {self.sc_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not self.motion_only and self.model_dir is None:
            raise ValueError("a model directory is needed for the model signals (or use motion_only)")

    @property
    def dtype_name(self) -> str:
        """The dtype the model runs in."""
        return self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")

    @property
    def effective_tnc_mode(self) -> str:
        """TNC mode actually used: without a model, TNC falls back to the regex."""
        return TNC_REGEX if self.motion_only else self.tnc_mode

    @property
    def signal_settings(self) -> SignalSettings:
        """The model-pass part of the settings."""
        return SignalSettings(self.effective_tnc_mode, self.sc_samples, self.batch_size, self.seed)


@dataclass
class ChunkStats:
    """What describing one chunk did."""

    qa: int = 0
    computed: int = 0  # QA rows whose descriptors were computed in this run
    reused: int = 0  # QA rows served from the per-QA cache
    errors: int = 0
    frames_unreadable: int = 0
    frame_lists: int = 0  # distinct frame lists that went through motion
    motion_seconds: float = 0.0
    model_seconds: float = 0.0

    def add(self, other: ChunkStats) -> None:
        """Accumulate another chunk's counts."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_metadata(self) -> dict[str, Any]:
        """Plain numbers for logs and asset metadata."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class ExtractSummary:
    """What `extract_descriptors` wrote and did."""

    shards: list[Path]
    stats: ChunkStats
    seconds: float
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One-line summary for the CLI."""
        s = self.stats
        rate = s.qa / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{s.qa} QAs in {len(self.shards)} shards: {s.computed} computed, {s.reused} reused, "
            f"{s.errors} with errors, {s.frames_unreadable} unreadable frames; "
            f"{self.seconds:.1f} s ({rate:.2f} QA/s)"
        )


def model_key(model_dir: Path, cache: DescriptorCache | None) -> str:
    """Content key of a model folder: weights fingerprint (memoised by size/mtime) plus its small files."""
    from gdo_core.descriptors.model_signals import model_fingerprint_of

    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: not a model directory (no config.json)")
    files = sorted(p for p in root.iterdir() if p.is_file())
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    stamp = content_key(
        {"dir": str(root.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]}
        | {"config": (root / "config.json").read_text(encoding="utf-8")}
    )
    memo = cache.get_values("fingerprints", [stamp]) if cache is not None else {}
    fingerprint = memo.get(stamp)
    if fingerprint is None:
        fingerprint = model_fingerprint_of(root)  # hashes every weight byte: once per model version
        if cache is not None:
            cache.put_values("fingerprints", {stamp: fingerprint})
    aux = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.suffix in MODEL_AUX_SUFFIXES}
    return content_key({"weights": fingerprint, "aux": aux})


# Bump when a change to this package changes the descriptors it computes: every shard goes stale.
DESCRIPTOR_REVISION = 1


def model_stamp(model_dir: Path) -> str:
    """Cheap key of a model folder: its weight files' names, sizes and mtimes and its small files'
    bytes (no weight byte is read; a retrained or replaced model changes it)."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: not a model directory (no config.json)")
    files = sorted(p for p in root.iterdir() if p.is_file())
    return content_key(
        {
            "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.suffix in WEIGHT_SUFFIXES],
            "aux": {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.suffix in MODEL_AUX_SUFFIXES
            },
        }
    )


def code_version(settings: DescriptorSettings) -> str:
    """What a descriptor shard depends on besides its QA rows: the descriptor code revision, the
    settings that enter the per-QA cache key and the model's stamp (`model_stamp`). Changes when
    any of them does; batch size, threads and the device index do not count."""
    fields: dict[str, Any] = {
        "revision": DESCRIPTOR_REVISION,
        "motion": MOTION_SETTINGS,
        "motion_only": settings.motion_only,
        "signals": settings.signal_settings.key_fields(),
    }
    if not settings.motion_only:
        fields |= {
            "model": model_stamp(settings.model_dir),
            "dtype": settings.dtype_name,
            "device": settings.device.split(":")[0],
        }
    return content_key(fields)[:16]


def read_rgb(frames: Sequence[str]) -> tuple[list[np.ndarray], list[int]]:
    """Decoded RGB frames of a list, and the indices that could not be decoded."""
    images, unreadable = [], []
    for i, path in enumerate(frames):
        bgr = read_bgr(path)
        if bgr is None:
            unreadable.append(i)
        else:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return images, unreadable


def _join_errors(*notes: str | None) -> str | None:
    kept = [n for n in dict.fromkeys(notes) if n]
    return "; ".join(kept) if kept else None


class Describer:
    """Extraction state shared by the chunks of a run: settings, cache and the model (loaded on first need)."""

    def __init__(self, settings: DescriptorSettings, cache: DescriptorCache | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self._model: SignalModel | None = None
        self.model_fingerprint = None if settings.motion_only else model_key(settings.model_dir, cache)
        model_fields: dict[str, Any] = {}
        if not settings.motion_only:
            model_fields = {
                "model": self.model_fingerprint,
                "dtype": settings.dtype_name,
                "device": settings.device.split(":")[0],
            }
        signal_fields = settings.signal_settings.key_fields()
        self.settings_key = content_key(
            {"motion": MOTION_SETTINGS, "motion_only": settings.motion_only, "signals": signal_fields, **model_fields}
        )
        tnc_fields = {k: v for k, v in signal_fields.items() if k.startswith("tnc")}
        self.tnc_key = content_key({"tnc": tnc_fields, **model_fields})

    @property
    def model(self) -> SignalModel:
        """The model, loaded once."""
        if self._model is None:
            s = self.settings
            if s.torch_threads is not None:
                import torch

                torch.set_num_threads(s.torch_threads)
            self._model = SignalModel.load(
                s.model_dir, s.device, s.dtype_name, s.trust_remote_code, fingerprint=self.model_fingerprint
            )
        return self._model

    # -- keys ---------------------------------------------------------------------------------

    def qa_keys(self, questions: list[str], answers: list[str], frames: list[list[str]]) -> list[str]:
        """Content key per QA: texts, frame paths with size and mtime, settings and model."""
        stats = frame_stats(p for frame_list in frames for p in frame_list)
        return [
            content_key(
                {
                    "question": q,
                    "answer": a,
                    "frames": [[p, *(stats[p] or (None, None))] for p in frame_list],
                    "settings": self.settings_key,
                }
            )
            for q, a, frame_list in zip(questions, answers, frames)
        ]

    # -- one chunk ----------------------------------------------------------------------------

    def describe(self, qa: pl.DataFrame) -> tuple[pl.DataFrame, ChunkStats]:
        """Descriptor rows (DESCRIPTOR_SCHEMA, the chunk's order) for a frame of QA rows."""
        missing = [c for c in QA_COLUMNS if c not in qa.columns]
        if missing:
            raise ValueError(f"QA frame lacks columns {missing} (expected the QA_SCHEMA of gdo ingest)")
        uids = qa["qa_uid"].to_list()
        questions, answers = qa["question"].to_list(), qa["answer"].to_list()
        frames = [list(f) for f in qa["frames"].to_list()]
        q_lens, a_lens = qa["question_len"].to_list(), qa["answer_len"].to_list()
        keys = self.qa_keys(questions, answers, frames)
        cached = self.cache.get_rows(keys) if self.cache is not None else {}
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in cached:
                first.setdefault(key, i)
        stats = ChunkStats(qa=len(keys))
        rows: dict[str, dict[str, Any]] = {}
        if first:
            rows = self._compute(first, questions, answers, frames, q_lens, a_lens, stats)
        out = []
        for uid, key in zip(uids, keys):
            row = cached.get(key)
            if row is None:
                row = rows[key]
                stats.computed += 1
            else:
                stats.reused += 1
            stats.errors += row["error"] is not None
            stats.frames_unreadable += row["frames_unreadable"]
            out.append({**row, "qa_uid": uid})
        return pl.DataFrame(out, schema=DESCRIPTOR_SCHEMA), stats

    def _compute(
        self,
        first: dict[str, int],
        questions: list[str],
        answers: list[str],
        frames: list[list[str]],
        q_lens: list[int],
        a_lens: list[int],
        stats: ChunkStats,
    ) -> dict[str, dict[str, Any]]:
        """Rows for the keys not in the cache (first: key -> index of its first QA row)."""
        started = time.perf_counter()
        lists = list(dict.fromkeys(tuple(frames[i]) for i in first.values()))
        motion: dict[tuple[str, ...], MotionResult] = dict(
            zip(lists, motion_for_lists(lists, self.settings.motion_workers))
        )
        stats.frame_lists += len(lists)
        stats.motion_seconds += time.perf_counter() - started
        rows: dict[str, dict[str, Any]] = {}
        for key, i in first.items():
            result = motion[tuple(frames[i])]
            n = len(frames[i])
            all_gone = result.attempted > 0 and result.frames_unreadable == result.attempted
            rows[key] = {
                "qa_uid": None,
                "amm": result.amm,
                "frame_diversity": result.frame_diversity,
                "loss_video": None,
                "loss_blind": None,
                "vds": None,
                "ppl": None,
                "tnc_score": tnc_regex(questions[i]) if self.settings.effective_tnc_mode == TNC_REGEX else None,
                "sc": SC_DISABLED,
                "text_feature": [float(x) for x in text_feature(questions[i], answers[i])],
                "vision_feature": [float(x) for x in result.vision_feature],
                "n_frames": n,
                "question_len": q_lens[i],
                "answer_len": a_lens[i],
                "frames_unreadable": result.frames_unreadable,
                "error": ALL_UNREADABLE.format(n=n) if all_gone else None,
                "cache_key": key,
            }
        if self.settings.motion_only:
            if self.cache is not None:
                self.cache.put_rows(rows)
            return rows
        started = time.perf_counter()
        self._model_pass(rows, first, questions, answers, frames, {k: motion[tuple(frames[i])] for k, i in first.items()})
        stats.model_seconds += time.perf_counter() - started
        return rows

    def _model_pass(
        self,
        rows: dict[str, dict[str, Any]],
        first: dict[str, int],
        questions: list[str],
        answers: list[str],
        frames: list[list[str]],
        motion: dict[str, MotionResult],
    ) -> None:
        """Fill the model signals of `rows` in batches ordered by frame list, caching each batch."""
        settings = self.settings
        # A fixed order of the uncached keys: a resumed run cuts the same batches as an uninterrupted one.
        order = sorted(first, key=lambda k: (tuple(frames[first[k]]), k))
        decoded: dict[tuple[str, ...], tuple[list[np.ndarray], list[int]]] = {}
        tnc_memo: dict[str, float | None] = {}
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            lists = list(dict.fromkeys(tuple(frames[first[k]]) for k in batch))
            decoded = {fl: decoded.get(fl) or read_rgb(fl) for fl in lists}  # carry over one batch only
            items = []
            for key in batch:
                i = first[key]
                frame_list = tuple(frames[i])
                images, unreadable = decoded[frame_list]
                items.append(
                    QAInput(
                        questions[i],
                        answers[i],
                        images,
                        frames_key=content_key(list(frame_list)),
                        seed=sample_seed(settings.seed, questions[i], answers[i], frame_list),
                    )
                )
                row = rows[key]
                row["frames_unreadable"] = len(set(unreadable) | set(motion[key].unreadable))
                if frame_list and not images:
                    row["error"] = _join_errors(row["error"], ALL_UNREADABLE.format(n=len(frame_list)))
            if settings.effective_tnc_mode == TNC_LLM:
                self._tnc([questions[first[k]] for k in batch], tnc_memo)
            signals = compute_signals(self.model, items, settings.sc_samples)
            done: dict[str, dict[str, Any]] = {}
            for key, signal in zip(batch, signals):
                row = rows[key]
                row.update(
                    loss_video=signal.loss_video,
                    loss_blind=signal.loss_blind,
                    vds=signal.vds,
                    ppl=signal.ppl,
                    sc=signal.sc,
                )
                if settings.effective_tnc_mode == TNC_LLM:
                    row["tnc_score"] = tnc_memo.get(questions[first[key]])
                tnc_failed = settings.effective_tnc_mode == TNC_LLM and row["tnc_score"] is None
                row["error"] = _join_errors(row["error"], signal.error, TNC_FAILED if tnc_failed else None)
                if signal.error is None and not tnc_failed:
                    done[key] = row  # failures are not cached: the next run retries them
            if self.cache is not None and done:
                self.cache.put_rows(done, batch=list(done))

    def _tnc(self, questions: list[str], memo: dict[str, float | None]) -> None:
        """LLM TNC once per distinct question (memo for this run, cache across runs)."""
        new = [q for q in dict.fromkeys(questions) if q not in memo]
        if not new:
            return
        keys = {q: content_key({"question": q, "tnc": self.tnc_key}) for q in new}
        known = self.cache.get_values("tnc", keys.values()) if self.cache is not None else {}
        todo = [q for q in new if keys[q] not in known]
        for q in new:
            if keys[q] in known:
                memo[q] = known[keys[q]]
        if todo:
            values = dict(zip(todo, compute_tnc(self.model, todo)))
            memo.update(values)
            if self.cache is not None:
                self.cache.put_values("tnc", {keys[q]: v for q, v in values.items() if v is not None})


def describe_qa_frame(
    qa: pl.DataFrame, settings: DescriptorSettings, cache: DescriptorCache | None = None
) -> tuple[pl.DataFrame, ChunkStats]:
    """Descriptor shard of one chunk's QA rows (the function the Dagster asset calls)."""
    return Describer(settings, cache).describe(qa)


def extract_descriptors(
    pool_dir: Path,
    out_dir: Path,
    *,
    model: Path | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    tnc_mode: str = TNC_LLM,
    sc_samples: int = SC_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    motion_only: bool = False,
    cache_dir: Path | None = None,
    seed: int = 0,
    motion_workers: int | None = None,
    torch_threads: int | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Describe every chunk of an ingested pool (`POOL/qa/*.parquet`) into `OUT/<chunk>.parquet`.

    The per-QA cache defaults to `OUT/cache`; pass the same folder to reuse results across outputs.
    """
    started = time.perf_counter()
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    chunk_files = sorted((pool_dir / "qa").glob("*.parquet"))
    if not chunk_files:
        raise FileNotFoundError(f"{pool_dir / 'qa'}: no QA chunk files (*.parquet); run `gdo ingest` first")
    settings = DescriptorSettings(
        model_dir=Path(model) if model is not None else None,
        device=device,
        dtype=dtype,
        tnc_mode=tnc_mode,
        sc_samples=sc_samples,
        batch_size=batch_size,
        motion_only=motion_only,
        seed=seed,
        motion_workers=motion_workers,
        torch_threads=torch_threads,
    )
    cache_root = Path(cache_dir) if cache_dir is not None else out_dir / CACHE_DIR_NAME
    describer = Describer(settings, DescriptorCache(cache_root))
    totals = ChunkStats()
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in chunk_files)
        bar = tqdm(total=total, desc="descriptors", unit=" QA", dynamic_ncols=True)
    shards = []
    for chunk_file in chunk_files:
        qa = pl.read_parquet(chunk_file, columns=list(QA_COLUMNS))
        shard, stats = describer.describe(qa)
        shards.append(write_parquet_atomic(shard, out_dir / chunk_file.name))
        totals.add(stats)
        if bar is not None:
            bar.update(stats.qa)
            bar.set_postfix(computed=totals.computed, reused=totals.reused, refresh=False)
    if bar is not None:
        bar.close()
    return ExtractSummary(shards, totals, time.perf_counter() - started, cache_root)

