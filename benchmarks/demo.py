"""Time `make demo` on fresh clones: environment creation vs the pipeline, median of several runs.

    python benchmarks/demo.py [--runs 2] [--keep]

Each run clones this repository's committed HEAD into a temporary folder and runs, there,
`make .venv/.installed` (the install part of `make demo`) and then `.venv/bin/gdo demo` (the
pipeline), timing both with wall clock. Nothing is asserted; the medians are printed, with the
demo's per-stage timings and its last lines of output from the final run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(argv: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(argv, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def main() -> None:
    """Clone, install, run the demo; print install and pipeline wall times and their medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="Keep the clones (their .gdo folders) afterwards.")
    args = parser.parse_args()
    installs, pipelines = [], []
    for run in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="gdo-demo-bench-"))
        clone = root / "gdo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        installs.append(_timed(["make", ".venv/.installed"], clone, root / "install.log"))
        pipelines.append(_timed([str(clone / ".venv/bin/gdo"), "demo"], clone, root / "demo.log"))
        print(f"run {run + 1}: install {installs[-1]:.0f} s, pipeline {pipelines[-1]:.0f} s, "
              f"total {installs[-1] + pipelines[-1]:.0f} s ({root})", flush=True)
        last = (root / "demo.log").read_text().splitlines()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"median of {args.runs}: install {statistics.median(installs):.0f} s, "
          f"pipeline {statistics.median(pipelines):.0f} s, "
          f"total {statistics.median(i + p for i, p in zip(installs, pipelines, strict=True)):.0f} s")
    print("last run's output, last 40 lines:")
    print("\n".join(last[-40:]))


if __name__ == "__main__":
    main()
