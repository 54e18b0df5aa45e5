"""A living pool's incremental update vs a from-scratch run, through `gdo backfill`'s code path.

    python benchmarks/incremental_update.py                       # 1M QAs
    python benchmarks/incremental_update.py --qas 20000           # a quick check (verifies by default)
    python benchmarks/incremental_update.py --qas 100000 --keep --workdir /tmp/gdo-incr

Goal: on a generated pool of at least 1M QAs, after appending 1% new
lines, the incremental update (change detection + backfill of descriptors + merge + subsets)
costs at most GOAL_RATIO (5%) of a from-scratch run's wall time; one sensor tick on the unchanged
pool takes under TICK_GOAL_S (1 s); reading every chunk of a 1M-line file is linear (chunks read
vs bytes read).

The pool (generated in <workdir>/pool, seeded):

- onevision.jsonl and video.jsonl written with `benchmarks/build.py`'s question generator, data
  source names and weights and row shapes: a third of the QAs are video QAs, rows hold 1-5 turns
  (3 QAs a row on average), ROWS_PER_VIDEO (2) rows share a video (~6 QAs per video).
- Real frames: a bank of --bank-clips clips x 32 JPEG frames of 320x240 (`benchmarks/
  descriptors.py`'s `write_video`, a panning texture; ~34 KB a frame, as real frames). Every video
  gets its own 32-frame list: VIDEO_SEGMENTS runs of 8 consecutive frames, each from a random
  clip and offset of the bank (seeded; checked distinct from every other video's list). Every
  image row gets its own image path: `images/s<r>/<bank frame>`, where `images/s<r>` are symlinks
  to the bank, so no two image rows share a path string (what gdo's dedup and cache keys see),
  while the bank stays a few thousand files on disk.
- Chunk partitions: --chunk-lines, by default the project's 20,000 lines, or fewer so that a
  smaller pool still has about MIN_CHUNKS chunks (20,000 at 1M QAs: 12 image + 6 video chunks).

What could make the from-scratch run artificially cheap, as checked in gdo's descriptor code
(gdo_core/descriptors): motion runs once per distinct frame *list* (tuple of path strings)
within one chunk's describe call (`Describer._compute`), so QAs of one video share it (as they do
in a real pool) but no two videos or image rows here do; the per-QA `DescriptorCache` is keyed by
question, answer, frame paths with (size, mtime) and settings, so it only serves a QA seen before
(empty at the start of the from-scratch run; the incremental run reuses it for the QAs of the
changed chunk that were there before, which is the point). There is no LRU or cache of decoded
frames or motion results by frame path or content (motion.py, features.py: `cv2.imread` per
frame per list). What the bank does save is disk reads: its ~140 MB stay in the page cache, where
a real pool's frames (~55k videos x 32 frames x ~34 KB, ~60 GB at 1M QAs, 12 frames of every list
decoded) would be read from disk. The benchmark also prints the frame lists motion ran on vs the
distinct (chunk, frame list) pairs of the ingested pool.

Descriptors are motion-only (`DescriptorModel(motion_only=True)`, GDO_MOTION_ONLY=1) in both runs:
AMM, frame diversity and the coverage features, no model. With a model the from-scratch run is
far heavier (~4.4 QA/s for the tiny model on this machine's CPU, i.e. ~63 h at 1M QAs, while
the merge and subsets an incremental update must redo stay the same), so motion-only makes the
from-scratch run as cheap as it can be: the conservative choice for the ratio. Images are
320x240, smaller than most real image-pool images, which also keeps the from-scratch run cheap.

Steps, each timed (wall, and CPU seconds of this process, all threads; nothing is run in a
child process):

1. from scratch: a fresh data folder and Dagster instance (SQLite, <workdir>/home-*), then
   `gdo_assets.living.run_backfill` (it plans, registers every chunk partition, observes the pool,
   runs ingest_pool and describe_chunks per chunk, merge_descriptors and build_subsets for every
   goal profile: the four presets, GDO_PROFILES_DIR is unset), as `gdo backfill` does.
   Per stage from the times `run_backfill` reports its steps (its echo lines): plan, observe +
   ingest, descriptors, merge, subsets; and the Dagster runs' own start/end times per job.
2. the sensor: `pool_chunk_sensor` ticked --ticks times on the unchanged pool (the cursor of a
   first, untimed tick), each tick `build_sensor_context` + the evaluation; median and max.
3. append --append-share (1%) of the pool's lines as new rows of new videos (new frame lists) to
   video.jsonl (--append-to both: image and video rows in the pool's proportions, to both files;
   video QAs cost ~2.5x the pool's average QA to describe, so the default is the costlier case);
   `plan_backfill(dry_run=True)` (change detection alone, reported, not counted), then
   `run_backfill` timed as in 1: chunks reparsed and described, QAs computed vs reused.
4. the ratio incremental / from-scratch (wall) and whether it is <= GOAL_RATIO.
5. --verify (default on up to VERIFY_DEFAULT_MAX_QAS QAs): the data folder is moved aside, a
   from-scratch run on the changed pool builds a fresh one at the same path with a fresh instance
   (also timed), and the merged tables (CSV, total order) and every subset file are compared byte
   for byte with the incremental result (as tests/test_living_pool.py does).
6. linear chunk reads: a --index-lines-line file (default: 1,000,000) of `benchmarks/pool_index.py`'s
   rows, indexed, refreshed unchanged (no byte read), then every chunk read by its byte range
   (`pool_index.span_records`): chunks read, bytes the chunks span, bytes this process read
   (/proc/self/io rchar), the file's size, and the mean time per chunk in the first vs last tenth
   of the file (flat when linear; re-reading from the file's start made it grow with the chunk's
   place). benchmarks/pool_index.py times that quadratic way too.

`benchmarks/build.py`'s `host_check` records how busy the shared machine is before steps 1 and 3.
Results: a markdown table, and benchmarks/out/incremental_update_<qas>.json (git-ignored), with
the workdir's disk use (the per-QA descriptor cache is one small JSON file per QA: ~4 KiB on disk
each). The workdir is deleted at the end unless --keep. Dagster's own logs go to stderr.
Never asserted in tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
sys.path.insert(0, str(ROOT))
# The four preset profiles only (goal_profiles is read when gdo_assets.subsets is imported).
os.environ.pop("GDO_PROFILES_DIR", None)

GOAL_RATIO = 0.05
TICK_GOAL_S = 1.0
MIN_CHUNKS = 16
CLIP_FRAMES = 32
FRAME_SIZE = (320, 240)
VIDEO_SEGMENTS = 4  # runs of consecutive bank frames per video frame list
SEGMENT_FRAMES = CLIP_FRAMES // VIDEO_SEGMENTS
VERIFY_DEFAULT_MAX_QAS = 200_000
MARKER = "incremental_update.workdir"  # a workdir this script may delete
TABLES = {  # merged table -> ORDER BY (a total order), as tests/test_living_pool.py compares them
    "qa": "qa_uid",
    "descriptors": "qa_uid",
    "rejects": "source_file, line, reason, detail",
    "merge_report": "1",
}
STAGES = ("plan", "observe", "ingest", "descriptors", "merge", "subsets", "other")


def _load(name: str):
    """A sibling benchmark as a module (benchmarks/ is not a package; `build` is also a PyPA tool)."""
    spec = importlib.util.spec_from_file_location(f"gdo_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


BUILD = _load("build")  # _question, source weights, TURNS_PER_ROW, ROWS_PER_VIDEO, host_check


def auto_chunk_lines(lines: int) -> int:
    """The project's default chunk size, or smaller so the pool has about MIN_CHUNKS chunks."""
    from gdo_core.pool import DEFAULT_CHUNK_LINES

    return max(1, min(DEFAULT_CHUNK_LINES, math.ceil(lines / MIN_CHUNKS)))


