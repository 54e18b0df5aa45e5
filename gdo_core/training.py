"""Training one arm with ms-swift's `swift sft` under a recipe file
(docs/method.md, Training recipe).

gdo does not train anything itself: it turns a recipe (gdo_core/recipes/*.yaml, or a user's copy)
and an SFT file into one `swift sft` command line, runs it as a subprocess, streams its log and
reads back the checkpoints and the loss history ms-swift wrote.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl
import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
CHECKPOINT_PREFIX = "checkpoint-"
LOG_FILE = "logging.jsonl"  # ms-swift appends one JSON object per log event
PROGRESS_KEY = "global_step/max_steps"
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class TrainRecipe:
    """The `swift sft` settings every arm of a comparison shares."""

    model_type: str = "qwen3_vl"
    tuner_type: str = "full"
    num_train_epochs: int = 1
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 8192
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    nproc_per_node: int = 8
    nnodes: int = 1
    deepspeed: str | None = "zero2"
    gradient_checkpointing: bool = True
    data_seed: int = 42
    split_dataset_ratio: float = 0.001
    max_pixels: int = 50176
    checkpoints_per_epoch: int = 5
    system: str | None = None  # system prompt of every training row (None: the template's default)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalRecipe:
    """The lmms-eval settings every checkpoint is scored with."""

    tasks: tuple[str, ...] = ("mvbench", "videomme", "mlvu_test", "lvbench")
    include_path: str | None = None
    model: str = "qwen3_vl"
    max_num_frames: int = 32
    max_pixels: int = 602112
    min_pixels: int | None = None  # None: lmms-eval's default
    fps: float | None = 1
    batch_size: int = 1
    limit: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A recipe file: its name, training and evaluation settings, and where it was read from."""

    name: str
    train: TrainRecipe = field(default_factory=TrainRecipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)
    path: Path | None = None


