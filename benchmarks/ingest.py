"""Ingestion throughput and peak memory on a generated pool (both message layouts mixed).

Usage: python benchmarks/ingest.py [--lines 2000000] [--runs 3] [--workdir benchmarks/out/ingest]
Prints QA/s and peak RSS of `gdo ingest` (median of the runs), each run in a fresh process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

SOURCES_IMAGE = ["CLEVR-Math(MathV360K)", "ai2d(cauldron,llava_format)", "sharegpt4v(coco)", "ureader_cap",
                 "llava_wild_4v_39k_filtered", "chartqa(cauldron,llava_format)"]
SOURCES_VIDEO = ["0_30_s_academic_v0_1", "30_60_s_youtube_v0_1", "0_30_s_nextqa", "1_2_m_academic_v0_1"]
WORDS = ["the", "a", "red", "blue", "circle", "square", "moves", "left", "right", "first", "then", "after", "ball", "cup", "dog", "runs", "jumps"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _turns(rng: random.Random, media: str, layout: int) -> list[dict]:
    out = []
    for t in range(rng.randint(1, 3)):
        q = ("" if t else f"{media}\n") + _text(rng, rng.randint(3, 25)) + "?"
        if rng.random() < 0.3:
            q += "\nA. left\nB. right\nC. up\nD. down"
        a = _text(rng, rng.randint(1, 30))
        if layout == 0:
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        else:
            out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def generate(path: Path, lines: int, video: bool, seed: int) -> None:
    """Write a pool file of `lines` rows, mixing messages/conversations and image/images layouts."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(lines):
            layout = i % 2
            key = "messages" if layout == 0 else "conversations"
            if video:
                n = rng.randint(8, 120)
                row = {"id": f"v{i}", "video_id": f"vid{i // 4}", "images": [f"frames/{i // 4}/{j:04d}.jpg" for j in range(n)],
                       "data_source": rng.choice(SOURCES_VIDEO), key: _turns(rng, "<video>", layout)}
            else:
                media = {"images": [f"images/{i:07d}.jpg"]} if layout == 0 else {"image": f"images/{i:07d}.jpg"}
                row = {"id": f"i{i}", **media, "data_source": rng.choice(SOURCES_IMAGE), key: _turns(rng, "<image>", layout)}
            fh.write(json.dumps(row) + "\n")
            if i % 997 == 0:
                fh.write("{this line is broken\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=2_000_000, help="pool lines in total (half image, half video)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/ingest"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ov, vv = args.workdir / "ov.jsonl.gz", args.workdir / "vv.jsonl.gz"
    if not (ov.exists() and vv.exists() and (args.workdir / f"lines-{args.lines}").exists()):
        print(f"generating {args.lines} lines ...", flush=True)
        generate(ov, args.lines // 2, video=False, seed=1)
        generate(vv, args.lines - args.lines // 2, video=True, seed=2)
        (args.workdir / f"lines-{args.lines}").touch()
    rates, peaks = [], []
    for run in range(args.runs):
        out = args.workdir / "out"
        code = (
            "import resource, sys, time, json; from gdo_core.pool import ingest; t=time.perf_counter(); "
            f"s=ingest({str(ov)!r}, {str(vv)!r}, {str(out)!r}); dt=time.perf_counter()-t; "
            "print(json.dumps({'qa': s.counts['qa'], 'rejects': s.counts['rejects'], 'seconds': dt, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, "
            "'worker_peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
        )
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        rates.append(stats["qa"] / stats["seconds"])
        peaks.append(stats["peak_rss_mb"] + (os.cpu_count() or 1) * stats["worker_peak_rss_mb"])
        print(f"run {run + 1}: {stats['qa']} QA, {stats['rejects']} rejects, {stats['seconds']:.1f} s, "
              f"{rates[-1]:,.0f} QA/s, peak RSS {stats['peak_rss_mb']:.0f} MB main + "
              f"{stats['worker_peak_rss_mb']:.0f} MB per worker "
              f"(process wall {time.perf_counter() - started:.1f} s)", flush=True)
    print(f"median: {statistics.median(rates):,.0f} QA/s, peak RSS (main + all workers) {statistics.median(peaks):.0f} MB "
          f"over {args.runs} runs of {args.lines} lines")


if __name__ == "__main__":
    main()