# ---- the pool ------------------------------------------------------------------------------


def write_bank(folder: Path, clips: int) -> list[str]:
    """clips x CLIP_FRAMES JPEG frames (320x240); their paths relative to folder's parent."""
    write_video = _load("descriptors").write_video
    width, height = FRAME_SIZE
    paths = []
    for c in range(clips):
        for p in write_video(folder / f"c{c:03d}", CLIP_FRAMES, width, height, speed=0.5 + c % 4, seed=1000 + c):
            paths.append(str(Path(p).relative_to(folder.parent)))
    return paths


class PoolRows:
    """Image and video rows of the generated pool, as JSON lines, continued on demand (seeded)."""

    def __init__(self, bank: list[str], clips: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bank, self.clips = bank, clips
        self.image_names, self.image_w = list(BUILD.IMAGE_SOURCES), list(BUILD.IMAGE_SOURCES.values())
        self.video_names, self.video_w = list(BUILD.VIDEO_SOURCES), list(BUILD.VIDEO_SOURCES.values())
        self.lists: set[tuple[tuple[int, int], ...]] = set()  # every video's (clip, offset) runs
        self.video_row = 0
        self.symlink_dirs = 0

    def _messages(self, video: bool) -> list[dict[str, str]]:
        messages = []
        for t in range(self.rng.choice(BUILD.TURNS_PER_ROW)):
            q, a = BUILD._question(self.rng, video)
            media = "<video>\n" if video else "<image>\n"
            messages += [{"role": "user", "content": (media if t == 0 else "") + q}, {"role": "assistant", "content": a}]
        return messages

    def image_rows(self) -> Iterator[tuple[str, int]]:
        """(line, QAs) of image rows; row i shows bank frame i % len(bank) through symlink dir i // len(bank)."""
        i = 0
        while True:
            r, b = divmod(i, len(self.bank))
            self.symlink_dirs = max(self.symlink_dirs, r + 1)
            messages = self._messages(False)
            row = {
                "id": f"ov-{i}",
                "data_source": self.rng.choices(self.image_names, self.image_w)[0],
                "images": [f"images/s{r:03d}/{Path(self.bank[b]).relative_to('bank')}"],
                "messages": messages,
            }
            yield json.dumps(row) + "\n", len(messages) // 2
            i += 1

    def _frame_list(self) -> list[str]:
        while True:
            runs = tuple(
                (self.rng.randrange(self.clips), self.rng.randrange(CLIP_FRAMES - SEGMENT_FRAMES + 1))
                for _ in range(VIDEO_SEGMENTS)
            )
            if runs not in self.lists:
                self.lists.add(runs)
                return [self.bank[c * CLIP_FRAMES + o + k] for c, o in runs for k in range(SEGMENT_FRAMES)]

    def video_rows(self) -> Iterator[tuple[str, int]]:
        """(line, QAs) of video rows; every ROWS_PER_VIDEO consecutive rows share a new video."""
        while True:
            i = self.video_row
            if i % BUILD.ROWS_PER_VIDEO == 0:
                self._frames = self._frame_list()
                self._source = self.rng.choices(self.video_names, self.video_w)[0]
            messages = self._messages(True)
            row = {
                "id": f"vv-{i}",
                "video_id": f"v{i // BUILD.ROWS_PER_VIDEO:07d}",
                "images": self._frames,
                "messages": messages,
                "data_source": self._source,
            }
            self.video_row += 1
            yield json.dumps(row) + "\n", len(messages) // 2


def link_images(pool_dir: Path, dirs: int) -> None:
    """images/s<r> -> ../bank for r < dirs (what the image rows' paths go through)."""
    (pool_dir / "images").mkdir(exist_ok=True)
    for r in range(dirs):
        link = pool_dir / "images" / f"s{r:03d}"
        if not link.is_symlink():
            link.symlink_to(Path("..") / "bank")


def write_rows(path: Path, rows: Iterator[tuple[str, int]], qas: int, *, whole_videos: bool = False,
               lines: int | None = None, mode: str = "w") -> tuple[int, int]:
    """Write rows until `qas` QAs (or exactly `lines` lines); (lines, QAs) written. `whole_videos`:
    stop on a video boundary (an even number of video rows)."""
    n_lines = n_qas = 0
    with open(path, mode) as fh:
        for line, k in rows:
            fh.write(line)
            n_lines, n_qas = n_lines + 1, n_qas + k
            if lines is not None:
                if n_lines >= lines:
                    break
            elif n_qas >= qas and not (whole_videos and n_lines % BUILD.ROWS_PER_VIDEO):
                break
    return n_lines, n_qas


# ---- one backfill, timed per stage ---------------------------------------------------------


def _rusage_cpu() -> float:
    return time.process_time() + sum(
        getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime")
    )


def _stage_of(line: str) -> str | None:
    for prefix, stage in (("parsed ", "ingest"), ("described ", "descriptors"), ("merged ", "merge"),
                          ("built ", "subsets")):
        if line.startswith(prefix):
            return stage
    return None


def _run_records(instance, after: int) -> list[Any]:
    return [r for r in instance.get_run_records() if r.storage_id > after]


def _last_run_id(instance) -> int:
    records = instance.get_run_records(limit=1)
    return records[0].storage_id if records else 0


def timed_backfill(defs, instance) -> dict[str, Any]:
    """`run_backfill` with wall and CPU seconds per stage (from when it reports each step)."""
    from gdo_assets.living import run_backfill

    marks: list[tuple[float, float, str]] = []
    mark_runs = _last_run_id(instance)
    t0, c0 = time.perf_counter(), _rusage_cpu()
    report = run_backfill(defs, instance, echo=lambda line: marks.append((time.perf_counter(), _rusage_cpu(), line)))
    t1, c1 = time.perf_counter(), _rusage_cpu()
    if report.failed:
        raise SystemExit(f"backfill failed: {report.failed}")
    wall = dict.fromkeys(STAGES, 0.0)
    cpu = dict.fromkeys(STAGES, 0.0)
    plan_end = next((i for i, m in enumerate(marks) if _stage_of(m[2])), len(marks))
    # The plan's lines are echoed together once it is made; every later line closes one step.
    prev_t, prev_c = (marks[0][0], marks[0][1]) if marks else (t1, c1)
    wall["plan"], cpu["plan"] = prev_t - t0, prev_c - c0
    steps = []
    for t, c, line in marks[plan_end:]:
        stage = _stage_of(line) or "other"
        wall[stage] += t - prev_t
        cpu[stage] += c - prev_c
        steps.append({"step": line, "wall_s": round(t - prev_t, 3), "cpu_s": round(c - prev_c, 3)})
        prev_t, prev_c = t, c
    wall["other"] += t1 - prev_t
    cpu["other"] += c1 - prev_c
    runs: dict[str, dict[str, float]] = {}
    for record in _run_records(instance, mark_runs):
        job = record.dagster_run.job_name
        entry = runs.setdefault(job, {"runs": 0, "seconds": 0.0})
        entry["runs"] += 1
        if record.start_time and record.end_time:
            entry["seconds"] += record.end_time - record.start_time
    # The observation runs before the first parse, inside the first "ingest" step: split it out.
    observed = runs.get("observe_pool", {}).get("seconds", 0.0)
    moved = min(observed, wall["ingest"])
    wall["ingest"] -= moved
    wall["observe"] += moved
    share = moved / (wall["ingest"] + moved) if wall["ingest"] + moved > 0 else 0.0
    cpu_moved = cpu["ingest"] * share  # CPU split by the wall share (no per-run CPU is recorded)
    cpu["ingest"] -= cpu_moved
    cpu["observe"] += cpu_moved
    plan = report.plan
    return {
        "wall_s": t1 - t0,
        "cpu_s": c1 - c0,
        "stages_wall_s": wall,
        "stages_cpu_s": cpu,
        "dagster_runs": runs,
        "steps": steps,  # each step run_backfill reported, with the time since the previous one
        "merge_timings_s": _merge_timings(instance) if report.merged else None,
        "plan": {
            "chunks": len(plan.sync.index.chunk_keys()),
            "files_read": plan.sync.stats.files_read,
            "bytes_read": plan.sync.stats.bytes_read,
            "added": list(plan.sync.changes.added),
            "changed": list(plan.sync.changes.changed),
            "parse": dict(plan.chunks.parse),
            "describe": dict(plan.chunks.describe),
            "merge": plan.merge,
            "subsets": dict(plan.subsets),
        },
        "parsed": list(report.parsed),
        "described": dict(report.described),
        "qa_computed": report.computed,
        "qa_reused": report.reused,
        "merged": report.merged,
        "subsets": list(report.subsets),
        "subset_checks_failed": dict(report.subset_checks_failed),
    }


def _merge_timings(instance) -> dict[str, float] | None:
    """The phases of the latest merge (its materialization's timings_s)."""
    from dagster import AssetKey, AssetRecordsFilter

    records = instance.fetch_materializations(AssetRecordsFilter(AssetKey("descriptors")), limit=1).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    return meta["timings_s"].value if "timings_s" in meta else None


def motion_counts(instance, after: int) -> dict[str, float]:
    """Frame lists motion ran on and its seconds, summed over the descriptor_shards materializations after a storage id."""
    from dagster import AssetKey, AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("descriptor_shards"), after_storage_id=after), limit=10_000
    ).records
    out = {"frame_lists": 0, "motion_seconds": 0.0, "computed": 0, "reused": 0}
    for record in records:
        meta = record.asset_materialization.metadata
        for name in out:
            if name in meta:
                out[name] += meta[name].value
    return out


