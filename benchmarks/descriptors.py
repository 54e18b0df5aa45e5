"""Descriptor throughput: batched extraction vs the published one-QA-at-a-time way.

    python benchmarks/descriptors.py                    # motion + model signals, medians of 3 runs
    python benchmarks/descriptors.py --videos 24 --runs 5 --skip-model

The pool has ~4 QAs per video (QAs of a video share its frame list, as in LLaVA-Video).
Motion: AMM + frame diversity + vision feature, once per distinct frame list in threads
(ours; one thread and warm worker processes are measured too) vs recomputed for every QA in
one thread (published). Model signals on the
tiny Qwen3-VL: batches with one shared vision pass, SC from one generate call and TNC once per
distinct question (ours) vs per QA two forward passes, one TNC generation and five separate SC
generations (published). Frames are decoded before the model timings in both arms. Never
asserted in tests; the numbers go in the closing note.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdo_core.descriptors.model_signals import (
    QAInput,
    SignalModel,
    compute_signals,
    compute_tnc,
    published_signals,
)
from gdo_core.descriptors.motion import default_workers, frame_list_motion, motion_for_lists

OUT = Path(__file__).resolve().parent / "out"
QAS_PER_VIDEO = 4
MOTION_GOAL, MODEL_GOAL = 6.0, 3.0
TEXTURE_CELL = 8  # pixels per random texture cell before smoothing
QUESTIONS = (
    "What happens after the {obj} starts to move?",
    "What colour is the {obj}?",
    "Which direction does the {obj} move first?",
    "Describe the scene with the {obj}.",
)


def write_video(folder: Path, n_frames: int, width: int, height: int, speed: float, seed: int) -> list[str]:
    """JPEG frames of a smooth random texture panning `speed` pixels per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pad = int(abs(speed) * n_frames) + 1
    coarse = rng.integers(0, 256, (height // TEXTURE_CELL + 2, (width + pad) // TEXTURE_CELL + 2, 3), dtype=np.uint8)
    texture = cv2.resize(coarse, (width + pad, height), interpolation=cv2.INTER_CUBIC)
    paths = []
    for t in range(n_frames):
        x = round(t * speed)
        path = folder / f"{t:04d}.jpg"
        cv2.imwrite(str(path), texture[:, x : x + width])
        paths.append(str(path))
    return paths


def make_pool(root: Path, videos: int, n_frames: int, width: int, height: int) -> list[tuple[str, str, list[str]]]:
    """(question, answer, frames) per QA: QAS_PER_VIDEO QAs over each video's frame list."""
    qas = []
    for v in range(videos):
        frames = write_video(root / f"v{v:03d}", n_frames, width, height, speed=0.5 + v % 4, seed=v)
        for q in range(QAS_PER_VIDEO):
            obj = ("ball", "car", "dog", "cup")[(v + q) % 4]
            qas.append((QUESTIONS[q].format(obj=obj), f"The {obj} moves {'left' if q % 2 else 'right'} slowly.", frames))
    return qas


def median_times(arms: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall seconds per arm; the arms take turns in every run, so background load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(runs):
        for name, fn in arms.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_motion(qas: list[tuple[str, str, list[str]]], runs: int, workers: int | None) -> dict[str, float]:
    """QAs/s of motion per distinct frame list (threads, one thread, warm processes) and per QA (published)."""
    lists = [list(f) for f in dict.fromkeys(tuple(f) for _, _, f in qas)]
    index = {tuple(f): i for i, f in enumerate(lists)}
    n_workers = workers or default_workers()

    def fan_out(results: list) -> None:
        [results[index[tuple(f)]] for _, _, f in qas]

    def per_qa() -> None:
        for _, _, frames in qas:
            frame_list_motion(frames)

    n = len(qas)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=context, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        list(pool.map(abs, range(n_workers)))  # start the workers outside the timings
        process_start = time.perf_counter() - started
        seconds = median_times(
            {
                "batched": lambda: fan_out(motion_for_lists(lists, workers)),
                "batched_one_thread": lambda: fan_out(motion_for_lists(lists, 1)),
                "batched_warm_processes": lambda: fan_out(list(pool.map(frame_list_motion, lists))),
                "one_at_a_time": per_qa,
            },
            runs,
        )
    result: dict[str, float] = {"qas": n, "frame_lists": len(lists), "workers": n_workers}
    result |= {f"{name}_qa_per_s": n / value for name, value in seconds.items()}
    result["process_pool_start_s"] = process_start
    result["speedup"] = result["batched_qa_per_s"] / result["one_at_a_time_qa_per_s"]
    return result


def bench_model(
    qas: list[tuple[str, str, list[str]]],
    model: SignalModel,
    runs: int,
    batch_size: int,
    sc_samples: int,
) -> dict[str, float]:
    """QAs/s of the model signals: batched vs the published one-QA-at-a-time passes."""
    decoded = {}
    items = []
    for i, (question, answer, frames) in enumerate(qas):
        key = tuple(frames)
        if key not in decoded:
            decoded[key] = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in frames]
        items.append(QAInput(question, answer, decoded[key], "|".join(frames), seed=i))

    def batched() -> None:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            compute_tnc(model, list(dict.fromkeys(item.question for item in batch)))
            compute_signals(model, batch, sc_samples)

    def one_at_a_time() -> None:
        for item in items:
            published_signals(model, item, sc_samples, "llm")

    n = len(items)
    seconds = median_times({"batched": batched, "one_at_a_time": one_at_a_time}, runs)
    result: dict[str, float] = {"qas": n, "batch_size": batch_size, "sc_samples": sc_samples}
    result |= {f"{name}_qa_per_s": n / value for name, value in seconds.items()}
    result["speedup"] = result["batched_qa_per_s"] / result["one_at_a_time_qa_per_s"]
    return result


def main() -> None:
    """Run the benchmark and print/write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="videos in the motion pool (4 QAs each)")
    parser.add_argument("--frames", type=int, default=32, help="frames per video (after ingest resampling)")
    parser.add_argument("--size", default="320x240", help="motion frame size WxH")
    parser.add_argument("--model-videos", type=int, default=4, help="videos in the model pool (4 QAs each)")
    parser.add_argument("--model-frames", type=int, default=8)
    parser.add_argument("--model-size", default="64x64", help="model frame size WxH (the tiny model keeps 64x64)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: build the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sc-samples", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="motion processes (default: cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both arms)")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-motion", action="store_true")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, object] = {"cpu_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="gdo-bench-descriptors-") as tmp:
        root = Path(tmp)
        if not args.skip_motion:
            width, height = (int(x) for x in args.size.split("x"))
            qas = make_pool(root / "motion", args.videos, args.frames, width, height)
            report["motion"] = bench_motion(qas, args.runs, args.workers) | {"frames": args.frames, "size": args.size}
            print(json.dumps({"motion": report["motion"]}, indent=2), flush=True)
        if not args.skip_model:
            model_dir = args.model
            if model_dir is None:
                from gdo_core.tiny_model import build_tiny_model

                model_dir = build_tiny_model(root / "tiny_model")
            width, height = (int(x) for x in args.model_size.split("x"))
            qas = make_pool(root / "model", args.model_videos, args.model_frames, width, height)
            model = SignalModel.load(model_dir, args.device, args.dtype)
            report["model"] = bench_model(qas, model, args.runs, args.batch_size, args.sc_samples) | {
                "frames": args.model_frames,
                "size": args.model_size,
                "device": args.device,
                "torch_threads": args.threads,
            }
            print(json.dumps({"model": report["model"]}, indent=2), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "descriptors.json").write_text(json.dumps(report, indent=2))
    for part, goal in (("motion", MOTION_GOAL), ("model", MODEL_GOAL)):
        if part in report:
            figures = report[part]
            print(
                f"{part}: batched {figures['batched_qa_per_s']:.2f} QA/s vs one-at-a-time "
                f"{figures['one_at_a_time_qa_per_s']:.2f} QA/s = {figures['speedup']:.1f}x (goal {goal:.0f}x)"
            )


if __name__ == "__main__":
    main()
