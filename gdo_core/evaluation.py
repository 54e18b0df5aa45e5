"""Scoring checkpoints with lmms-eval (docs/method.md, Evaluation) and reading its results JSON.

gdo does not score anything itself: `score_checkpoints` runs this module as a subprocess
(`python -m gdo_core.evaluation`), which calls lmms-eval's `simple_evaluate` once per checkpoint in
step order, so lmms-eval's import and task indexing are paid once per run, and a crash in it fails
the step, not the orchestrator. `lmms_eval_cli` gives the equivalent `lmms-eval` command line of
one checkpoint, for a user who wants to rerun a score by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdo_core import schema as S
from gdo_core.training import EvalRecipe, load_recipe, run_streaming

RESULTS_FILE = "results.json"
# Metrics lmms-eval reports as a 0-1 fraction (the others are percentages).
FRACTION_METRICS = frozenset({"lvbench_score"})


@dataclass(frozen=True)
class EvalLaunch:
    """Where scoring runs: CPU, or the one GPU this step was given."""

    gpu: int | None = None
    cpu_threads: int = 1  # OMP threads on CPU: 1 generated 5-10x faster than 2 here

    @property
    def dtype(self) -> str:
        """bfloat16 on a GPU, float32 on CPU."""
        return "bfloat16" if self.gpu is not None else "float32"


def model_args(recipe: EvalRecipe, model_dir: Path, launch: EvalLaunch) -> str:
    """lmms-eval's comma-separated model_args for one checkpoint."""
    device = "cpu" if launch.gpu is None else "cuda:0"  # the given GPU is the only one visible
    args: dict[str, Any] = {
        "pretrained": Path(model_dir).resolve(),
        "device": device,
        "device_map": device,
        "max_num_frames": recipe.max_num_frames,
        "max_pixels": recipe.max_pixels,
    }
    if recipe.min_pixels is not None:
        args["min_pixels"] = recipe.min_pixels
    if recipe.fps is not None:
        args["fps"] = recipe.fps
    return ",".join(f"{k}={v}" for k, v in args.items())


