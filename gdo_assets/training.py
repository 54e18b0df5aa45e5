"""checkpoints, benchmark_scores and convergence_report: train each arm, score every checkpoint, compare.

`checkpoints[profile|arm]` trains one arm with `swift sft` under the recipe (gdo_core.training);
`benchmark_scores[profile|arm]` scores every checkpoint of that run with lmms-eval
(gdo_core.evaluation), skipping checkpoints already scored; `convergence_report` reads every
partition's scores and writes the paper's tables and plots (gdo_core.convergence).
"""


import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    ConfigurableResource,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from gdo_assets.descriptors import GPU_OP_TAGS, GPU_POOL, step_owner
from gdo_assets.devices import GpuSlots
from gdo_assets.project import EnvError, GdoProject, env_int
from gdo_assets.subsets import (
    GOAL_SUBSETS,
    WAIVER_FILE,
    SubsetsConfig,
    build_profile_subsets,
    goal_profiles,
    subsets_dir,
)
from gdo_core import convergence as C
from gdo_core import schema as S
from gdo_core.evaluation import EvalLaunch, read_results, score_checkpoints
from gdo_core.pool import write_parquet_atomic
from gdo_core.sql import SCORES_GLOB
from gdo_core.training import (
    CommandFailed,
    Launch,
    Recipe,
    list_checkpoints,
    load_recipe,
    parse_progress,
    read_loss_log,
    train_arm,
)

CHECKPOINTS = "checkpoints"
BENCHMARK_SCORES = "benchmark_scores"
CONVERGENCE_REPORT = "convergence_report"
RUNS_DIR = ("runs",)
REPORT_DIR = ("report",)
RUN_INFO = "gdo_run.json"  # what benchmark_scores needs of a run: global batch, rows, recipe
# Which switches of SubsetsConfig build each ablation arm's 1x subset.
ABLATION_SWITCHES: dict[str, dict[str, bool]] = {
    "gdo_wo_vds": {"no_vds": True},
    "gdo_wo_ppl": {"no_ppl": True},
    "gdo_wo_sc": {"no_sc": True},
    "gdo_wo_all": {"no_vds": True, "no_ppl": True, "no_sc": True},
}

arms = StaticPartitionsDefinition(list(S.ARMS))
# One partition per (goal profile, arm): the profile's GDO 1x, its Uni-10x, and ablation arms.
profile_arms = MultiPartitionsDefinition({"profile": goal_profiles, "arm": arms})
# What checkpoints and benchmark_scores share: per-arm partitions, the GPU pool (op tags: k8s pod config).
ARM_ASSET = {"partitions_def": profile_arms, "group_name": "training", "pool": GPU_POOL}
# checkpoints[profile|arm] reads the goal_subsets[profile] partition (made once: a beta class).
SUBSETS_OF_PROFILE = AssetDep(GOAL_SUBSETS, partition_mapping=MultiToSingleDimensionPartitionMapping("profile"))