def _last_event_id(instance) -> int:
    from dagster import AssetKey, AssetRecordsFilter

    records = instance.fetch_materializations(AssetRecordsFilter(AssetKey("descriptor_shards")), limit=1).records
    return records[0].storage_id if records else 0


def distinct_lists(data: Path, keys: list[str]) -> dict[str, int]:
    """Distinct (chunk, frame list) pairs among the QAs of the given chunks: what motion must run on."""
    import polars as pl

    from gdo_core import schema as S

    out = {"qas": 0, "video_lists": 0, "image_lists": 0}
    for key in keys:
        qa = pl.read_parquet(data / "pool" / "qa" / f"{key}.parquet", columns=["bucket", "frames"])
        out["qas"] += qa.height
        for video, name in ((True, "video_lists"), (False, "image_lists")):
            part = qa.filter((pl.col("bucket") == S.BUCKET_VIDEO) == video)
            out[name] += part.select(pl.col("frames").list.join("|")).n_unique() if part.height else 0
    return out


# ---- the pieces around the backfills -------------------------------------------------------


def new_instance(home: Path):
    """A SQLite Dagster instance in its own folder (as `gdo backfill` uses $DAGSTER_HOME)."""
    from dagster import DagsterInstance

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return DagsterInstance.from_config(str(home))


