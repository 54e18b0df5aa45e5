"""Ingestion throughput and peak memory on a generated pool (both message layouts mixed).

Usage: python benchmarks/ingest.py [--lines 2000000] [--runs 3] [--workdir benchmarks/out/ingest]

Each run is `gdo_core.pool.ingest` in a fresh process, which parses the pool's chunks on worker
processes (one per core once the pool files reach `pool.PARALLEL_INGEST_BYTES`). Printed per run
and as medians of the runs:

- QA/s: QAs written / ingest's wall time inside the process (imports not counted). No baseline:
  nothing else is timed.
- tree peak RSS: this script reads the RSS of the ingest process and of every process below it
  (its workers and multiprocessing's resource tracker) from /proc/<pid>/statm every --sample-ms
  milliseconds (50 by default; on a loaded machine the sampling thread waits for a core, so the
  achieved mean interval is printed) and keeps the largest sum over one sample. RSS counts a page
  shared by several processes (the shared libraries every worker maps) once per process.
- tree peak PSS: the same sum of PSS, which splits a shared page between the processes that map
  it, so the sum is the memory the whole tree holds. The kernel walks each process's page tables
  for it (/proc/<pid>/smaps_rollup, ~20 ms of CPU for the whole tree at 300k lines), so it is read
  only every --pss-every-th sample (10 by default, about twice a second).
  Both are sampled, so a spike shorter than the interval can be missed: they are lower bounds of
  the true peaks. The sampling's own CPU time is printed: it competes with the ingest for the cores.
- main peak RSS: the ingest process's own ru_maxrss (exact, kept by the kernel; workers excluded).
- largest child peak RSS: ru_maxrss over its waited-for child processes, which the kernel keeps as
  the largest single child's peak, not a sum over them.
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
import threading
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


def _parents() -> dict[int, list[int]]:
    """Child pids of every process, from /proc/<pid>/stat (the field after the command name)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    """The pid root and the pids of every process below it."""
    children, out, todo = _parents(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int) -> int | None:
    """Resident set size of one process in kB (/proc/<pid>/statm, cheap); None once it has ended."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return None


def _pss_kb(pid: int) -> int | None:
    """Proportional set size of one process in kB (/proc/<pid>/smaps_rollup: the kernel walks the
    process's page tables, ~5 ms for a worker of a few hundred MB); None once it has ended."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key == "Pss":
            return int(rest.split()[0])
    return None


class TreeSampler(threading.Thread):
    """Largest summed RSS (every `every_s`) and PSS (every `pss_every`-th sample) of a process and
    its descendants."""

    def __init__(self, root: int, every_s: float, pss_every: int) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s, self.pss_every = root, every_s, max(1, pss_every)
        self.done = threading.Event()
        self.peak_rss_kb = self.peak_pss_kb = self.samples = self.pss_samples = 0
        self.cpu_s = 0.0  # CPU time the sampling itself took (it competes with the ingest)
        self.elapsed_s = 0.0
        self.pids_seen: set[int] = set()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.done.is_set():
            cpu = time.thread_time()
            pids = _tree(self.root)
            rss = 0
            for pid in pids:
                got = _rss_kb(pid)
                if got is not None:
                    rss += got
                    self.pids_seen.add(pid)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            if self.samples % self.pss_every == 0:
                pss = sum(filter(None, map(_pss_kb, pids)))
                self.peak_pss_kb = max(self.peak_pss_kb, pss)
                self.pss_samples += 1
            self.samples += 1
            self.cpu_s += time.thread_time() - cpu
            self.done.wait(self.every_s)
        self.elapsed_s = time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="pool lines in total (half image, half video)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/ingest"))
    parser.add_argument("--sample-ms", type=float, default=50.0,
                        help="how often the process tree's RSS is read (about 2 ms of CPU a read)")
    parser.add_argument("--pss-every", type=int, default=10,
                        help="read the tree's PSS every N-th sample (about 20 ms of CPU a read)")
    args = parser.parse_args()
    sampling = Path("/proc/self/smaps_rollup").is_file()
    if not sampling:
        print("(no /proc/<pid>/smaps_rollup here: the tree peaks are not measured)", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ov, vv = args.workdir / "ov.jsonl.gz", args.workdir / "vv.jsonl.gz"
    if not (ov.exists() and vv.exists() and (args.workdir / f"lines-{args.lines}").exists()):
        print(f"generating {args.lines} lines ...", flush=True)
        for stale in args.workdir.glob("lines-*"):
            stale.unlink()
        generate(ov, args.lines // 2, video=False, seed=1)
        generate(vv, args.lines - args.lines // 2, video=True, seed=2)
        (args.workdir / f"lines-{args.lines}").touch()
    runs = []
    for run in range(args.runs):
        out = args.workdir / "out"
        code = (
            "import resource, sys, time, json; from gdo_core.pool import ingest; t=time.perf_counter(); "
            f"s=ingest({str(ov)!r}, {str(vv)!r}, {str(out)!r}); dt=time.perf_counter()-t; "
            "print(json.dumps({'qa': s.counts['qa'], 'rejects': s.counts['rejects'], 'seconds': dt, "
            "'main_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, "
            "'largest_child_peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
        )
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = TreeSampler(proc.pid, args.sample_ms / 1000, args.pss_every) if sampling else None
        if sampler is not None:
            sampler.start()
        stdout, stderr = proc.communicate()
        if sampler is not None:
            sampler.done.set()
            sampler.join()
        if proc.returncode != 0:
            sys.exit(f"ingest failed:\n{stderr[-2000:]}")
        stats = json.loads(stdout.strip().splitlines()[-1])
        stats["qa_per_s"] = stats["qa"] / stats["seconds"]
        if sampler is not None:
            stats["tree_peak_rss_mb"] = sampler.peak_rss_kb / 1024
            stats["tree_peak_pss_mb"] = sampler.peak_pss_kb / 1024
            stats["processes_seen"] = len(sampler.pids_seen)
            stats["samples"] = sampler.samples
            stats["pss_samples"] = sampler.pss_samples
            stats["mean_sample_interval_ms"] = 1000 * sampler.elapsed_s / max(1, sampler.samples)
            stats["sampler_cpu_s"] = sampler.cpu_s
        runs.append(stats)
        tree = (
            f"tree peak RSS {stats['tree_peak_rss_mb']:.0f} MB, tree peak PSS {stats['tree_peak_pss_mb']:.0f} MB "
            f"({stats['processes_seen']} processes; {stats['samples']} RSS samples, one per "
            f"{stats['mean_sample_interval_ms']:.0f} ms on average, {stats['pss_samples']} of them with PSS; "
            f"{stats['sampler_cpu_s']:.1f} s CPU for the sampling); "
            if sampler is not None
            else ""
        )
        print(f"run {run + 1}: {stats['qa']} QA, {stats['rejects']} rejects, {stats['seconds']:.1f} s, "
              f"{stats['qa_per_s']:,.0f} QA/s; {tree}main peak RSS {stats['main_peak_rss_mb']:.0f} MB, "
              f"largest child peak RSS {stats['largest_child_peak_rss_mb']:.0f} MB "
              f"(process wall {time.perf_counter() - started:.1f} s)", flush=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    tree = (
        f"tree peak RSS {median('tree_peak_rss_mb'):.0f} MB and tree peak PSS {median('tree_peak_pss_mb'):.0f} MB "
        f"(ingest process + workers, summed per sample), "
        if sampling
        else ""
    )
    print(f"median of {args.runs} runs of {args.lines} lines: {median('qa_per_s'):,.0f} QA/s; {tree}"
          f"main process peak RSS {median('main_peak_rss_mb'):.0f} MB, largest single child's peak RSS "
          f"{median('largest_child_peak_rss_mb'):.0f} MB (ru_maxrss)")


if __name__ == "__main__":
    main()