class TrainingResource(ConfigurableResource):
    """The model, the recipe and the devices training and scoring run on."""

    model_dir: str | None = Field(default=None, description="Model folder to fine-tune (save_pretrained layout).")
    recipe: str = Field(default="paper", description="Recipe file, or a packaged recipe name (paper, demo).")
    gpus: str | None = Field(
        default=None,
        description="GPU indices this step may use, e.g. '0,1' (default: none, CPU). Scoring uses the first.",
    )
    cpu_threads: int = Field(default=1, description="OMP threads per process on CPU.")
    gpu_slots: GpuSlots = Field(
        default_factory=GpuSlots, description="gpu profile: each step claims its own GPUs (overrides gpus)."
    )
    gpus_per_train_step: int = Field(default=1, description="gpu profile: GPUs one training step claims.")

    def load(self) -> Recipe:
        """The recipe; a Dagster failure naming the file when it is bad."""
        try:
            return load_recipe(self.recipe)
        except (OSError, ValueError) as exc:
            raise Failure(str(exc)) from None

    def gpu_list(self) -> tuple[int, ...]:
        """The GPU indices given."""
        return tuple(int(g) for g in (self.gpus or "").replace(" ", "").split(",") if g != "")

    def launch(self) -> Launch:
        """Where training runs."""
        return Launch(gpus=self.gpu_list(), cpu_threads=self.cpu_threads)

    def eval_launch(self) -> EvalLaunch:
        """Where scoring runs: the first GPU given, else CPU."""
        gpus = self.gpu_list()
        return EvalLaunch(gpu=gpus[0] if gpus else None, cpu_threads=self.cpu_threads)

    @contextmanager
    def step_launch(self, owner: str) -> Iterator[Launch]:
        """Where one training step runs: under the gpu profile on the GPUs claimed for it (its
        subprocesses see only them through CUDA_VISIBLE_DEVICES), released when the block ends."""
        with self.gpu_slots.claimed(owner, self.gpus_per_train_step) as claim:
            if claim is None:
                yield self.launch()
            else:
                yield Launch(gpus=tuple(int(g) for g in claim.ids), cpu_threads=self.cpu_threads)

    @contextmanager
    def step_eval_launch(self, owner: str) -> Iterator[EvalLaunch]:
        """Where one scoring step runs: under the gpu profile on the GPU claimed for it."""
        with self.gpu_slots.claimed(owner) as claim:
            if claim is None:
                yield self.eval_launch()
            else:
                yield EvalLaunch(gpu=int(claim.ids[0]), cpu_threads=self.cpu_threads)

    def model(self) -> Path:
        """The model folder (train_arm checks it holds a model)."""
        if not self.model_dir:
            raise Failure("checkpoints needs a model to fine-tune: set GDO_MODEL (a save_pretrained folder)")
        return Path(self.model_dir).resolve()


def training_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> TrainingResource:
    """The training resource from GDO_MODEL, GDO_RECIPE, GDO_GPUS and GDO_CPU_THREADS; `env`: the
    variables (os.environ), `overrides`: fields set by the deployment profile."""
    env = os.environ if env is None else env
    gpus = (env.get("GDO_GPUS") or "").strip() or None
    if gpus is not None and not re.fullmatch(r"\d+(\s*,\s*\d+)*", gpus):
        raise EnvError(f"GDO_GPUS={gpus!r}: expected GPU indices separated by commas, e.g. 0,1")
    fields = {
        "model_dir": env.get("GDO_MODEL") or None,
        "recipe": env.get("GDO_RECIPE") or "paper",
        "gpus": gpus,
        "cpu_threads": env_int("GDO_CPU_THREADS", 1, minimum=1, env=env),
    }
    return TrainingResource(**{**fields, **overrides})


def run_dir(project: GdoProject, profile: str, arm: str) -> Path:
    """Where one arm's ms-swift run lives."""
    return project.path(*RUNS_DIR, profile, arm)


def scores_file(project: GdoProject, profile: str, arm: str) -> Path:
    """One partition's scores (a file of the `scores` view)."""
    return project.path(*SCORES_GLOB[:-1], f"{profile}__{arm}.parquet")


def constraint_waiver(folder: Path) -> Path:
    """The marker goal_subsets leaves when the user let a subset with unmet constraints through."""
    return folder / WAIVER_FILE


def _sft_file(folder: Path, prefix: str) -> Path:
    found = sorted(folder.glob(f"{prefix}_*f.jsonl"))
    if not found:
        raise Failure(f"{folder}: no {prefix}_*f.jsonl; materialize {GOAL_SUBSETS} for this profile first")
    return found[0]