def definitions(data: Path, pool: Path, chunk_lines: int):
    from dagster_project.definitions import build_definitions
    from gdo_assets.descriptors import DescriptorModel
    from gdo_assets.project import GdoProject

    project = GdoProject(
        data_dir=str(data), onevision=[str(pool / "onevision.jsonl")], video=[str(pool / "video.jsonl")],
        chunk_lines=chunk_lines, target_frames=CLIP_FRAMES,
    )
    # env={}: no GDO_* variable and no settings file (gdo.toml) is read.
    return build_definitions(project, DescriptorModel(motion_only=True), in_process=True, env={})


def sensor_ticks(defs, instance, n: int) -> dict[str, Any]:
    """`pool_chunk_sensor` ticked n times on the unchanged pool (after one untimed tick for the cursor)."""
    from dagster import SkipReason, build_sensor_context

    from gdo_assets.pool import pool_chunk_sensor

    project = defs.resources["gdo"]
    first = pool_chunk_sensor(build_sensor_context(instance=instance, cursor=None, resources={"gdo": project}))
    cursor = first.cursor
    times, evaluate = [], []
    for _ in range(n):
        t = time.perf_counter()
        context = build_sensor_context(instance=instance, cursor=cursor, resources={"gdo": project})
        t_eval = time.perf_counter()
        result = pool_chunk_sensor(context)
        done = time.perf_counter()
        if not (isinstance(result, SkipReason) and result.skip_message == "pool unchanged"):
            raise SystemExit(f"sensor tick on the unchanged pool did not skip: {result}")
        times.append(done - t)
        evaluate.append(done - t_eval)
    return {
        "ticks": n,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "median_evaluation_s": statistics.median(evaluate),
        "result": "SkipReason('pool unchanged')",
    }