def _section(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """A recipe section from a YAML mapping; unknown keys are an error naming the file."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    for key in ("extra_args", "tasks"):
        if key in values and values[key] is not None:
            values[key] = tuple(str(v) for v in values[key])
    return cls(**values)


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A recipe by file path, or by the name of a packaged one ('paper', 'demo')."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        packaged = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such recipe file (packaged recipes: {packaged})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    unknown = sorted(set(data) - {"name", "train", "eval"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; expected name, train, eval")
    return Recipe(
        name=str(data.get("name", path.stem)),
        train=_section(TrainRecipe, data.get("train"), f"{path} [train]"),
        eval=_section(EvalRecipe, data.get("eval"), f"{path} [eval]"),
        path=path.resolve(),
    )


@dataclass(frozen=True)
class Launch:
    """Where one run executes: CPU, or the GPUs this step was given, and its node in a multi-node job."""

    gpus: tuple[int, ...] = ()  # empty: CPU
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    cpu_threads: int = 1  # OMP threads on CPU: 1 trained the tiny model 7-9x faster than 2 here

    @property
    def on_gpu(self) -> bool:
        """Whether the run uses CUDA."""
        return bool(self.gpus)

    @property
    def dtype(self) -> str:
        """bfloat16 on GPUs, float32 on CPU."""
        return "bfloat16" if self.on_gpu else "float32"


def processes_per_node(recipe: TrainRecipe, launch: Launch) -> int:
    """The recipe's processes per node, at most one per GPU given; one on CPU."""
    return min(recipe.nproc_per_node, len(launch.gpus)) if launch.on_gpu else 1


def world_size(recipe: TrainRecipe, launch: Launch) -> int:
    """Training processes over all nodes."""
    return processes_per_node(recipe, launch) * max(1, recipe.nnodes)


def global_batch(recipe: TrainRecipe, launch: Launch) -> int:
    """Samples per optimizer step over all processes."""
    return recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * world_size(recipe, launch)


def held_out_rows(n_rows: int, ratio: float) -> int:
    """Rows ms-swift splits off for the eval loss: max(int(n * ratio), 1), none at ratio 0."""
    return max(int(n_rows * ratio), 1) if ratio > 0 and n_rows > 1 else 0


def epoch_steps(n_rows: int, recipe: TrainRecipe, launch: Launch) -> int:
    """Optimizer steps in one epoch: ceil(ceil(floor(n_train / world) / batch) / accumulation)."""
    n_train = n_rows - held_out_rows(n_rows, recipe.split_dataset_ratio)
    per_rank = n_train // world_size(recipe, launch)
    batches = math.ceil(per_rank / recipe.per_device_train_batch_size)
    return math.ceil(batches / recipe.gradient_accumulation_steps)


def save_steps(steps: int, checkpoints_per_epoch: int) -> int:
    """Checkpoint (and eval) cadence: floor(epoch_steps / checkpoints_per_epoch), at least 1."""
    return max(1, steps // max(1, checkpoints_per_epoch))


def checkpoint_steps(steps: int, cadence: int) -> list[int]:
    """The steps that get a checkpoint: every `cadence` steps, and the last step always."""
    saved = list(range(cadence, steps + 1, cadence))
    if steps > 0 and (not saved or saved[-1] != steps):
        saved.append(steps)
    return saved


def swift_executable() -> str:
    """The `swift` script installed beside this Python (a venv need not be on PATH), else plain `swift`."""
    beside = Path(sys.executable).parent / "swift"
    return str(beside) if beside.is_file() else "swift"


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sft_command(
    recipe: TrainRecipe,
    *,
    model_dir: Path,
    dataset: Path,
    output_dir: Path,
    n_rows: int,
    launch: Launch,
    swift: str = "swift",
) -> tuple[list[str], dict[str, str]]:
    """The `swift sft` argv and the environment variables it needs for one arm."""
    steps = epoch_steps(n_rows, recipe, launch)
    cadence = save_steps(steps, recipe.checkpoints_per_epoch)
    args: dict[str, Any] = {
        "model": Path(model_dir).resolve(),
        "model_type": recipe.model_type,
        "check_model": False,  # no hub probe: the model is a local folder
        "tuner_type": recipe.tuner_type,
        "torch_dtype": launch.dtype,
        "bf16": launch.on_gpu,
        "fp16": False,
        "freeze_vit": False,
        "freeze_aligner": False,
        "freeze_llm": False,
        "dataset": Path(dataset).resolve(),
        "split_dataset_ratio": recipe.split_dataset_ratio,
        "data_seed": recipe.data_seed,
        "seed": recipe.data_seed,
        "num_train_epochs": recipe.num_train_epochs,
        "learning_rate": recipe.learning_rate,
        "warmup_ratio": recipe.warmup_ratio,
        "weight_decay": recipe.weight_decay,
        "max_grad_norm": recipe.max_grad_norm,
        "max_length": recipe.max_length,
        "max_pixels": recipe.max_pixels,
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "per_device_eval_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "gradient_checkpointing": recipe.gradient_checkpointing and launch.on_gpu,
        "save_strategy": "steps",
        "save_steps": cadence,
        "eval_strategy": "steps",
        "eval_steps": cadence,
        "save_only_model": True,
        "logging_steps": 1,
        "dataloader_num_workers": 0 if not launch.on_gpu else 4,
        "report_to": "none",
        "add_version": False,  # checkpoints straight under output_dir
        "output_dir": Path(output_dir).resolve(),
    }
    if launch.on_gpu and recipe.deepspeed:
        args["deepspeed"] = recipe.deepspeed
    if recipe.system is not None:
        args["system"] = recipe.system
    argv = [swift, "sft"]
    for key, value in args.items():
        argv += [f"--{key}", _flag(value)]
    argv += list(recipe.extra_args)

    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    nproc = processes_per_node(recipe, launch)
    if launch.on_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpus)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(launch.cpu_threads)
    if nproc > 1 or recipe.nnodes > 1:
        env["NPROC_PER_NODE"] = str(nproc)
    if recipe.nnodes > 1:
        if not launch.master_addr:
            raise ValueError(f"a {recipe.nnodes}-node recipe needs the master node's address (MASTER_ADDR)")
        env.update(
            NNODES=str(recipe.nnodes),
            NODE_RANK=str(launch.node_rank),
            MASTER_ADDR=launch.master_addr,
            MASTER_PORT=str(launch.master_port or 29500),
        )
    return argv, env


class CommandFailed(RuntimeError):
    """A tool's subprocess exited non-zero; carries its command line and the tail of its log."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = list(tail)
        super().__init__(
            f"{argv[0]} exited with {returncode}\ncommand: {' '.join(self.argv)}\n"
            + "last log lines:\n"
            + "\n".join(self.tail)
        )


def run_streaming(
    argv: Sequence[str],
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    *,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> list[str]:
    """Run a command with stdout and stderr merged, line by line to on_line and log_path; the tail back.

    Raises CommandFailed (with the command and the last log lines) when it exits non-zero.
    """
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
    try:
        with subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                # tqdm redraws with carriage returns: keep the last state of each line.
                line = raw.rstrip("\n").rsplit("\r", 1)[-1]
                tail.append(line)
                if log:
                    log.write(line + "\n")
                if on_line:
                    on_line(line)
            returncode = proc.wait()
    finally:
        if log:
            log.close()
    if returncode != 0:
        raise CommandFailed(argv, returncode, tail)
    return list(tail)


def parse_progress(line: str) -> dict[str, Any] | None:
    """ms-swift's per-step log line (a dict repr with global_step/max_steps) as a dict, else None."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}") and PROGRESS_KEY in text):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step> under run_dir, in step order."""
    found = []
    for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and not path.is_symlink() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


LOSS_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64(),
    "max_steps": pl.Int64(),
    "loss": pl.Float64(),  # training loss of this step (null on eval rows)
    "eval_loss": pl.Float64(),  # held-out loss (null on training rows)
}