def eval_env(launch: EvalLaunch) -> dict[str, str]:
    """Environment of a scoring process: offline, and only the given GPU visible."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if launch.gpu is None:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(launch.cpu_threads))
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(launch.gpu)
    return env


def lmms_eval_cli(
    recipe: EvalRecipe, model_dir: Path, output_path: Path, launch: EvalLaunch, include_path: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `lmms-eval` command line (and environment) that scores one checkpoint by hand."""
    argv = [
        "lmms-eval",
        "--model", recipe.model,
        "--model_args", model_args(recipe, model_dir, launch),
        "--tasks", ",".join(recipe.tasks),
        "--batch_size", str(recipe.batch_size),
        "--output_path", str(Path(output_path).resolve()),
        "--log_samples",
        "--timezone", "UTC",
    ]
    if include_path is not None:
        argv += ["--include_path", str(Path(include_path).resolve())]
    if recipe.limit is not None:
        argv += ["--limit", str(recipe.limit)]
    return argv, eval_env(launch)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _main_metric(entry: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first numeric `<metric>,<filter>` value of a results entry that is not a stderr."""
    for key, value in entry.items():
        name = key.split(",", 1)[0]
        if "," in key and "stderr" not in name and _number(value) is not None:
            scale = 100.0 if name in FRACTION_METRICS else 1.0
            return name, float(value) * scale
    return None


def parse_results(results: Mapping[str, Any], tasks: Sequence[str]) -> list[tuple[str, str, float]]:
    """(task, subtask, accuracy %) rows of an lmms-eval results dict: each task's overall, then its subtasks.

    A group's overall is its own aggregate when lmms-eval reports one, else the mean of its
    subtasks weighted by their question counts (mvbench reports no aggregate).
    """
    entries = results["results"]
    groups = results.get("group_subtasks", {})
    counts = results.get("n-samples", {})
    rows: list[tuple[str, str, float]] = []
    for task in tasks:
        subtasks = [s for s in groups.get(task, []) if s in entries]
        parts = []
        for sub in subtasks:
            metric = _main_metric(entries[sub])
            if metric is not None:
                weight = counts.get(sub, {}).get("effective", 1)
                name = sub[len(task) + 1:] if sub.startswith(f"{task}_") else sub
                parts.append((name, metric[1], weight))
        own = _main_metric(entries.get(task, {}))
        if own is not None:
            overall = own[1]
        elif parts and sum(w for *_, w in parts) > 0:
            overall = sum(a * w for _, a, w in parts) / sum(w for *_, w in parts)
        else:
            raise ValueError(f"lmms-eval results hold no numeric metric for task {task!r}")
        rows.append((task, S.OVERALL, overall))
        rows += [(task, name, accuracy) for name, accuracy, _ in parts]
    return rows


def read_results(path: Path, tasks: Sequence[str]) -> list[tuple[str, str, float]]:
    """parse_results of a results JSON file."""
    return parse_results(json.loads(Path(path).read_text()), tasks)


def score_checkpoints(
    recipe_path: Path,
    checkpoints: Sequence[Path],
    out_dir: Path,
    launch: EvalLaunch,
    *,
    include_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Score checkpoints in the given order in one lmms-eval subprocess; results file per checkpoint name."""
    if not checkpoints:
        return {}
    argv = [sys.executable, "-m", "gdo_core.evaluation", "--recipe", str(recipe_path), "--out", str(out_dir)]
    if include_path is not None:
        argv += ["--include-path", str(include_path)]
    argv += [str(Path(c).resolve()) for c in checkpoints]
    out_dir.mkdir(parents=True, exist_ok=True)
    run_streaming(argv, eval_env(launch), on_line, log_path=out_dir / "lmms_eval.log")
    found = {}
    for checkpoint in checkpoints:
        path = out_dir / Path(checkpoint).name / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: lmms-eval wrote no results for {checkpoint}")
        found[Path(checkpoint).name] = path
    return found


def _local_tasks(include_path: Path | None, tasks: Sequence[str]) -> bool:
    """Whether every task is defined by a YAML in include_path (then the built-in index is skipped)."""
    if include_path is None:
        return False
    return all((include_path / f"{task}.yaml").is_file() for task in tasks)


def _score_in_process(recipe: EvalRecipe, checkpoints: Sequence[Path], out_dir: Path, include_path: Path | None) -> None:
    """The subprocess body: simple_evaluate per checkpoint, results and samples as JSON files."""
    import time

    import torch
    from lmms_eval import models
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str

    on_gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "") != ""
    if not on_gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tasks = list(recipe.tasks)
    manager = TaskManager(
        "WARNING",
        include_path=None if include_path is None else str(include_path),
        include_defaults=not _local_tasks(include_path, tasks),
        model_name=recipe.model,
    )
    launch = EvalLaunch(gpu=0 if on_gpu else None)
    for checkpoint in checkpoints:
        started = time.perf_counter()
        args = model_args(recipe, checkpoint, launch)
        model = models.get_model(recipe.model).create_from_arg_string(
            args, {"batch_size": recipe.batch_size, "max_batch_size": None, "device": None}
        )
        if not on_gpu:
            # lmms-eval's qwen3_vl loads in bfloat16 whatever the device; gdo scores on CPU in float32.
            model._model = model._model.to(torch.float32)
        results = simple_evaluate(
            model=model, tasks=tasks, batch_size=recipe.batch_size, limit=recipe.limit,
            task_manager=manager, log_samples=True, verbosity="WARNING",
            datetime_str=get_datetime_str(timezone="UTC"),
        )
        if results is None:
            raise RuntimeError(f"lmms-eval returned no results for {checkpoint}")
        samples = results.pop("samples", {})
        folder = out_dir / checkpoint.name
        folder.mkdir(parents=True, exist_ok=True)
        for task, rows in samples.items():
            with open(folder / f"samples_{task}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        tmp = folder / f"{RESULTS_FILE}.tmp"
        tmp.write_text(json.dumps(results, default=str, indent=1))
        tmp.replace(folder / RESULTS_FILE)
        scores = {f"{t}/{s}": round(a, 2) for t, s, a in parse_results(results, tasks)}
        print(f"gdo-eval {checkpoint.name}: {json.dumps(scores)} ({time.perf_counter() - started:.1f} s)", flush=True)
        del model


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the scoring subprocess."""
    parser = argparse.ArgumentParser(description="Score checkpoints with lmms-eval (run by gdo).")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--include-path", type=Path, default=None)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe).eval
    _score_in_process(recipe, args.checkpoints, args.out, args.include_path)


if __name__ == "__main__":
    main()