def export(data: Path, out: Path) -> dict[str, bytes]:
    """Relative path -> bytes: each merged table as CSV in a total order, and every subset file
    (tests/test_living_pool.py's `export`)."""
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(data / "gdo.duckdb"), read_only=True)
    try:
        for table, order in TABLES.items():
            con.execute(f"COPY (SELECT * FROM {table} ORDER BY {order}) TO '{out / f'{table}.csv'}' (HEADER, DELIMITER ',')")
    finally:
        con.close()
    files = {f"tables/{p.name}": p.read_bytes() for p in sorted(out.glob("*.csv"))}
    subsets = data / "subsets"
    files |= {f"subsets/{p.relative_to(subsets)}": p.read_bytes() for p in sorted(subsets.rglob("*")) if p.is_file()}
    return files


def _du_kib(path: Path) -> int | None:
    """Disk usage of a folder (du -sk), for sizing a 1M run's workdir."""
    done = subprocess.run(["du", "-sk", str(path)], check=False, capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout else None


def _rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def linear_reads(folder: Path, lines: int, chunk_lines: int) -> dict[str, Any]:
    """Index a `lines`-line file and read every chunk by its byte range: linear, not quadratic."""
    from gdo_core import pool as P
    from gdo_core import pool_index as I

    row = _load("pool_index")._row
    path = folder / "lines.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.writelines(row(i) + "\n" for i in range(lines))
    size = path.stat().st_size
    pool = P.PoolFile(path, "onevision")
    t = time.perf_counter()
    index, first = I.index_pool([pool], chunk_lines)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    _, again = I.index_pool([pool], chunk_lines, index)
    unchanged_s = time.perf_counter() - t
    chunks = index.files[0].chunks
    times, spanned, records = [], 0, 0
    rchar = _rchar()
    t = time.perf_counter()
    for span in chunks:
        began = time.perf_counter()
        records += len(I.span_records(path, span, chunk_lines))
        times.append(time.perf_counter() - began)
        spanned += span.end - span.start
    read_s = time.perf_counter() - t
    rchar_read = _rchar() - rchar if rchar is not None else None
    tenth = max(1, len(times) // 10)
    first_s, last_s = statistics.mean(times[:tenth]), statistics.mean(times[-tenth:])
    path.unlink()
    return {
        "lines": lines,
        "chunk_lines": chunk_lines,
        "file_bytes": size,
        "index_first_s": index_s,
        "index_first_bytes_read": first.bytes_read,
        "refresh_unchanged_s": unchanged_s,
        "refresh_unchanged_bytes_read": again.bytes_read,
        "chunks_read": len(chunks),
        "records_read": records,
        "bytes_spanned": spanned,
        "bytes_read_syscalls": rchar_read,
        "read_all_chunks_s": read_s,
        "read_mib_per_s": size / 2**20 / read_s if read_s > 0 else None,
        "mean_chunk_s_first_tenth": first_s,
        "mean_chunk_s_last_tenth": last_s,
        "last_over_first": last_s / first_s if first_s > 0 else None,
    }


# ---- report --------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    scratch, incr = result["from_scratch"], result["incremental"]
    lines = [
        "| stage | from scratch wall s | CPU s | incremental wall s | CPU s | incr / scratch (wall) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        a, b = scratch["stages_wall_s"][stage], incr["stages_wall_s"][stage]
        lines.append(
            f"| {stage} | {_fmt(a, 2)} | {_fmt(scratch['stages_cpu_s'][stage], 2)} | {_fmt(b, 2)} | "
            f"{_fmt(incr['stages_cpu_s'][stage], 2)} | {f'{b / a:.1%}' if a >= 0.01 else '-'} |"
        )
    lines.append(
        f"| **total** | **{_fmt(scratch['wall_s'], 2)}** | {_fmt(scratch['cpu_s'], 2)} | **{_fmt(incr['wall_s'], 2)}** | "
        f"{_fmt(incr['cpu_s'], 2)} | **{result['ratio']:.2%}** |"
    )
    return "\n".join(lines)


def summary_lines(result: dict[str, Any]) -> list[str]:
    pool, incr, scratch = result["pool"], result["incremental"], result["from_scratch"]
    out = [
        (
            f"pool: {pool['qas']:,} QAs ({pool['image_qas']:,} image, {pool['video_qas']:,} video in {pool['videos']:,} videos), "
            f"{pool['lines']:,} lines, chunks of {pool['chunk_lines']:,} lines: {scratch['plan']['chunks']} chunks; "
            f"appended {pool['appended_lines']:,} lines ({pool['appended_qas']:,} QAs: {pool['appended_video_qas']:,} in "
            f"{pool['appended_videos']:,} new videos to video.jsonl, {pool['appended_image_qas']:,} to onevision.jsonl)"
        ),
        (
            f"from scratch: {scratch['wall_s']:.1f} s wall, {scratch['cpu_s']:.1f} CPU s; motion ran on "
            f"{scratch['motion']['frame_lists']:,} frame lists for {scratch['qa_computed']:,} QAs "
            f"(the ingested chunks hold {scratch['distinct']['video_lists']:,} distinct video + "
            f"{scratch['distinct']['image_lists']:,} image frame lists per chunk)"
        ),
        (
            f"change detection (plan_backfill, dry run): {result['change_detection']['seconds']:.3f} s, "
            f"files read: {result['change_detection']['files_read']} ({result['change_detection']['bytes_read']:,} bytes), "
            f"chunks changed: {len(result['change_detection']['changed'])}, added: {len(result['change_detection']['added'])}"
        ),
        (
            f"incremental: {len(incr['parsed'])} chunks reparsed, {len(incr['described'])} described "
            f"({incr['qa_computed']:,} QAs computed, {incr['qa_reused']:,} reused from the cache; "
            f"{result['untouched_qas']:,} QAs in untouched chunks), merge rerun: {incr['merged']}, "
            f"subsets rebuilt: {', '.join(incr['subsets']) or 'none'}"
        ),
        (
            f"ratio incremental / from scratch (wall): {result['ratio']:.2%} "
            f"(goal <= {GOAL_RATIO:.0%}: {'met' if result['ratio'] <= GOAL_RATIO else 'NOT met'}); "
            f"CPU: {result['cpu_ratio']:.2%}"
        ),
        (
            f"sensor tick on the unchanged pool: median {result['sensor']['median_s'] * 1e3:.1f} ms, "
            f"max {result['sensor']['max_s'] * 1e3:.1f} ms over {result['sensor']['ticks']} ticks "
            f"(goal < {TICK_GOAL_S:.0f} s: {'met' if result['sensor']['max_s'] < TICK_GOAL_S else 'NOT met'})"
        ),
    ]
    lin = result.get("linear_reads")
    if lin:
        out.append(
            f"linear reads: {lin['lines']:,}-line file ({lin['file_bytes'] / 2**20:.1f} MiB), {lin['chunks_read']} chunks "
            f"read by range in {lin['read_all_chunks_s']:.2f} s ({_fmt(lin['read_mib_per_s'], 0)} MiB/s): "
            f"{lin['bytes_spanned']:,} bytes spanned, {_fmt(lin['bytes_read_syscalls'], 0)} bytes read "
            f"(file: {lin['file_bytes']:,}); per chunk first tenth {lin['mean_chunk_s_first_tenth'] * 1e3:.1f} ms "
            f"vs last tenth {lin['mean_chunk_s_last_tenth'] * 1e3:.1f} ms; first index {lin['index_first_s']:.2f} s "
            f"({lin['index_first_bytes_read']:,} bytes), unchanged refresh {lin['refresh_unchanged_s'] * 1e3:.2f} ms "
            f"({lin['refresh_unchanged_bytes_read']} bytes)"
        )
    verify = result.get("verify")
    if verify:
        out.append(
            f"verify: from scratch on the changed pool {verify['from_scratch_wall_s']:.1f} s; "
            f"{verify['files_compared']} files compared, "
            + ("identical" if verify["identical"] else f"DIFFERENT: {verify['different'][:10]}")
        )
    return out


# ---- main ----------------------------------------------------------------------------------


def prepare_workdir(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"{path} exists and was not made by this script; choose another --workdir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by benchmarks/incremental_update.py; deleted by its next run\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qas", type=int, default=1_000_000, help="QAs in the pool before the append")
    parser.add_argument("--workdir", type=Path, default=None, help="default: benchmarks/out/incremental_<qas>")
    parser.add_argument("--chunk-lines", type=int, default=None, help="default: 20,000, or fewer for >= 16 chunks")
    parser.add_argument("--append-share", type=float, default=0.01, help="lines appended, as a share of the pool's lines")
    parser.add_argument("--append-to", choices=("video", "both"), default="video",
                        help="video: every appended line a new video's row (the costliest QAs to describe; default); "
                        "both: image and video rows in the pool's proportions")
    parser.add_argument("--bank-clips", type=int, default=128, help="clips of 32 frames in the frame bank")
    parser.add_argument("--ticks", type=int, default=7, help="timed sensor ticks")
    parser.add_argument("--index-lines", type=int, default=1_000_000, help="lines of the linear-read file (0: skip)")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--keep", action="store_true", help="keep the workdir (pool, data folders, instances)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help=f"compare with a from-scratch run on the changed pool (default: on up to {VERIFY_DEFAULT_MAX_QAS:,} QAs)")
    args = parser.parse_args()
    verify = args.verify if args.verify is not None else args.qas <= VERIFY_DEFAULT_MAX_QAS
    work = (args.workdir or OUT / f"incremental_{args.qas}").resolve()
    prepare_workdir(work)
    pool_dir, data = work / "pool", work / "data"
    pool_dir.mkdir()
    result: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "workdir": str(work), "cpu_cores": len(os.sched_getaffinity(0))}

    # ---- the pool --------------------------------------------------------------------------
    t = time.perf_counter()
    bank = write_bank(pool_dir / "bank", args.bank_clips)
    rows = PoolRows(bank, args.bank_clips, args.seed)
    n_video_target = args.qas // 3
    image_iter = rows.image_rows()
    ov_lines, ov_qas = write_rows(pool_dir / "onevision.jsonl", image_iter, args.qas - n_video_target)
    link_images(pool_dir, rows.symlink_dirs)
    video_iter = rows.video_rows()
    vv_lines, vv_qas = write_rows(pool_dir / "video.jsonl", video_iter, n_video_target, whole_videos=True)
    videos = len(rows.lists)
    chunk_lines = args.chunk_lines or auto_chunk_lines(ov_lines + vv_lines)
    result["pool"] = {
        "qas": ov_qas + vv_qas, "image_qas": ov_qas, "video_qas": vv_qas, "videos": videos,
        "lines": ov_lines + vv_lines, "image_lines": ov_lines, "video_lines": vv_lines,
        "bank_frames": len(bank), "image_symlink_dirs": rows.symlink_dirs, "chunk_lines": chunk_lines,
        "frames_per_video": CLIP_FRAMES, "frame_size": "x".join(map(str, FRAME_SIZE)),
        "generate_s": time.perf_counter() - t,
    }
    print(f"pool: {ov_qas + vv_qas:,} QAs in {ov_lines + vv_lines:,} lines, {videos:,} videos, "
          f"chunks of {chunk_lines:,} lines ({result['pool']['generate_s']:.1f} s)", flush=True)

    # ---- 1. from scratch -------------------------------------------------------------------
    result["host_check_before_scratch"] = BUILD.host_check(pool_dir)
    defs = definitions(data, pool_dir, chunk_lines)
    instance = new_instance(work / "home")
    mark = _last_event_id(instance)
    scratch = timed_backfill(defs, instance)
    scratch["motion"] = motion_counts(instance, mark)
    scratch["distinct"] = distinct_lists(data, list(scratch["described"]))
    result["from_scratch"] = scratch
    print(f"from scratch: {scratch['wall_s']:.1f} s ({scratch['cpu_s']:.1f} CPU s)", flush=True)

    # ---- 2. the sensor on the unchanged pool -----------------------------------------------
    result["sensor"] = sensor_ticks(defs, instance, args.ticks)
    print(f"sensor tick: median {result['sensor']['median_s'] * 1e3:.1f} ms", flush=True)

    # ---- 3. append, detect, backfill -------------------------------------------------------
    n_append = math.ceil(args.append_share * (ov_lines + vv_lines))
    n_image = round(n_append * ov_lines / (ov_lines + vv_lines)) if args.append_to == "both" else 0
    n_video = n_append - n_image
    n_video += n_video % BUILD.ROWS_PER_VIDEO  # whole new videos
    before = len(rows.lists)
    add_ov = write_rows(pool_dir / "onevision.jsonl", image_iter, 0, lines=n_image, mode="a") if n_image else (0, 0)
    link_images(pool_dir, rows.symlink_dirs)
    add_vv = write_rows(pool_dir / "video.jsonl", video_iter, 0, lines=n_video, mode="a") if n_video else (0, 0)
    add_lines, add_qas = add_ov[0] + add_vv[0], add_ov[1] + add_vv[1]
    result["pool"] |= {
        "appended_lines": add_lines, "appended_qas": add_qas, "appended_videos": len(rows.lists) - before,
        "appended_image_lines": add_ov[0], "appended_image_qas": add_ov[1],
        "appended_video_lines": add_vv[0], "appended_video_qas": add_vv[1],
    }
    from gdo_assets.living import plan_backfill

    t = time.perf_counter()
    dry = plan_backfill(defs, instance, dry_run=True)
    result["change_detection"] = {
        "seconds": time.perf_counter() - t,
        "files_read": dry.sync.stats.files_read,
        "files_unchanged": dry.sync.stats.files_unchanged,
        "bytes_read": dry.sync.stats.bytes_read,
        "added": list(dry.sync.changes.added),
        "changed": list(dry.sync.changes.changed),
        "unchanged": len(dry.sync.changes.unchanged),
    }
    result["host_check_before_incremental"] = BUILD.host_check(pool_dir)
    mark = _last_event_id(instance)
    incr = timed_backfill(defs, instance)
    incr["motion"] = motion_counts(instance, mark)
    result["incremental"] = incr
    described_qas = sum(v["qa"] for v in incr["described"].values())
    result["untouched_qas"] = result["pool"]["qas"] + add_qas - described_qas
    result["ratio"] = incr["wall_s"] / scratch["wall_s"]
    result["cpu_ratio"] = incr["cpu_s"] / scratch["cpu_s"]
    result["goal_met"] = result["ratio"] <= GOAL_RATIO
    print(f"incremental: {incr['wall_s']:.1f} s ({incr['cpu_s']:.1f} CPU s): {result['ratio']:.2%}", flush=True)
    again = plan_backfill(defs, instance, dry_run=True)
    result["nothing_left_after_incremental"] = not again.any
    instance.dispose()

    # ---- 5. verify against a from-scratch run on the changed pool --------------------------
    if verify:
        incremental_files = export(data, work / "export-incremental")
        data.rename(work / "data-incremental")
        fresh_defs = definitions(data, pool_dir, chunk_lines)
        fresh_instance = new_instance(work / "home-fresh")
        fresh = timed_backfill(fresh_defs, fresh_instance)
        fresh_instance.dispose()
        scratch_files = export(data, work / "export-scratch")
        different = sorted(
            name for name in set(incremental_files) | set(scratch_files)
            if incremental_files.get(name) != scratch_files.get(name)
        )
        result["verify"] = {
            "from_scratch_wall_s": fresh["wall_s"],
            "from_scratch_cpu_s": fresh["cpu_s"],
            "from_scratch_stages_wall_s": fresh["stages_wall_s"],
            "files_compared": len(set(incremental_files) | set(scratch_files)),
            "identical": not different,
            "different": different,
        }
        print(f"verify: {'identical' if not different else f'{len(different)} files differ'}", flush=True)

    # ---- 6. linear chunk reads -------------------------------------------------------------
    if args.index_lines:
        result["linear_reads"] = linear_reads(work / "lines", args.index_lines, auto_chunk_lines(args.index_lines))

    result["workdir_kib"] = _du_kib(work)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_average_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    out_path = OUT / f"incremental_update_{args.qas}.json"
    out_path.write_text(json.dumps(result, indent=1, default=str))
    print()
    print(table(result))
    print()
    for line in summary_lines(result):
        print(f"- {line}")
    print(f"\nwritten: {out_path}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