def read_loss_log(run_dir: Path) -> pl.DataFrame:
    """Training and held-out losses per step from ms-swift's logging.jsonl."""
    path = Path(run_dir) / LOG_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            progress = str(event.get(PROGRESS_KEY, ""))
            if "/" not in progress or not ("loss" in event or "eval_loss" in event):
                continue
            step, max_steps = (int(x) for x in progress.split("/"))
            rows.append((step, max_steps, event.get("loss"), event.get("eval_loss")))
    return pl.DataFrame(rows, schema=LOSS_SCHEMA, orient="row")


def check_sft_file(path: Path) -> int:
    """Rows of an SFT JSONL file; an error naming file and line for a bad row or a missing image.

    ms-swift silently trains on another row when one's image is missing, so gdo checks first.
    """
    rows = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages, images = row["messages"], row.get("images", [])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not an SFT row with messages ({exc})") from None
            if not isinstance(messages, list) or not isinstance(images, list):
                # a bad input file, not a caller's type error
                raise ValueError(f"{path}:{number}: messages and images must be lists")  # noqa: TRY004
            for image in images:
                if not os.path.isabs(image):
                    raise ValueError(f"{path}:{number}: image path {image!r} is relative; gdo writes absolute paths")
                if not os.path.exists(image):
                    raise ValueError(f"{path}:{number}: image {image} does not exist")
            rows += 1
    if rows == 0:
        raise ValueError(f"{path}: no rows to train on")
    return rows


@dataclass(frozen=True)
class TrainResult:
    """One finished run: its folder, checkpoints, losses and the numbers its samples_seen needs."""

    run_dir: Path
    checkpoints: list[tuple[int, Path]]
    losses: pl.DataFrame
    n_rows: int
    epoch_steps: int
    save_steps: int
    global_batch: int
    argv: list[str]
    env: dict[str, str]


def train_arm(
    recipe: Recipe,
    *,
    model_dir: Path,
    dataset: Path,
    run_dir: Path,
    launch: Launch,
    on_line: Callable[[str], None] | None = None,
    swift: str | None = None,
) -> TrainResult:
    """Train one arm with `swift sft` into a fresh run_dir and read back what it wrote."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json)")
    n_rows = check_sft_file(Path(dataset))
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir}: not empty; ms-swift would append to its log")
    run_dir.mkdir(parents=True, exist_ok=True)
    argv, env = sft_command(
        recipe.train, model_dir=model_dir, dataset=Path(dataset), output_dir=run_dir,
        n_rows=n_rows, launch=launch, swift=swift or swift_executable(),
    )
    (run_dir / "gdo_command.json").write_text(json.dumps({"argv": argv, "env": env}, indent=2))
    run_streaming(argv, env, on_line, cwd=run_dir, log_path=run_dir / "swift.log")
    steps = epoch_steps(n_rows, recipe.train, launch)
    return TrainResult(
        run_dir=run_dir,
        checkpoints=list_checkpoints(run_dir),
        losses=read_loss_log(run_dir),
        n_rows=n_rows,
        epoch_steps=steps,
        save_steps=save_steps(steps, recipe.train.checkpoints_per_epoch),
        global_batch=global_batch(recipe.train, launch),
        argv=argv,
        env=env,
    )
