"""Cost model: hours per stage for the paper's pool (~4.5M QAs, ~1.3M video QAs) on M CPU pods and N GPUs.

    python benchmarks/cost_model.py                      # measure here (~5-8 min), model, print, write JSON
    python benchmarks/cost_model.py --cpu-pods 1,8,32 --pod-cores 8 --gpus 1,8,64 \\
        --gpu-s-per-video-qa <s> --gpu-s-per-image-qa <s> \\
        --train-gpu-s-per-sample <s> --train-samples <n> --eval-gpu-s-per-item <s> --eval-items <n>
    (<s>: GPU seconds per unit measured on the target GPU; nothing here supplies them)

What it measures, on this machine, at small scale (median of --runs; the stages take turns in
every round, so a change in the shared machine's load falls on all of them alike):

- ingest: `gdo ingest` (the CLI, a subprocess) on a pool from benchmarks/ingest.py's `generate`
  (half image lines, half video lines, both message layouts). Cost per QA.
- motion + frame diversity: the batched arm of benchmarks/descriptors.py's `bench_motion`
  (`motion_for_lists` over the distinct frame lists, on threads, one per core), on
  `make_pool` videos (4 QAs per video, 32 JPEG frames of 320x240 by default). Cost per video QA.
- merge: benchmarks/merge.py's `run_merge` (`merge_to_duckdb` in a fresh interpreter) on its
  `write_shard_set` shards. Merge is not linear in the rows at small scale: k-means takes at least
  `merge.KMEANS_MIN_STEPS` mini-batch steps, so a small pool makes several passes. It is modelled
  as two parts: k-means per step (steps at the pool's size from `merge.kmeans_schedule`) and the
  rest (stats, predict, write) per row. The child reports wall seconds per phase only, so its CPU
  seconds are split between the phases by their shares of its wall time (start-up dropped).
- build: `gdo build --profile temp_plus --no-cache` (the CLI) on benchmarks/build.py's
  `generate_pool` (a third video QAs, published-style metrics). Cost per QA.

The cost is CPU seconds (user + system, of every process and thread of the stage, from
getrusage / process_time), not wall seconds: this machine is shared, and under contention a
stage's wall time measures the queue for the cores more than the stage. The CLI stages' fixed
start-up (interpreter, imports, a tiny pool's fixed costs) is taken out by running the same
command on a tiny pool in the same round: cost per QA = (CPU big - CPU tiny) / (QAs big - QAs tiny).
Wall seconds per unit are printed too, as measured on this busy machine, for reference only.

The model (linear in the pool's size per stage, except merge's k-means as above):

    hours on M pods = units x CPU s per unit / C / (M if the stage runs per chunk, else 1) / 3600

assuming a pod with C cores (--pod-cores, default this machine's core count) has this machine's
per-QA speed (its cores all busy on the stage: cores / CPU s per QA) times C / (this machine's
cores), and that a stage keeps all C cores of a pod busy. Ingest and the motion descriptors run
per chunk partition, so M pods share the chunks; merge and build run once, on one pod, whatever
M is (and do not keep every core busy all the time: for them the figure is a lower bound).

GPU stages (the model signals with a real ~8B model, training, evaluation) cannot be measured
here (no GPU). Their per-unit GPU seconds are options with no defaults; without them the rows say
so and the formula is printed:

    hours on N GPUs = units x GPU s per unit / N / 3600

(linear scaling assumed: descriptor chunks are independent one-GPU steps; training and
evaluation scale as data-parallel work).

Writes benchmarks/out/cost_model.json (gitignored) with the date, the host's core count, load
average at start and end, every run and both tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import build as build_bench
from benchmarks import ingest as ingest_bench
from benchmarks import merge as merge_bench
from gdo_core import merge as gdo_merge

OUT = Path(__file__).resolve().parent / "out"
GDO = Path(sys.executable).parent / "gdo"
TINY_INGEST_LINES = 1_000  # the tiny pool whose run measures the CLI's fixed start-up
TINY_BUILD_QAS = 2_000
MERGE_ROWS_PER_SHARD = 50_000  # benchmarks/merge.py's default: 1M rows in 20 shards
BUILD_PROFILE = "temp_plus"


def children_cpu_s() -> float:
    """User + system CPU seconds of every waited-for child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one command in a child process; exits on failure."""
    cpu, started = children_cpu_s(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{done.stderr[-2000:]}")
    return wall, cpu, done.stdout


def cpu_pressure() -> float | None:
    """Linux's CPU pressure ("some" avg10 %), where the kernel reports it."""
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n")[0].split()
        return float(dict(kv.split("=") for kv in some[1:])["avg10"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def host_state() -> dict[str, object]:
    """Load average and CPU pressure now."""
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "cpu_pressure_avg10": cpu_pressure()}


# ---- the stages, measured ------------------------------------------------------------------


class Ingest:
    """`gdo ingest` on a generated pool and on a tiny one (its fixed start-up)."""

    unit = "QA"

    def __init__(self, root: Path, lines: int) -> None:
        self.root = root
        for name, n in (("big", lines), ("tiny", TINY_INGEST_LINES)):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            ingest_bench.generate(folder / "ov.jsonl.gz", n // 2, video=False, seed=1)
            ingest_bench.generate(folder / "vv.jsonl.gz", n - n // 2, video=True, seed=2)
        self.runs: list[dict] = []

    def _one(self, name: str) -> tuple[float, float, int]:
        folder = self.root / name
        shutil.rmtree(folder / "out", ignore_errors=True)
        wall, cpu, stdout = run_timed([str(GDO), "ingest", "--onevision", str(folder / "ov.jsonl.gz"),
                                       "--video", str(folder / "vv.jsonl.gz"), "--out", str(folder / "out")])
        found = re.search(r"QA pairs: (\d+)", stdout)
        if found is None:
            sys.exit(f"gdo ingest: no QA count in its output:\n{stdout[-1000:]}")
        return wall, cpu, int(found.group(1))

    def run(self) -> dict:
        wall, cpu, qas = self._one("big")
        tiny_wall, tiny_cpu, tiny_qas = self._one("tiny")
        result = {"qas": qas, "wall_s": wall, "cpu_s": cpu, "tiny_qas": tiny_qas, "tiny_wall_s": tiny_wall,
                  "tiny_cpu_s": tiny_cpu, "cpu_s_per_qa": (cpu - tiny_cpu) / (qas - tiny_qas),
                  "wall_s_per_qa": (wall - tiny_wall) / (qas - tiny_qas)}
        self.runs.append(result)
        return result


class Motion:
    """The batched arm of benchmarks/descriptors.py's bench_motion, timed in this process."""

    unit = "video QA"

    def __init__(self, root: Path, videos: int, frames: int, size: str) -> None:
        from benchmarks import descriptors as descriptors_bench  # imports torch: only when measured
        from gdo_core.descriptors.motion import default_workers, motion_for_lists

        width, height = (int(x) for x in size.split("x"))
        self.qas = descriptors_bench.make_pool(root, videos, frames, width, height)
        self.lists = [list(f) for f in dict.fromkeys(tuple(f) for _, _, f in self.qas)]
        self.index = {tuple(f): i for i, f in enumerate(self.lists)}
        self.motion_for_lists, self.workers = motion_for_lists, default_workers()
        self.runs: list[dict] = []

    def run(self) -> dict:
        cpu, started = time.process_time(), time.perf_counter()
        results = self.motion_for_lists(self.lists, None)  # threads, one per core, as bench_motion's "batched"
        [results[self.index[tuple(f)]] for _, _, f in self.qas]  # its fan-out to the QAs
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        result = {"video_qas": len(self.qas), "videos": len(self.lists), "threads": self.workers,
                  "wall_s": wall, "cpu_s": cpu, "cpu_s_per_video_qa": cpu / len(self.qas),
                  "wall_s_per_video_qa": wall / len(self.qas), "cpu_s_per_video": cpu / len(self.lists)}
        self.runs.append(result)
        return result


class Merge:
    """benchmarks/merge.py's run_merge; CPU split into k-means (per step) and the rest (per row)."""

    def __init__(self, root: Path, rows: int, clusters: int) -> None:
        self.root, self.rows, self.clusters = root, rows, clusters
        merge_bench.write_shard_set(root, rows, max(1, math.ceil(rows / MERGE_ROWS_PER_SHARD)))
        self.runs: list[dict] = []

    def run(self) -> dict:
        cpu, started = children_cpu_s(), time.perf_counter()
        report = merge_bench.run_merge(self.root, self.root / "gdo.duckdb", self.clusters)
        process_wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu
        kmeans_wall = report["timings_s"]["kmeans_fit"]
        rest_wall = report["wall_s"] - kmeans_wall
        # CPU seconds by the phases' shares of the child's wall time; the rest (start-up) is dropped.
        kmeans_cpu, rest_cpu = cpu * kmeans_wall / process_wall, cpu * rest_wall / process_wall
        steps = report["kmeans_steps"]
        result = {"rows": report["rows"], "clusters": report["clusters"], "kmeans_steps": steps,
                  "process_wall_s": process_wall, "wall_s": report["wall_s"], "cpu_s": cpu,
                  "timings_s": report["timings_s"], "kmeans_cpu_s": kmeans_cpu, "rest_cpu_s": rest_cpu,
                  "cpu_s_per_kmeans_step": kmeans_cpu / steps, "wall_s_per_kmeans_step": kmeans_wall / steps,
                  "cpu_s_per_row": rest_cpu / report["rows"], "wall_s_per_row": rest_wall / report["rows"]}
        self.runs.append(result)
        return result

    def steps_at(self, rows: int) -> int:
        """k-means mini-batch steps of a merge of `rows` rows (gdo_core.merge's schedule)."""
        k = min(self.clusters, rows)
        passes, per_pass = gdo_merge.kmeans_schedule(rows, max(gdo_merge.KMEANS_BATCH_SIZE, k))
        return passes * per_pass


class Build:
    """`gdo build --profile temp_plus --no-cache` on a generated pool and on a tiny one."""

    unit = "QA"

    def __init__(self, root: Path, qas: int) -> None:
        self.root = root
        self.info = {name: build_bench.generate_pool(root / name, n)
                     for name, n in (("big", qas), ("tiny", TINY_BUILD_QAS))}
        self.runs: list[dict] = []

    def _one(self, name: str) -> tuple[float, float]:
        folder = self.root / name
        shutil.rmtree(folder / "out", ignore_errors=True)
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        wall, cpu, _ = run_timed([str(GDO), "build", "--profile", BUILD_PROFILE, "--no-cache",
                                  "--onevision", str(folder / "onevision.jsonl"), "--video", str(folder / "video.jsonl"),
                                  "--metrics", str(folder / "metrics.jsonl"), "--out", str(folder / "out")], env)
        return wall, cpu

    def run(self) -> dict:
        wall, cpu = self._one("big")
        tiny_wall, tiny_cpu = self._one("tiny")
        qas, tiny_qas = int(self.info["big"]["qas"]), int(self.info["tiny"]["qas"])  # type: ignore[call-overload]
        result = {"qas": qas, "wall_s": wall, "cpu_s": cpu, "tiny_qas": tiny_qas, "tiny_wall_s": tiny_wall,
                  "tiny_cpu_s": tiny_cpu, "cpu_s_per_qa": (cpu - tiny_cpu) / (qas - tiny_qas),
                  "wall_s_per_qa": (wall - tiny_wall) / (qas - tiny_qas)}
        self.runs.append(result)
        return result


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# ---- the model -------------------------------------------------------------------------------


def hours(seconds: float) -> str:
    """Hours with sensible precision (minutes below an hour)."""
    h = seconds / 3600
    if seconds < 60:
        return f"{seconds:.0f} s"
    if h < 1:
        return f"{seconds / 60:.1f} min"
    return f"{h:,.1f} h" if h < 100 else f"{h:,.0f} h"


def ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def cpu_rows(measured: dict, args: argparse.Namespace, merge_steps: int) -> list[dict]:
    """One row per CPU stage: units in the pool, CPU s per unit, whether it runs per chunk."""
    return [
        {"stage": "ingest (`gdo ingest`)", "unit": "QA", "units": args.qas, "per_chunk": True,
         "cpu_s_per_unit": measured["ingest"]["cpu_s_per_qa"], "wall_s_per_unit": measured["ingest"]["wall_s_per_qa"]},
        {"stage": "motion + frame diversity (batched)", "unit": "video QA", "units": args.video_qas, "per_chunk": True,
         "cpu_s_per_unit": measured["motion"]["cpu_s_per_video_qa"],
         "wall_s_per_unit": measured["motion"]["wall_s_per_video_qa"]},
        {"stage": "merge: k-means fit", "unit": "k-means step", "units": merge_steps, "per_chunk": False,
         "cpu_s_per_unit": measured["merge"]["cpu_s_per_kmeans_step"],
         "wall_s_per_unit": measured["merge"]["wall_s_per_kmeans_step"]},
        {"stage": "merge: stats, predict, write", "unit": "descriptor row", "units": args.qas, "per_chunk": False,
         "cpu_s_per_unit": measured["merge"]["cpu_s_per_row"], "wall_s_per_unit": measured["merge"]["wall_s_per_row"]},
        {"stage": f"build (`gdo build --profile {BUILD_PROFILE}`)", "unit": "QA", "units": args.qas, "per_chunk": False,
         "cpu_s_per_unit": measured["build"]["cpu_s_per_qa"], "wall_s_per_unit": measured["build"]["wall_s_per_qa"]},
    ]


def cpu_seconds_on(row: dict, pods: int, pod_cores: int) -> float:
    """Wall seconds of a stage on `pods` pods of `pod_cores` cores (all cores busy)."""
    return row["units"] * row["cpu_s_per_unit"] / pod_cores / (pods if row["per_chunk"] else 1)


def gpu_rows(args: argparse.Namespace) -> list[dict]:
    """One row per GPU stage; per-unit GPU seconds and some unit counts come only from options."""
    return [
        {"stage": "model signals, video QAs (~8B model)", "unit": "video QA", "units": args.video_qas,
         "gpu_s_per_unit": args.gpu_s_per_video_qa, "option": "--gpu-s-per-video-qa", "units_option": None},
        {"stage": "model signals, image QAs (~8B model)", "unit": "image QA", "units": args.qas - args.video_qas,
         "gpu_s_per_unit": args.gpu_s_per_image_qa, "option": "--gpu-s-per-image-qa", "units_option": None},
        {"stage": "training", "unit": "sample trained", "units": args.train_samples,
         "gpu_s_per_unit": args.train_gpu_s_per_sample, "option": "--train-gpu-s-per-sample",
         "units_option": "--train-samples"},
        {"stage": "evaluation", "unit": "benchmark item scored", "units": args.eval_items,
         "gpu_s_per_unit": args.eval_gpu_s_per_item, "option": "--eval-gpu-s-per-item", "units_option": "--eval-items"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("the pool and the machines modelled")
    model.add_argument("--qas", type=int, default=4_500_000, help="QAs in the pool (the paper's ~4.5M)")
    model.add_argument("--video-qas", type=int, default=1_300_000, help="video QAs among them (the paper's ~1.3M)")
    model.add_argument("--cpu-pods", type=ints, default=ints("1,8,32"), help="pod counts to show")
    model.add_argument("--pod-cores", type=int, default=None,
                       help="cores per CPU pod (default: this machine's); a pod's speed is this machine's x cores / its cores")
    model.add_argument("--gpus", type=ints, default=ints("1,8,64"), help="GPU counts to show")
    gpu = parser.add_argument_group("GPU stages (not measured here: no defaults)")
    gpu.add_argument("--gpu-s-per-video-qa", type=float, default=None, help="model-signal GPU seconds per video QA")
    gpu.add_argument("--gpu-s-per-image-qa", type=float, default=None, help="model-signal GPU seconds per image QA")
    gpu.add_argument("--train-gpu-s-per-sample", type=float, default=None, help="training GPU seconds per sample seen")
    gpu.add_argument("--train-samples", type=int, default=None,
                     help="samples seen in all the training to estimate (sum over arms of subset size x epochs)")
    gpu.add_argument("--eval-gpu-s-per-item", type=float, default=None, help="GPU seconds to score one benchmark item")
    gpu.add_argument("--eval-items", type=int, default=None,
                     help="benchmark items scored in all (items x checkpoints x arms)")
    size = parser.add_argument_group("measurement sizes (the defaults take ~5-8 min on a busy 2-core machine)")
    size.add_argument("--runs", type=int, default=3, help="rounds; every figure is the median over them")
    size.add_argument("--ingest-lines", type=int, default=60_000, help="pool lines for `gdo ingest` (~2 QAs a line)")
    size.add_argument("--motion-videos", type=int, default=24, help="videos for the motion descriptors (4 QAs each)")
    size.add_argument("--motion-frames", type=int, default=32, help="frames per video")
    size.add_argument("--motion-size", default="320x240", help="frame size WxH")
    size.add_argument("--merge-rows", type=int, default=150_000, help="descriptor rows merged")
    size.add_argument("--merge-clusters", type=int, default=gdo_merge.DEFAULT_MAX_CLUSTERS,
                      help="k-means clusters (gdo's default; also used for the pool's k-means)")
    size.add_argument("--build-qas", type=int, default=200_000, help="QAs in the pool `gdo build` selects from")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=OUT / "cost_model.json", help="where the JSON goes")
    args = parser.parse_args()
    host_cores = len(os.sched_getaffinity(0))
    pod_cores = args.pod_cores or host_cores
    if not 0 < args.video_qas <= args.qas:
        parser.error("--video-qas must be in 1..--qas")
    if not GDO.is_file():
        sys.exit(f"{GDO}: the gdo command is not installed next to this Python")

    began = time.perf_counter()
    date = datetime.datetime.now().astimezone()
    start_state = host_state()
    print(f"{date:%Y-%m-%d %H:%M %Z}: {host_cores} cores, load average {start_state['load_average']}, "
          f"CPU pressure {start_state['cpu_pressure_avg10']}%", flush=True)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gdo-cost-model-"))
    try:
        started = time.perf_counter()
        stages = {
            "ingest": Ingest(root / "ingest", args.ingest_lines),
            "motion": Motion(root / "motion", args.motion_videos, args.motion_frames, args.motion_size),
            "merge": Merge(root / "merge", args.merge_rows, args.merge_clusters),
            "build": Build(root / "build", args.build_qas),
        }
        print(f"inputs generated in {time.perf_counter() - started:.0f} s", flush=True)
        # Round-robin: run i of every stage before run i + 1 of any.
        for i in range(args.runs):
            for name, stage in stages.items():
                result = stage.run()
                print(f"round {i + 1}/{args.runs} {name}: wall {result['wall_s']:.1f} s, CPU {result['cpu_s']:.1f} s",
                      flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    end_state = host_state()

    runs = {name: stage.runs for name, stage in stages.items()}
    measured = {
        "ingest": {k: median(runs["ingest"], k) for k in ("qas", "cpu_s", "wall_s", "tiny_cpu_s", "cpu_s_per_qa", "wall_s_per_qa")},
        "motion": {k: median(runs["motion"], k) for k in ("video_qas", "videos", "cpu_s", "wall_s", "cpu_s_per_video_qa",
                                                            "wall_s_per_video_qa", "cpu_s_per_video")},
        "merge": {k: median(runs["merge"], k) for k in ("rows", "kmeans_steps", "cpu_s", "process_wall_s", "kmeans_cpu_s",
                                                          "rest_cpu_s", "cpu_s_per_kmeans_step", "wall_s_per_kmeans_step",
                                                          "cpu_s_per_row", "wall_s_per_row")},
        "build": {k: median(runs["build"], k) for k in ("qas", "cpu_s", "wall_s", "tiny_cpu_s", "cpu_s_per_qa", "wall_s_per_qa")},
    }
    stage_merge: Merge = stages["merge"]  # type: ignore[assignment]
    merge_steps = stage_merge.steps_at(args.qas)

    # ---- the tables ----
    measured_table = markdown(
        ["stage", "measured here on", "CPU s (median)", "wall s (median)", "CPU s per unit"],
        [
            ["ingest", f"{measured['ingest']['qas']:,.0f} QAs (+ tiny pool: start-up, {measured['ingest']['tiny_cpu_s']:.1f} CPU s)",
             f"{measured['ingest']['cpu_s']:.1f}", f"{measured['ingest']['wall_s']:.1f}",
             f"{measured['ingest']['cpu_s_per_qa']:.2e} per QA"],
            ["motion + frame diversity",
             (f"{measured['motion']['video_qas']:.0f} video QAs, {measured['motion']['videos']:.0f} videos of "
              f"{args.motion_frames} frames {args.motion_size}, {host_cores} threads"),
             f"{measured['motion']['cpu_s']:.1f}", f"{measured['motion']['wall_s']:.1f}",
             f"{measured['motion']['cpu_s_per_video_qa']:.2e} per video QA"],
            ["merge", (f"{measured['merge']['rows']:,.0f} rows, {args.merge_clusters} clusters, "
                       f"{measured['merge']['kmeans_steps']:.0f} k-means steps"),
             f"{measured['merge']['cpu_s']:.1f}", f"{measured['merge']['process_wall_s']:.1f}",
             f"{measured['merge']['cpu_s_per_kmeans_step']:.2e} per step + {measured['merge']['cpu_s_per_row']:.2e} per row"],
            ["build", f"{measured['build']['qas']:,.0f} QAs (+ tiny pool: start-up, {measured['build']['tiny_cpu_s']:.1f} CPU s)",
             f"{measured['build']['cpu_s']:.1f}", f"{measured['build']['wall_s']:.1f}",
             f"{measured['build']['cpu_s_per_qa']:.2e} per QA"],
        ],
    )

    crows = cpu_rows(measured, args, merge_steps)
    pods_header = [f"{m} pod{'s' if m > 1 else ''}" for m in args.cpu_pods]
    cpu_table_rows = []
    for row in crows:
        row["hours_on_pods"] = {m: cpu_seconds_on(row, m, pod_cores) / 3600 for m in args.cpu_pods}
        cpu_table_rows.append([
            row["stage"], f"{row['units']:,} {row['unit']}s", f"{row['cpu_s_per_unit']:.2e}",
            f"{row['wall_s_per_unit']:.2e}", "yes (per chunk)" if row["per_chunk"] else "no (runs once)",
            *(hours(cpu_seconds_on(row, m, pod_cores)) for m in args.cpu_pods),
        ])
    totals = {m: sum(cpu_seconds_on(row, m, pod_cores) for row in crows) for m in args.cpu_pods}
    cpu_table_rows.append(["**all CPU stages**", "", "", "", "", *(f"**{hours(totals[m])}**" for m in args.cpu_pods)])
    cpu_table = markdown(["stage", "units in the pool", "CPU s / unit (here)", "wall s / unit (here, busy)",
                          "split across pods", *pods_header], cpu_table_rows)

    grows = gpu_rows(args)
    gpu_table_rows = []
    for row in grows:
        units = f"{row['units']:,} {row['unit']}s" if row["units"] is not None else f"pass {row['units_option']}"
        if row["gpu_s_per_unit"] is None:
            row["hours_on_gpus"] = None
            cells = [f"not measured here (no GPU); pass {row['option']} to estimate"] + [""] * (len(args.gpus) - 1)
            gpu_table_rows.append([row["stage"], units, "-", *cells])
        elif row["units"] is None:
            row["hours_on_gpus"] = None
            cells = [f"pass {row['units_option']} to estimate"] + [""] * (len(args.gpus) - 1)
            gpu_table_rows.append([row["stage"], units, f"{row['gpu_s_per_unit']:g} (given)", *cells])
        else:
            row["hours_on_gpus"] = {n: row["units"] * row["gpu_s_per_unit"] / n / 3600 for n in args.gpus}
            gpu_table_rows.append([row["stage"], units, f"{row['gpu_s_per_unit']:g} (given)",
                                   *(hours(row["units"] * row["gpu_s_per_unit"] / n) for n in args.gpus)])
    gpu_table = markdown(["stage", "units", "GPU s / unit", *(f"{n} GPU{'s' if n > 1 else ''}" for n in args.gpus)],
                         gpu_table_rows)
    gpu_formula = "hours on N GPUs = units x GPU s per unit / N / 3600"
    cpu_formula = ("hours on M pods = units x CPU s per unit / C / (M if split across pods, else 1) / 3600, "
                   f"C = {pod_cores} cores per pod")

    elapsed = time.perf_counter() - began
    busy = (f"load average {start_state['load_average']} at start, {end_state['load_average']} at the end; "
            f"CPU pressure {start_state['cpu_pressure_avg10']}% / {end_state['cpu_pressure_avg10']}%")
    print()
    print(f"## Measured here ({date:%Y-%m-%d}, {host_cores} cores, {busy}; medians of {args.runs} rounds)\n")
    print(measured_table)
    print(f"\n## CPU stages: {args.qas:,} QAs ({args.video_qas:,} video QAs) on M pods of {pod_cores} cores\n")
    print(cpu_table)
    print(f"\n{cpu_formula}. A pod is assumed to have this machine's per-QA speed ({host_cores} cores, all busy on "
          f"the stage) x {pod_cores}/{host_cores}. Merge's k-means: {merge_steps} mini-batch steps at {args.qas:,} rows "
          f"(`gdo_core.merge.kmeans_schedule`). Merge and build run once, on one pod.")
    print(f"\n## GPU stages on N GPUs\n\n{gpu_table}\n\n{gpu_formula} (linear scaling assumed).")
    print(f"\ntook {elapsed / 60:.1f} min")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": date.isoformat(timespec="seconds"),
        "host": {"cpu_count": host_cores, "os_cpu_count": os.cpu_count(), "start": start_state, "end": end_state},
        "elapsed_s": round(elapsed, 1),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pod_cores": pod_cores,
        "runs": runs,
        "measured": measured,
        "cpu_model": {"formula": cpu_formula, "merge_kmeans_steps_at_pool": merge_steps, "rows": crows,
                      "total_hours_on_pods": {m: s / 3600 for m, s in totals.items()}},
        "gpu_model": {"formula": gpu_formula, "rows": grows},
        "tables_markdown": {"measured": measured_table, "cpu": cpu_table, "gpu": gpu_table},
    }
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
