"""Dagster's `goal_subsets` (temp_plus) vs `gdo build --profile temp_plus` on the same generated pool.

    python benchmarks/dagster_build.py                        # 1M QAs, 3 runs per arm
    python benchmarks/dagster_build.py --qas 20000 --runs 1   # a quick check
    python benchmarks/dagster_build.py --qas 100000 --workdir /tmp/gdo-dagster-bench

Goal: the Dagster materialization's wall time is at most GOAL_RATIO (1.5) times
`gdo build`'s, and both give the same GDO 1x and Uni-10x qa_uid lists.

Setup, done once per --workdir and not timed in the comparison (each step's time is printed and
kept in setup.json; a rerun on the same workdir reuses it):

1. the pool: `benchmarks/build.py`'s `generate_pool` (published-style onevision.jsonl,
   video.jsonl and merged-metrics metrics.jsonl, a third of the QAs video QAs);
2. ingestion through Dagster: the chunk partitions are registered (`sync_partitions`) and the
   project's `ingest_pool` job (the `candidate_pool` asset) runs once per chunk partition, in
   process, on a DagsterInstance in <workdir>/dagster_home, the project resource from GDO_*
   variables (GDO_SETTINGS=/dev/null, so no gdo.toml is read);
3. the merged DuckDB (<data>/gdo.duckdb): table `descriptors` holding exactly the rows that
   `gdo build --metrics metrics.jsonl` reads (`load_metrics(metrics.jsonl).rows`, file order),
   checked to read back equal through `load_metrics(gdo.duckdb)`, the reader `goal_subsets` uses.
   The `descriptors` (merge) asset cannot give these values: it computes `quality` as rho(x) of
   its own (robust z-stats, k-means coverage) from descriptor shards, so a merged database would
   select from other metric values than the published-style metrics file and the two arms'
   subsets would differ for that reason alone. (tests/test_build_compat.py's goal_subsets test
   builds its database the same way.)
4. one untimed `gdo build` that fills the parse cache of the warm arm.

Timed arms, each in a fresh process, `--runs` runs each, round-robin (run i of every arm before
run i + 1 of any; the arms' order rotates from round to round), median reported:

- dagster: a process that builds the project's Definitions (`build_definitions(in_process=True)`,
  the real `gdo` resource from the GDO_* variables) and executes its `build_subsets` job for
  partition temp_plus (`execute_in_process`) on the instance in <workdir>/dagster_home. Printed:
  the whole process (`process s`, interpreter start, imports and Definitions load included, as for
  the CLI arm), the `execute_in_process` call alone (`in-proc s`), and the goal_subsets step's
  STEP_START -> STEP_SUCCESS time from the event log. The asset body's parts (scan_ordered_qa,
  load_metrics, build_from_pool, composition_plot, ...) are timed by thin perf_counter wrappers
  installed in gdo_assets.subsets' namespace (microseconds of overhead).
- gdo build (cold): `gdo build --profile temp_plus --onevision --video --metrics metrics.jsonl`
  with an empty parse cache (a fresh GDO_CACHE_DIR each run): the pool files are parsed.
- gdo build (warm): the same with the cache filled by step 4 (the parsed pool and the prepared
  metrics are read back), as a second `gdo build` on unchanged files runs. The dagster arm, too,
  reads an already parsed pool (the ingested chunks), so this is the closer comparison.

The `gdo build` processes run the real command: `dagster_project.cli.main` (the `gdo` console
script) with the same argv, from a child of this script that first applies `gdo build`'s allocator
setting (`prefer_prompt_release`, which the command applies itself before polars is imported) and
wraps `build_subsets` with a timer; `in-proc s` is build_subsets' own time.

After every run the SFT files' qa_uid columns (GDO 1x and Uni-10x, in file order) are hashed and
compared across arms and runs; subset_members.parquet and the SFT file bytes are compared too
(the bytes once the Dagster arm's media paths are made relative again: candidate_pool resolves
them against the pool file's folder, `gdo build` without --media-root keeps them as written).
Peak RSS is each child's own ru_maxrss. Before each round `benchmarks/build.py`'s
`host_check` records how busy the shared machine is. Results: benchmarks/out/dagster_build_<qas>.json
(benchmarks/out/ is git-ignored). Never asserted in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()  # when this script's code began to run (a child's start-up ends here)
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
PROFILE = "temp_plus"
JOB = "build_subsets"  # dagster_project.definitions: the job of the goal_subsets asset
INGEST_JOB = "ingest_pool"
GOAL_RATIO = 1.5
ARMS = ("dagster", "build_cold", "build_warm")
RESULT_MARK = "@@dagster_build@@ "  # a child's last stdout line: this mark, then its JSON
SETUP_VERSION = 1
MARKER = "dagster_build.workdir"  # a workdir this script may delete and rebuild


def _bench_build():
    """benchmarks/build.py as a module (generate_pool, host_check): not a package, and `build`
    is also the name of a PyPA tool, so it is loaded from its path."""
    spec = importlib.util.spec_from_file_location(
        "gdo_bench_build", ROOT / "benchmarks" / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# ---- paths and environment ------------------------------------------------------------------


class Work:
    """The folders of one workdir."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pool = self.root / "pool"
        self.data = self.root / "data"  # the project data folder (GDO_DATA_DIR)
        self.home = self.root / "dagster_home"  # DAGSTER_HOME
        self.warm_cache = self.root / "cache_warm"
        self.setup = self.root / "setup.json"

    def out(self, arm: str) -> Path:
        """Where an arm's SFT files land."""
        if arm == "dagster":
            return self.data / "subsets" / PROFILE
        return self.root / f"out_{arm}"

    def env(self, chunk_lines: int) -> dict[str, str]:
        """Environment of every child: no inherited GDO_* variable, the project set explicitly."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GDO_")}
        env.pop("DAGSTER_HOME", None)
        env.update(
            {
                "PYTHONHASHSEED": "0",
                "DAGSTER_HOME": str(self.home),
                "GDO_SETTINGS": os.devnull,
                "GDO_DATA_DIR": str(self.data),
                "GDO_ONEVISION": str(self.pool / "onevision.jsonl"),
                "GDO_VIDEO": str(self.pool / "video.jsonl"),
                "GDO_CHUNK_LINES": str(chunk_lines),
            }
        )
        return env


def _emit(payload: dict) -> None:
    """The child's result line, with its own peak RSS (MB): every arm runs in one process
    (Dagster's in-process executor, `gdo build`'s threads)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stamps = {"started_at": STARTED, "emitted_at": time.time()}
    print(RESULT_MARK + json.dumps({**payload, "peak_rss_mb": peak, **stamps}), flush=True)