def arm_dataset(context: AssetExecutionContext, project: GdoProject, profile: str, arm: str) -> Path:
    """The SFT file an arm trains on; ablation arms build their 1x subset here first."""
    folder = subsets_dir(project, profile)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise Failure(f"{report_path}: missing; materialize {GOAL_SUBSETS}[{profile}] first")
    report = json.loads(report_path.read_text())
    hc = report["hard_constraints"]
    if not hc.get("all_constraints_met") and not constraint_waiver(folder).is_file():
        raise Failure(
            f"{profile}: the subset's hard constraints are unmet ({json.dumps(hc.get('unmet_constraints'))}); "
            "training is blocked. Rebuild with allow_unmet_constraints=true to train anyway."
        )
    if arm == S.ARM_GDO:
        return _sft_file(folder, "gdo_1x")
    if arm == S.ARM_UNI:
        return _sft_file(folder, "uni_10x")
    # An ablation arm: the same 1x budget as the full GDO arm, with score terms switched off.
    config = SubsetsConfig(target_count=int(report["target_count"]), **ABLATION_SWITCHES[arm])
    context.log.info(f"{profile}/{arm}: building the ablation subset ({ABLATION_SWITCHES[arm]})")
    result = build_profile_subsets(project, profile, config, folder / arm)
    return result.gdo_path


class _Progress:
    """Logs ms-swift's progress about every tenth of the run, and every eval loss."""

    def __init__(self, context: AssetExecutionContext, label: str) -> None:
        self.context, self.label, self.next_share = context, label, 0.0

    def __call__(self, line: str) -> None:
        event = parse_progress(line)
        if event is None:
            return
        step, total = (int(x) for x in str(event["global_step/max_steps"]).split("/"))
        if "eval_loss" in event:
            self.context.log.info(f"{self.label}: step {step}/{total} held-out loss {event['eval_loss']}")
        elif "loss" in event and step / max(total, 1) >= self.next_share:
            self.context.log.info(
                f"{self.label}: step {step}/{total} loss {event['loss']} ({event.get('elapsed_time', '')} elapsed, "
                f"{event.get('remaining_time', '')} left)"
            )
            self.next_share = step / max(total, 1) + 0.1


def _failure(exc: CommandFailed, what: str) -> Failure:
    tail = "\n".join(exc.tail)
    return Failure(
        description=f"{what} failed: {exc.argv[0]} exited with {exc.returncode}\n{tail[-3000:]}",
        metadata={
            "command": MetadataValue.text(" ".join(exc.argv)),
            "log_tail": MetadataValue.md(f"```\n{tail}\n```"),
        },
    )


