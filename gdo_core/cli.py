"""The `gdo` command line for the method (no Dagster here; dagster_project.cli adds the job commands)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="gdo",
    help="Goal-Driven Data Optimization for multimodal instruction tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

class CliError(Exception):
    """An error reported as one line, without a traceback."""


@contextlib.contextmanager
def clear_errors() -> Iterator[None]:
    """Turn expected failures (missing files, bad arguments, bad inputs) into one line, exit 2."""
    from gdo_core.pool import PoolError

    try:
        yield
    except (CliError, PoolError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        typer.echo(f"gdo: error: {exc}", err=True)
        raise typer.Exit(2) from None


def _existing_file(path: Path | None, flag: str) -> Path | None:
    if path is not None and not path.is_file():
        raise CliError(f"{flag} {path}: file not found")
    return path


def _print_counts(counts: dict) -> None:
    per_bucket = ", ".join(f"{k} {v}" for k, v in counts["qa_per_bucket"].items()) or "none"
    per_reason = ", ".join(f"{k} {v}" for k, v in counts["rejects_per_reason"].items()) or "none"
    typer.echo(f"QA pairs: {counts['qa']} ({per_bucket})")
    typer.echo(f"rejects: {counts['rejects']} ({per_reason})")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder for the demo pool and demo benchmark.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
) -> None:
    """Write the demo pool (images, frame folders, mp4 files) and the demo benchmark."""
    from gdo_core.demo import make_demo_benchmark, make_demo_pool

    with clear_errors():
        pool = make_demo_pool(out / "pool", seed=seed)
        bench = make_demo_benchmark(out / "benchmark", seed=seed)
    typer.echo(f"demo pool: {pool.onevision} and {pool.video}")
    typer.echo(f"demo benchmark: {bench}")


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Folder for the model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny randomly initialised Qwen3-VL with a locally trained tokenizer."""
    from gdo_core.tiny_model import build_tiny_model

    with clear_errors():
        path = build_tiny_model(out, seed=seed)
    typer.echo(f"tiny model: {path}")


@app.command()
def ingest(
    out: Annotated[Path, typer.Option("--out", help="Output folder: qa/*.parquet, rejects.parquet.")],
    onevision: Annotated[Path | None, typer.Option(help="Image pool (.jsonl, .jsonl.gz, .json).")] = None,
    video: Annotated[Path | None, typer.Option(help="Video pool (.jsonl, .jsonl.gz, .json).")] = None,
    target_frames: Annotated[int, typer.Option(min=1, help="Frames kept per video QA.")] = 32,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines per Parquet chunk.")] = 20_000,
    media_root: Annotated[
        Path | None, typer.Option(help="Folder relative media paths start from (default: the pool file's).")
    ] = None,
) -> None:
    """Parse pool files into QA rows with stratum fields, and record every rejected line."""
    from gdo_core.pool import ingest as run_ingest

    with clear_errors():
        if onevision is None and video is None:
            raise CliError("give at least one of --onevision and --video")
        _existing_file(onevision, "--onevision")
        _existing_file(video, "--video")
        summary = run_ingest(
            onevision, video, out, target_frames=target_frames, chunk_lines=chunk_lines,
            media_root=media_root, progress=sys.stderr.isatty(),
        )
    _print_counts(summary.counts)
    typer.echo(f"wrote {len(summary.qa_files)} chunk files to {out / 'qa'} and {summary.rejects_file}")


@app.command()
def extract(
    pool: Annotated[Path, typer.Option("--pool", help="Output folder of `gdo ingest` (holds qa/*.parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the descriptor shards (OUT/*.parquet).")],
    model: Annotated[Path | None, typer.Option(help="Model folder (save_pretrained layout).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).")
    ] = None,
    tnc_mode: Annotated[str, typer.Option(help="Temporal necessity: llm (ask the model) or regex.")] = "llm",
    sc_samples: Annotated[int, typer.Option(min=0, help="Sampled answers for self-consistency (0 or 1: off).")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="QAs per model batch.")] = 8,
    motion_only: Annotated[bool, typer.Option(help="Motion and features only, no model (TNC by regex).")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Per-QA cache folder (default OUT/cache).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the SC samples.")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="Motion threads (default: one per core).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads (default: torch's).")] = None,
) -> None:
    """Compute the six descriptors per QA into one Parquet shard per pool chunk (cached per QA)."""
    from gdo_core.descriptors.extract import extract_descriptors

    with clear_errors():
        if model is None and not motion_only:
            raise CliError("give --model PATH, or --motion-only for the descriptors that need no model")
        if model is not None and not model.is_dir():
            raise CliError(f"--model {model}: not a directory")
        summary = extract_descriptors(
            pool, out, model=model, device=device, dtype=dtype, tnc_mode=tnc_mode, sc_samples=sc_samples,
            batch_size=batch_size, motion_only=motion_only, cache_dir=cache_dir, seed=seed,
            motion_workers=workers, torch_threads=threads, progress=sys.stderr.isatty(),
        )
    typer.echo(summary.line())
    typer.echo(f"wrote {len(summary.shards)} shards to {out}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