# ---- children ---------------------------------------------------------------------------------


def _timed(store: dict, name: str, fn):
    """fn wrapped so that each call adds its seconds to store[name] (and keeps build timings)."""

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        finally:
            store[name] = store.get(name, 0.0) + time.perf_counter() - t
        timings = getattr(out, "timings", None)
        if name == "build_from_pool" and isinstance(timings, dict):
            store["build_from_pool_steps"] = dict(timings)
        return out

    return wrapper


def child_dagster() -> None:
    """Execute the Definitions' build_subsets job for temp_plus in this process; print timings."""
    t0 = time.perf_counter()
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from gdo_assets import subsets

    t_import = time.perf_counter()
    defs = build_definitions(in_process=True)
    job = defs.resolve_job_def(JOB)
    t_defs = time.perf_counter()
    parts: dict = {}
    for name in (
        "scan_ordered_qa",
        "load_metrics",
        "build_from_pool",
        "composition_plot",
        "result_pool",
        "write_stamp",
        "_constraint_check",
        "_output_checks",
        "_js_table",
    ):
        setattr(subsets, name, _timed(parts, name, getattr(subsets, name)))
    with DagsterInstance.get() as instance:
        t_inst = time.perf_counter()
        result = job.execute_in_process(
            partition_key=PROFILE, instance=instance, raise_on_error=False
        )
        t_run = time.perf_counter()
        stamps: dict[str, float] = {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type_value
            if (
                kind in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE")
                or event.step_key
                and kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
            ):
                stamps[kind] = entry.timestamp
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    step_end = stamps.get("STEP_SUCCESS", stamps.get("STEP_FAILURE"))
    _emit(
        {
            "success": result.success,
            "checks": checks,
            "import_s": t_import - t0,
            "definitions_s": t_defs - t_import,
            "instance_s": t_inst - t_defs,
            "in_process_s": t_run - t_inst,  # the execute_in_process call
            "step_s": (step_end - stamps["STEP_START"])
            if step_end and "STEP_START" in stamps
            else None,
            "parts_s": parts,
            "after_run_s": time.perf_counter() - t_run,
        }
    )


def child_gdo_build(argv: list[str]) -> None:
    """Run the `gdo` console script's main with `argv`, timing build_subsets inside it."""
    from gdo_core.memory import prefer_prompt_release

    prefer_prompt_release()  # what `gdo build` does first, before polars is imported
    from gdo_core import build

    store: dict = {}
    original = build.build_subsets

    def timed(*args, **kwargs):
        t = time.perf_counter()
        result = original(*args, **kwargs)
        store["build_subsets_s"] = time.perf_counter() - t
        store["timings"] = dict(result.timings)
        store["parse_cache"] = result.parse_cache
        return result

    build.build_subsets = timed
    from dagster_project.cli import main

    sys.argv = ["gdo", *argv]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _emit({"exit_code": code, **store})
    sys.exit(code)


# ---- setup --------------------------------------------------------------------------------------


def setup(work: Work, qas: int, chunk_lines: int, redo: bool) -> dict:
    """Generate the pool, ingest it through Dagster, write the DuckDB, fill the warm cache; each
    step timed. A finished setup of the same pool size and chunking is reused."""
    key = {"version": SETUP_VERSION, "qas": qas, "chunk_lines": chunk_lines}
    if not redo and work.setup.is_file():
        done = json.loads(work.setup.read_text())
        if done.get("key") == key:
            print(f"setup reused from {work.setup}", flush=True)
            return done
    marker = work.root / MARKER
    if work.root.exists() and any(work.root.iterdir()):
        if not marker.is_file():
            sys.exit(
                f"{work.root} is not empty and not a workdir of this benchmark: give another --workdir"
            )
        shutil.rmtree(work.root)
    work.root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by benchmarks/dagster_build.py; deleted and rebuilt by it\n")
    work.home.mkdir()
    env = work.env(chunk_lines)
    steps: dict[str, float] = {}

    t = time.perf_counter()
    info = _bench_build().generate_pool(work.pool, qas)
    steps["generate_pool_s"] = time.perf_counter() - t
    print(f"generated {info} in {steps['generate_pool_s']:.1f}s", flush=True)

    # Ingestion and the DuckDB in a child: its env is the project's, as in the timed runs.
    t = time.perf_counter()
    done = _run_child(["--child", "setup", "--workdir", str(work.root)], env)
    if done is None:
        sys.exit("setup failed")
    steps.update(done["steps"])
    steps["setup_process_s"] = time.perf_counter() - t

    t = time.perf_counter()
    warm = _run_child(
        _build_args(work, "build_warm"), {**env, "GDO_CACHE_DIR": str(work.warm_cache)}
    )
    if warm is None or warm["exit_code"] != 0:
        sys.exit("the warm-up gdo build failed")
    steps["warm_cache_fill_build_s"] = time.perf_counter() - t
    record = {"key": key, "pool": info, "steps": steps, "ingest": done["ingest"]}
    work.setup.write_text(json.dumps(record, indent=2))
    return record


def child_setup() -> None:
    """In the project's env: register and ingest every chunk partition, then write the DuckDB."""
    import duckdb
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from gdo_assets.pool import sync_partitions
    from gdo_assets.project import DB_FILE
    from gdo_assets.subsets import scan_ordered_qa
    from gdo_core.build import load_metrics

    steps: dict[str, float] = {}
    defs = build_definitions(in_process=True)
    project = defs.resources["gdo"]
    job = defs.resolve_job_def(INGEST_JOB)
    with DagsterInstance.get() as instance:
        t = time.perf_counter()
        keys = sync_partitions(instance, project).index.chunk_keys()
        steps["register_partitions_s"] = time.perf_counter() - t
        t = time.perf_counter()
        per_chunk = []
        for key in keys:
            c = time.perf_counter()
            result = job.execute_in_process(partition_key=key, instance=instance)
            if not result.success:
                sys.exit(f"candidate_pool[{key}] failed")
            per_chunk.append(time.perf_counter() - c)
        steps["ingest_candidate_pool_s"] = time.perf_counter() - t
    qa_rows = scan_ordered_qa(project).height

    pool = Path(os.environ["GDO_ONEVISION"]).parent
    t = time.perf_counter()
    rows = load_metrics(pool / "metrics.jsonl", strict=True).rows
    db = project.path(*DB_FILE)
    tmp = db.with_name(db.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    con.register("metrics_rows", rows.to_arrow())
    con.execute("CREATE TABLE descriptors AS SELECT * FROM metrics_rows")
    con.close()
    os.replace(tmp, db)
    back = load_metrics(db, strict=True).rows
    if not back.equals(rows):
        sys.exit(f"{db}: the descriptors table does not read back as metrics.jsonl's rows")
    steps["write_duckdb_s"] = time.perf_counter() - t
    _emit(
        {
            "steps": steps,
            "ingest": {
                "chunks": len(keys),
                "qa_rows": qa_rows,
                "median_chunk_s": statistics.median(per_chunk),
                "metrics_rows": rows.height,
            },
        }
    )


# ---- runs ---------------------------------------------------------------------------------------


def _build_args(work: Work, arm: str) -> list[str]:
    return [
        "--child",
        "gdo-build",
        "--",
        "build",
        "--profile",
        PROFILE,
        "--onevision",
        str(work.pool / "onevision.jsonl"),
        "--video",
        str(work.pool / "video.jsonl"),
        "--metrics",
        str(work.pool / "metrics.jsonl"),
        "--out",
        str(work.out(arm)),
    ]


def _run_child(args: list[str], env: dict[str, str]) -> dict | None:
    """This script with `args` in a child process: its JSON, process wall time and peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    wall_started = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # communicate() before wait4: the pipes must be drained while the child runs.
    stdout, stderr = proc.communicate()
    process_s = time.perf_counter() - started
    wall_ended = time.time()
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        print(
            f"child {' '.join(args[:3])} failed ({proc.returncode}):\n{stderr[-3000:]}", flush=True
        )
        return None
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    # interpreter start-up until this script's first line, and from the result line to exit
    startup_s = result.pop("started_at") - wall_started
    exit_s = wall_ended - result.pop("emitted_at")
    return {**result, "process_s": process_s, "startup_s": startup_s, "exit_s": exit_s}


def run_arm(work: Work, arm: str, env: dict[str, str]) -> dict | None:
    """One timed run of an arm."""
    if arm == "dagster":
        return _run_child(["--child", "dagster"], env)
    cold = None
    if arm == "build_cold":
        cold = Path(tempfile.mkdtemp(prefix="cache_cold_", dir=work.root))
    cache = cold if cold is not None else work.warm_cache
    try:
        run = _run_child(_build_args(work, arm), {**env, "GDO_CACHE_DIR": str(cache)})
    finally:
        if cold is not None:
            shutil.rmtree(cold, ignore_errors=True)
    if run is not None and run.get("exit_code") != 0:
        return None
    return run


def outputs_of(folder: Path, pool: Path) -> dict:
    """Hashes of the qa_uid lists (file order) of the SFT files, of their bytes and of the members.

    `bytes_sha256` hashes the file with `"<pool folder>/` turned into `"`: the candidate_pool asset
    resolves media paths against the pool file's folder (GdoProject.parse_options: media_root, or
    else the pool file's folder), `gdo build` without --media-root keeps them as written, so the
    Dagster arm's rows name the same frames by absolute paths; `raw_bytes_sha256` is the file as is.
    """
    import polars as pl

    prefix_bytes = ('"' + str(pool.resolve()) + "/").encode()
    out = {}
    for arm_name, prefix in (("gdo_1x", "gdo_1x_"), ("uni_10x", "uni_10x_")):
        (path,) = sorted(folder.glob(f"{prefix}*f.jsonl"))
        uids = pl.scan_ndjson(path).select("qa_uid").collect()["qa_uid"].to_list()
        raw = path.read_bytes()
        out[arm_name] = {
            "file": path.name,
            "rows": len(uids),
            "qa_uid_sha256": hashlib.sha256("\n".join(uids).encode()).hexdigest(),
            "bytes_sha256": hashlib.sha256(raw.replace(prefix_bytes, b'"')).hexdigest(),
            "raw_bytes_sha256": hashlib.sha256(raw).hexdigest(),
        }
    members = pl.read_parquet(folder / "subset_members.parquet")
    out["members_sha256"] = hashlib.sha256(
        members.write_csv(None).encode()  # values, not Parquet bytes (writer metadata may differ)
    ).hexdigest()
    report = json.loads((folder / "report.json").read_text())
    out["video_in_1x"] = report["hard_constraints"].get("selected_video_count")
    out["target_count"] = report.get("target_count")
    out["uni_count"] = report.get("random_target_count")
    return out


def first_difference(a: Path, b: Path) -> dict | None:
    """Where two arms' qa_uid lists first part (for a mismatch report)."""
    import polars as pl

    for prefix in ("gdo_1x_", "uni_10x_"):
        (pa,) = sorted(a.glob(f"{prefix}*f.jsonl"))
        (pb,) = sorted(b.glob(f"{prefix}*f.jsonl"))
        ua = pl.scan_ndjson(pa).select("qa_uid").collect()["qa_uid"].to_list()
        ub = pl.scan_ndjson(pb).select("qa_uid").collect()["qa_uid"].to_list()
        if ua != ub:
            i = next((k for k, (x, y) in enumerate(zip(ua, ub)) if x != y), min(len(ua), len(ub)))
            return {
                "file": prefix,
                "index": i,
                "a": ua[i : i + 3],
                "b": ub[i : i + 3],
                "only_in_a": len(set(ua) - set(ub)),
                "only_in_b": len(set(ub) - set(ua)),
            }
    return None


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qas", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per arm (median)")
    parser.add_argument("--workdir", type=Path, help="default: benchmarks/out/dagster_build_<qas>")
    parser.add_argument(
        "--chunk-lines", type=int, default=20_000, help="pool lines per chunk partition"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    parser.add_argument("--redo-setup", action="store_true", help="generate and ingest again")
    parser.add_argument(
        "--child", choices=("dagster", "gdo-build", "setup"), help=argparse.SUPPRESS
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "dagster":
        return child_dagster()
    if args.child == "setup":
        return child_setup()
    if args.child == "gdo-build":
        return child_gdo_build(
            [a for a in args.rest if a != "--"] if args.rest[:1] == ["--"] else args.rest
        )

    work = Work(args.workdir or OUT / f"dagster_build_{args.qas}")
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}")
    t_setup = time.perf_counter()
    done = setup(work, args.qas, args.chunk_lines, args.redo_setup)
    pool = done["pool"]
    print(
        f"pool: {pool['qas']:,} QAs ({pool['video_qas']:,} video, "
        f"{pool['video_qas'] / pool['qas']:.1%}); {done['ingest']['chunks']} chunk partitions, "
        f"{done['ingest']['qa_rows']:,} ingested QA rows, {done['ingest']['metrics_rows']:,} metrics rows",
        flush=True,
    )
    print(
        "setup (untimed in the comparison): "
        + ", ".join(f"{k} {v:.1f}" for k, v in done["steps"].items())
        + f" (this call: {time.perf_counter() - t_setup:.1f}s)",
        flush=True,
    )

    env = work.env(args.chunk_lines)
    host_check = _bench_build().host_check
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    hosts = []
    for i in range(args.runs):
        hosts.append(host_check(work.pool))
        order = arms[i % len(arms) :] + arms[: i % len(arms)]
        for arm in order:
            run = run_arm(work, arm, env)
            if run is None:
                print(f"{arm} run {i + 1} failed", flush=True)
                continue
            if arm == "dagster" and not run.get("success"):
                print(f"dagster run {i + 1} did not succeed: {run.get('checks')}", flush=True)
            run["round"] = i + 1
            run["outputs"] = outputs_of(work.out(arm), work.pool)
            runs[arm].append(run)
            inproc = run.get("in_process_s", run.get("build_subsets_s"))
            print(
                f"round {i + 1} {arm:<10} process {run['process_s']:.2f}s, in-process "
                f"{inproc:.2f}s, peak RSS {run['peak_rss_mb'] or float('nan'):.0f} MB",
                flush=True,
            )
        print(
            f"(before round {i + 1}: host check {hosts[-1]['host_check_s']:.3f}s, CPU pressure "
            f"{hosts[-1]['cpu_pressure_avg10']}%)",
            flush=True,
        )

    # ---- results
    identity = {}
    for arm, arm_runs in runs.items():
        for r in arm_runs:
            o = r["outputs"]
            identity.setdefault("qa_uid", set()).add(
                (o["gdo_1x"]["qa_uid_sha256"], o["uni_10x"]["qa_uid_sha256"])
            )
            identity.setdefault("members", set()).add(o["members_sha256"])
            identity.setdefault("bytes", set()).add(
                (o["gdo_1x"]["bytes_sha256"], o["uni_10x"]["bytes_sha256"])
            )
    same_uids = len(identity.get("qa_uid", ())) == 1
    same_members = len(identity.get("members", ())) == 1
    same_bytes = len(identity.get("bytes", ())) == 1
    difference = None
    if not same_uids and "dagster" in runs and len(arms) > 1:
        other = next(a for a in arms if a != "dagster")
        difference = first_difference(work.out("dagster"), work.out(other))

    summary = {}
    for arm, arm_runs in runs.items():
        if not arm_runs:
            continue
        summary[arm] = {
            "process_s": [r["process_s"] for r in arm_runs],
            "median_process_s": _median([r["process_s"] for r in arm_runs]),
            "median_in_process_s": _median(
                [r.get("in_process_s", r.get("build_subsets_s")) for r in arm_runs]
            ),
            "max_peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in arm_runs) or None,
            "median_startup_s": _median([r["startup_s"] for r in arm_runs]),
            "median_exit_s": _median([r["exit_s"] for r in arm_runs]),
        }
        if arm == "dagster":
            summary[arm]["median_step_s"] = _median([r.get("step_s") for r in arm_runs])
            summary[arm]["median_import_s"] = _median([r["import_s"] for r in arm_runs])
            summary[arm]["median_definitions_s"] = _median([r["definitions_s"] for r in arm_runs])
            summary[arm]["median_instance_s"] = _median([r["instance_s"] for r in arm_runs])
            names = sorted(
                {k for r in arm_runs for k in r["parts_s"] if k != "build_from_pool_steps"}
            )
            summary[arm]["median_parts_s"] = {
                n: _median([r["parts_s"].get(n) for r in arm_runs]) for n in names
            }
    ratios = {}
    if "dagster" in summary:
        d = summary["dagster"]
        for base in ("build_cold", "build_warm"):
            if base in summary:
                b = summary[base]
                ratios[f"dagster/{base}"] = {
                    "process": d["median_process_s"] / b["median_process_s"],
                    "in_process": d["median_in_process_s"] / b["median_in_process_s"],
                }

    labels = {
        "dagster": "Dagster goal_subsets[temp_plus]",
        "build_cold": "gdo build (cold cache)",
        "build_warm": "gdo build (warm cache)",
    }
    print()
    print(
        f"pool {pool['qas']:,} QAs, video share {pool['video_qas'] / pool['qas']:.1%}, {args.runs} run(s) per arm, medians"
    )
    print()
    print("| arm | process s (runs) | median process s | median in-process s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for arm, s in summary.items():
        runs_s = ", ".join(f"{v:.2f}" for v in s["process_s"])
        rss = f"{s['max_peak_rss_mb']:.0f}" if s["max_peak_rss_mb"] else "n/a"
        print(
            f"| {labels[arm]} | {runs_s} | {s['median_process_s']:.2f} | {s['median_in_process_s']:.2f} | {rss} |"
        )
    print()
    for name, r in ratios.items():
        verdict = "meets" if r["process"] <= GOAL_RATIO else "misses"
        print(
            f"- {name}: process {r['process']:.2f}x, in-process {r['in_process']:.2f}x "
            f"(goal <= {GOAL_RATIO}x by process time: {verdict})"
        )
    print(
        f"- same qa_uid lists (GDO 1x and Uni-10x, in order) in every run of every arm: "
        f"{'yes' if same_uids else 'NO'}; same members table: {'yes' if same_members else 'no'}; "
        f"SFT files byte-identical once the Dagster arm's absolute media paths are made relative to the pool folder: {'yes' if same_bytes else 'no'}"
    )
    if difference:
        print(f"- first difference: {difference}")
    if "dagster" in summary:
        d = summary["dagster"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in d["median_parts_s"].items() if v is not None)
        print(
            f"- dagster process (median s): interpreter start {d['median_startup_s']:.2f}, imports "
            f"{d['median_import_s']:.2f}, Definitions {d['median_definitions_s']:.2f}, instance "
            f"{d['median_instance_s']:.2f}, execute_in_process {d['median_in_process_s']:.2f} (of which the "
            f"goal_subsets step {d['median_step_s'] or float('nan'):.2f}), exit {d['median_exit_s']:.2f}; "
            f"asset body parts: {parts}"
        )
    for arm in ("build_cold", "build_warm"):
        if arm in summary:
            b = summary[arm]
            print(
                f"- {arm} process (median s): interpreter start {b['median_startup_s']:.2f}, "
                f"build_subsets {b['median_in_process_s']:.2f}, exit {b['median_exit_s']:.2f}"
            )
    first = next(iter(runs.values()))[0]["outputs"] if any(runs.values()) else {}
    if first:
        print(
            f"- GDO 1x {first['target_count']:,} QAs ({first['video_in_1x']:,} video), "
            f"Uni-10x {first['uni_count']:,}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"dagster_build_{args.qas}.json"
    path.write_text(
        json.dumps(
            {
                "pool": pool,
                "setup": done,
                "workdir": str(work.root),
                "runs_per_arm": args.runs,
                "host_checks": hosts,
                "runs": runs,
                "summary": summary,
                "ratios": ratios,
                "goal_ratio": GOAL_RATIO,
                "same_qa_uid_lists": same_uids,
                "same_members": same_members,
                "sft_files_identical_modulo_media_paths": same_bytes,
                "first_difference": difference,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