def _partition(context: AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["profile"], keys["arm"]


def checkpoints_asset(op_tags: Mapping[str, Any] = GPU_OP_TAGS) -> AssetsDefinition:
    """The checkpoints asset with the given op tags (the deployment profile's k8s pod config)."""

    @asset(
        name=CHECKPOINTS,
        deps=[SUBSETS_OF_PROFILE],
        op_tags=dict(op_tags),
        **ARM_ASSET,
        description="One arm (GDO 1x, Uni-10x or an ablation) fine-tuned for one epoch with `swift sft` under the recipe; every checkpoint kept.",
    )
    def checkpoints(context: AssetExecutionContext, gdo: GdoProject, training: TrainingResource) -> MaterializeResult:
        """Train one arm into runs/<profile>/<arm>/ (a fresh run: old checkpoints and their scores go)."""
        return train_partition(context, gdo, training)

    return checkpoints


checkpoints = checkpoints_asset()


def train_partition(context: AssetExecutionContext, gdo: GdoProject, training: TrainingResource) -> MaterializeResult:
    """The body of checkpoints: train one arm on the step's GPUs (or CPU)."""
    profile, arm = _partition(context)
    recipe, model = training.load(), training.model()
    dataset = arm_dataset(context, gdo, profile, arm)
    folder = run_dir(gdo, profile, arm)
    shutil.rmtree(folder, ignore_errors=True)
    scores_file(gdo, profile, arm).unlink(missing_ok=True)  # scores of the old checkpoints are stale
    started = time.perf_counter()
    try:
        with training.step_launch(step_owner(context)) as launch:
            context.log.info(f"{profile}/{arm}: training on " + (f"GPUs {launch.gpus}" if launch.on_gpu else "CPU"))
            result = train_arm(recipe, model_dir=model, dataset=dataset, run_dir=folder, launch=launch,
                               on_line=_Progress(context, f"{profile}/{arm}"))
    except CommandFailed as exc:
        raise _failure(exc, f"training {profile}/{arm}") from None
    except (OSError, ValueError) as exc:
        raise Failure(str(exc)) from None
    seconds = time.perf_counter() - started
    if not result.checkpoints:
        raise Failure(f"{folder}: swift sft finished but saved no checkpoint-*")
    info = {"profile": profile, "arm": arm, "dataset": str(dataset), "rows": result.n_rows,
            "epoch_steps": result.epoch_steps, "save_steps": result.save_steps,
            "global_batch": result.global_batch, "recipe": str(recipe.path), "seconds": round(seconds, 1)}
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2))
    held_out = result.losses.drop_nulls("eval_loss")
    first, last = (held_out["eval_loss"][0], held_out["eval_loss"][-1]) if held_out.height else (None, None)
    return MaterializeResult(
        metadata={
            "rows": result.n_rows,
            "epoch_steps": result.epoch_steps,
            "save_steps": result.save_steps,
            "global_batch": result.global_batch,
            "checkpoints": MetadataValue.json([p.name for _, p in result.checkpoints]),
            "held_out_loss_first": first,
            "held_out_loss_last": last,
            "held_out_loss": MetadataValue.md(C.markdown(held_out.select("step", "eval_loss"), 3)),
            "seconds": round(seconds, 1),
            "samples_per_s": round(result.n_rows / seconds, 2) if seconds else 0.0,
            "device": "cuda:" + ",".join(map(str, launch.gpus)) if launch.on_gpu else "cpu",
            "dtype": launch.dtype,
            "recipe": MetadataValue.path(str(recipe.path)),
            "dataset": MetadataValue.path(str(dataset)),
            "run_dir": MetadataValue.path(str(folder)),
            "command": MetadataValue.text(" ".join(result.argv)),
        }
    )


def score_rows(profile: str, arm: str, checkpoint: Path, step: int, global_batch: int,
               results: Path, tasks: list[str]) -> list[dict]:
    """Rows of the scores table for one scored checkpoint."""
    return [
        {"arm": arm, "profile": profile, "checkpoint": checkpoint.name, "step": step,
         "samples_seen": C.samples_seen(step, global_batch), "task": task, "subtask": subtask, "accuracy": accuracy}
        for task, subtask, accuracy in read_results(results, tasks)
    ]


def include_path_of(recipe: Recipe, project: GdoProject) -> Path | None:
    """The recipe's local task folder, relative paths taken from the data folder."""
    if not recipe.eval.include_path:
        return None
    path = Path(recipe.eval.include_path)
    return path if path.is_absolute() else project.path(str(path))


def benchmark_scores_asset(op_tags: Mapping[str, Any] = GPU_OP_TAGS) -> AssetsDefinition:
    """The benchmark_scores asset with the given op tags (the deployment profile's k8s pod config)."""

    @asset(
        name=BENCHMARK_SCORES,
        deps=[CHECKPOINTS],
        op_tags=dict(op_tags),
        **ARM_ASSET,
        description="lmms-eval accuracy of every checkpoint of one arm, per benchmark and subtask (the `scores` view).",
    )
    def benchmark_scores(context: AssetExecutionContext, gdo: GdoProject, training: TrainingResource) -> MaterializeResult:
        """Score the arm's checkpoints in step order; those already in its scores file are kept, not rescored."""
        return score_partition(context, gdo, training)

    return benchmark_scores


benchmark_scores = benchmark_scores_asset()


def score_partition(context: AssetExecutionContext, gdo: GdoProject, training: TrainingResource) -> MaterializeResult:
    """The body of benchmark_scores: score the arm's new checkpoints on the step's GPU (or CPU)."""
    profile, arm = _partition(context)
    recipe = training.load()
    folder = run_dir(gdo, profile, arm)
    info_path = folder / RUN_INFO
    if not info_path.is_file():
        raise Failure(f"{info_path}: missing; materialize {CHECKPOINTS}[{context.partition_key}] first")
    info = json.loads(info_path.read_text())
    out = scores_file(gdo, profile, arm)
    old = pl.read_parquet(out) if out.is_file() else pl.DataFrame(schema=S.SCORE_SCHEMA)
    done = set(old["checkpoint"].to_list())
    found = list_checkpoints(folder)
    pending = [(step, path) for step, path in found if path.name not in done]
    tasks = list(recipe.eval.tasks)
    context.log.info(f"{profile}/{arm}: {len(pending)} checkpoints to score, {len(found) - len(pending)} already scored")
    started = time.perf_counter()
    try:
        with training.step_eval_launch(step_owner(context)) as launch:
            results = score_checkpoints(
                recipe.path, [p for _, p in pending], folder / "eval", launch,
                include_path=include_path_of(recipe, gdo), on_line=_EvalLog(context),
            )
    except CommandFailed as exc:
        raise _failure(exc, f"scoring {profile}/{arm}") from None
    except (OSError, ValueError) as exc:
        raise Failure(str(exc)) from None
    rows = [r for step, path in pending
            for r in score_rows(profile, arm, path, step, info["global_batch"], results[path.name], tasks)]
    table = pl.concat([old, pl.DataFrame(rows, schema=S.SCORE_SCHEMA, orient="row")]).sort(["step", "task", "subtask"])
    write_parquet_atomic(table, out)
    final = table.filter(pl.col("step") == table["step"].max()) if table.height else table
    return MaterializeResult(
        metadata={
            "scored": len(pending),
            "already_scored": len(found) - len(pending),
            "checkpoints": len(found),
            "seconds": round(time.perf_counter() - started, 1),
            "final_checkpoint": MetadataValue.md(C.markdown(final.select("checkpoint", "task", "subtask", "accuracy"))),
            "path": MetadataValue.path(str(out)),
        }
    )


class _EvalLog:
    """Logs lmms-eval's per-checkpoint summary lines (written by gdo_core.evaluation)."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self.context = context

    def __call__(self, line: str) -> None:
        if line.startswith("gdo-eval "):
            self.context.log.info(line[len("gdo-eval "):])


def read_scores(project: GdoProject) -> pl.DataFrame:
    """Every partition's scores."""
    files = sorted(project.path(*SCORES_GLOB[:-1]).glob(SCORES_GLOB[-1]))
    if not files:
        return pl.DataFrame(schema=S.SCORE_SCHEMA)
    return pl.concat([pl.read_parquet(f) for f in files]).select(list(S.SCORE_SCHEMA))


def held_out_losses(project: GdoProject) -> pl.DataFrame:
    """First and last held-out loss of every trained run."""
    rows = []
    for info_path in sorted(project.path(*RUNS_DIR).glob(f"*/*/{RUN_INFO}")):
        losses = read_loss_log(info_path.parent).drop_nulls("eval_loss")
        if losses.height:
            rows.append((info_path.parent.parent.name, info_path.parent.name,
                         losses["eval_loss"][0], losses["eval_loss"][-1]))
    return pl.DataFrame(rows, schema={"profile": pl.String, "arm": pl.String,
                                      "first_held_out_loss": pl.Float64, "last_held_out_loss": pl.Float64},
                        orient="row")


@asset(
    name=CONVERGENCE_REPORT,
    deps=[BENCHMARK_SCORES],
    group_name="training",
    description="Peak match, reduction and deltas per benchmark, subtask deltas, the budget frontier, ablations, plots.",
)
def convergence_report(context: AssetExecutionContext, gdo: GdoProject, training: TrainingResource) -> MaterializeResult:
    """The paper's convergence tables over every scored arm, as markdown, Parquet and PNG plots."""
    scores = read_scores(gdo)
    if scores.is_empty():
        raise Failure(f"no scores under {gdo.path(*SCORES_GLOB[:-1])}; materialize {BENCHMARK_SCORES} first")
    tables = C.analyse(scores)
    chance = chance_against_baselines(scores, include_path_of(training.load(), gdo))
    out = gdo.path(*REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.named().items():
        write_parquet_atomic(table, out / f"{name}.parquet")
    losses = held_out_losses(gdo)
    plots = {
        "curves": C.plot_curves(scores, tables.summary, out / "curves.png"),
        "frontier": C.plot_frontier(tables.frontier, tables.summary, out / "frontier.png"),
        "subtask_deltas": C.plot_subtask_heatmap(tables.subtasks, out / "subtask_deltas.png"),
    }
    text = report_markdown(tables, losses, chance)
    (out / "report.md").write_text(text)
    curves = base64.b64encode(plots["curves"].read_bytes()).decode()
    context.log.info("\n".join(C.headline(tables.summary)))
    return MaterializeResult(
        metadata={
            "summary": MetadataValue.md(C.markdown(tables.summary)),
            "subtasks": MetadataValue.md(C.markdown(tables.subtasks)),
            "frontier": MetadataValue.md(C.markdown(tables.frontier)),
            "ablations": MetadataValue.md(C.markdown(tables.ablations)),
            "held_out_loss": MetadataValue.md(C.markdown(losses, 3)),
            **({"final_vs_chance": MetadataValue.md(C.markdown(C.p_values_as_text(chance)))} if chance is not None else {}),
            "headline": MetadataValue.md("\n".join(f"- {line}" for line in C.headline(tables.summary))),
            "curves": MetadataValue.md(f"![accuracy vs samples seen](data:image/png;base64,{curves})"),
            **{f"plot_{name}": MetadataValue.path(str(path)) for name, path in plots.items()},
            "report": MetadataValue.path(str(out / "report.md")),
        }
    )


def chance_against_baselines(scores: pl.DataFrame, bench_dir: Path | None) -> pl.DataFrame | None:
    """Final accuracies beside chance when the local benchmark folder says what chance is (the demo
    benchmark's layout), else None."""
    if bench_dir is None:
        return None
    # Imported here: cv2 and the demo world load only when a report is written.
    from gdo_core.demo_benchmark import benchmark_baselines

    baselines = benchmark_baselines(bench_dir)
    return C.chance_table(scores, baselines) if baselines else None


def report_markdown(tables: C.ConvergenceTables, losses: pl.DataFrame, chance: pl.DataFrame | None = None) -> str:
    """The whole report as one markdown page."""
    parts = ["# Convergence report", "", *(f"- {line}" for line in C.headline(tables.summary)), ""]
    for title, table, digits in (
        ("Per benchmark", tables.summary, 1),
        ("Per subtask (GDO 1x - Uni-10x, final checkpoints)", tables.subtasks, 1),
        ("Accuracy vs 1x budget", tables.frontier, 1),
        ("Ablations", tables.ablations, 1),
        ("Held-out loss, first and last checkpoint", losses, 3),
    ):
        parts += [f"## {title}", "", C.markdown(table, digits) if table.height else "(none)", ""]
    if chance is not None:
        parts += [
            "## Final accuracy against chance",
            "",
            (
                "Percent. chance: a uniform guess over the options; constant: the best single answer given "
                "to every question; p <arm>: one-sided exact binomial p-value of that arm's score against chance."
            ),
            "",
            C.markdown(C.p_values_as_text(chance)),
            "",
        ]
    return "\n".join(parts)
