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
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: qa/*.parquet, rejects.parquet.")
    ],
    onevision: Annotated[
        Path | None, typer.Option(help="Image pool (.jsonl, .jsonl.gz, .json).")
    ] = None,
    video: Annotated[
        Path | None, typer.Option(help="Video pool (.jsonl, .jsonl.gz, .json).")
    ] = None,
    target_frames: Annotated[int, typer.Option(min=1, help="Frames kept per video QA.")] = 32,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines per Parquet chunk.")] = 20_000,
    media_root: Annotated[
        Path | None,
        typer.Option(help="Folder relative media paths start from (default: the pool file's)."),
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
            onevision,
            video,
            out,
            target_frames=target_frames,
            chunk_lines=chunk_lines,
            media_root=media_root,
            progress=sys.stderr.isatty(),
        )
    _print_counts(summary.counts)
    typer.echo(
        f"wrote {len(summary.qa_files)} chunk files to {out / 'qa'} and {summary.rejects_file}"
    )


@app.command()
def extract(
    pool: Annotated[
        Path, typer.Option("--pool", help="Output folder of `gdo ingest` (holds qa/*.parquet).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the descriptor shards (OUT/*.parquet).")
    ],
    model: Annotated[
        Path | None, typer.Option(help="Model folder (save_pretrained layout).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    dtype: Annotated[
        str | None,
        typer.Option(
            help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA)."
        ),
    ] = None,
    tnc_mode: Annotated[
        str, typer.Option(help="Temporal necessity: llm (ask the model) or regex.")
    ] = "llm",
    sc_samples: Annotated[
        int, typer.Option(min=0, help="Sampled answers for self-consistency (0 or 1: off).")
    ] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="QAs per model batch.")] = 8,
    motion_only: Annotated[
        bool, typer.Option(help="Motion and features only, no model (TNC by regex).")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Per-QA cache folder (default OUT/cache).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the SC samples.")] = 0,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Motion threads (default: one per core).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Torch CPU threads (default: torch's).")
    ] = None,
) -> None:
    """Compute the six descriptors per QA into one Parquet shard per pool chunk (cached per QA)."""
    from gdo_core.descriptors.extract import extract_descriptors

    with clear_errors():
        if model is None and not motion_only:
            raise CliError(
                "give --model PATH, or --motion-only for the descriptors that need no model"
            )
        if model is not None and not model.is_dir():
            raise CliError(f"--model {model}: not a directory")
        summary = extract_descriptors(
            pool,
            out,
            model=model,
            device=device,
            dtype=dtype,
            tnc_mode=tnc_mode,
            sc_samples=sc_samples,
            batch_size=batch_size,
            motion_only=motion_only,
            cache_dir=cache_dir,
            seed=seed,
            motion_workers=workers,
            torch_threads=threads,
            progress=sys.stderr.isatty(),
        )
    typer.echo(summary.line())
    typer.echo(f"wrote {len(summary.shards)} shards to {out}")


@app.command()
def merge(
    shards: Annotated[
        Path, typer.Option(help="Folder of descriptor shards (the --out of gdo extract).")
    ],
    db: Annotated[Path, typer.Option(help="DuckDB file to write (replaced atomically).")],
    pool: Annotated[
        Path | None,
        typer.Option(
            help="Ingest folder with qa/*.parquet and rejects.parquet (default: shards' parent's pool)."
        ),
    ] = None,
    clusters: Annotated[
        int | None, typer.Option(min=1, help="k of k-means (default min(4096, rows)).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of k-means and of the stats sample.")] = 42,
) -> None:
    """Merge descriptor shards with the pool rows into DuckDB, with robust z-stats, clusters and rho(x)."""
    from gdo_core.merge import merge_to_duckdb

    with clear_errors():
        if not shards.is_dir():
            raise CliError(f"--shards {shards}: folder not found")
        shard_files = sorted(shards.glob("*.parquet"))
        if not shard_files:
            raise CliError(f"--shards {shards}: no *.parquet shard files")
        pool_dir = pool if pool is not None else shards.parent
        qa_files = sorted((pool_dir / "qa").glob("*.parquet"))
        if not qa_files:
            raise CliError(
                f"--pool {pool_dir}: no qa/*.parquet files (run gdo ingest --out {pool_dir})"
            )
        rejects = [p for p in [pool_dir / "rejects.parquet"] if p.is_file()]
        report = merge_to_duckdb(shard_files, qa_files, rejects, db, clusters=clusters, seed=seed)
    typer.echo(
        f"merged {report.rows} descriptor rows, {report.qa_rows} QA rows, {report.reject_rows} rejects "
        f"into {report.db_path} (k={report.clusters})"
    )


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help='SQL to run, e.g. "SELECT count(*) FROM descriptors".')
    ],
    db: Annotated[Path, typer.Option(help="DuckDB file (read-only).")] = Path(".gdo/gdo.duckdb"),
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Query the descriptors database read-only (tables qa, descriptors, rejects, merge_report; views subset_members, scores).

    Refused: COPY, ATTACH, DETACH, INSTALL, LOAD, EXPORT DATABASE, files outside the data folder.
    """
    from gdo_core.sql import late_views, run_sql

    with clear_errors():
        if format not in ("table", "csv", "json"):
            raise CliError(f"--format {format}: expected table, csv or json")
        # Subsets and scores written after the merge are views over their Parquet files.
        typer.echo(run_sql(query, db, format, views=late_views(db)))


@app.command()
def build(
    profile: Annotated[
        str,
        typer.Option(help="Preset (minloss, diverse, temp, temp_plus, custom) or a profile file."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    onevision: Annotated[Path | None, typer.Option(help="Image pool file.")] = None,
    video: Annotated[Path | None, typer.Option(help="Video pool file.")] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(
            help="gdo's DuckDB file, a Parquet file, or merged-metrics JSONL keyed by qa_uid."
        ),
    ] = None,
    compat: Annotated[
        str | None, typer.Option(help="'published' reproduces the published build step exactly.")
    ] = None,
    target_count: Annotated[int | None, typer.Option(min=1, help="Fixed 1x size.")] = None,
    target_ratio: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Fixed 1x share of the pool.")
    ] = None,
    target_frames: Annotated[
        int | None, typer.Option(min=1, help="Frames per video row in the SFT files.")
    ] = None,
    no_vds: Annotated[
        bool, typer.Option("--no-vds", help="Ablation: drop the vds3' term.")
    ] = False,
    no_ppl: Annotated[
        bool, typer.Option("--no-ppl", help="Ablation: drop the naturalness term.")
    ] = False,
    no_sc: Annotated[
        bool, typer.Option("--no-sc", help="Ablation: drop the quality (SC) term.")
    ] = False,
    no_vds3_budget: Annotated[
        bool, typer.Option("--no-vds3-budget", help="Ablation: no VDS3 budget adjustment.")
    ] = False,
    exclude_reference: Annotated[
        str | None,
        typer.Option(help="Comma-separated benchmark JSONL files to decontaminate against."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the profile's, 42).")] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Keep the parsed pool, so later builds on the same files skip parsing.",
        ),
    ] = True,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Parsed-pool cache folder (default: $GDO_CACHE_DIR or ~/.cache/gdo/pools)."),
    ] = None,
    low_memory: Annotated[
        bool,
        typer.Option(
            "--low-memory",
            help="Hand freed memory back to the system promptly, parse the pool files one at a time "
            "and keep their texts on disk: lower peak RSS, slower.",
        ),
    ] = False,
) -> None:
    """Build the GDO 1x subset and the Uni-10x baseline for one goal profile."""
    # Before polars is imported: it reads its allocator settings then.
    from gdo_core.memory import prefer_low_memory, prefer_prompt_release

    if low_memory:
        for part in prefer_low_memory():
            typer.echo(f"gdo: --low-memory: not applied to {part}", err=True)
    else:  # an optimisation only: where polars is loaded already (in-process calls), skipped
        prefer_prompt_release()
    from gdo_core.build import build_subsets

    with clear_errors():
        if compat not in (None, "published"):
            raise CliError(f"--compat {compat}: the only compatibility mode is 'published'")
        _existing_file(onevision, "--onevision")
        _existing_file(video, "--video")
        _existing_file(metrics, "--metrics")
        references = [Path(p) for p in (exclude_reference or "").split(",") if p]
        for ref in references:
            _existing_file(ref, "--exclude-reference")
        result = build_subsets(
            profile,
            onevision,
            video,
            out,
            metrics=metrics,
            compat=compat,  # type: ignore[arg-type]
            target_count=target_count,
            target_ratio=target_ratio,
            target_frames=target_frames,
            no_vds=no_vds,
            no_ppl=no_ppl,
            no_sc=no_sc,
            no_vds3_budget=no_vds3_budget,
            exclude_reference=references,
            seed=seed,
            progress=sys.stderr.isatty(),
            cache=cache,
            cache_dir=cache_dir,
            low_memory=low_memory,
        )
    report = result.report
    unmet = report.get("hard_constraints", {}).get("unmet", [])
    typer.echo(
        f"{report.get('profile', profile)}: {report.get('total_pairs')} QAs -> GDO 1x {report.get('target_count')}, "
        f"Uni-10x {report.get('random_target_count')}; unmet constraints: {unmet or 'none'}"
    )
    typer.echo(f"wrote {result.gdo_path}, {result.uni_path}, {result.report_path}")
    cache = result.parse_cache
    metrics_cache = f", metrics: {cache['metrics']}" if cache.get("metrics") else ""
    typer.echo(f"parsed-pool cache: {cache.get('status', 'off')}{metrics_cache}", err=True)


@app.command()
def resample(
    input: Annotated[Path, typer.Option("--input", help="SFT JSONL file.")],
    output: Annotated[Path, typer.Option("--output", help="Where to write the resampled file.")],
    target_frames: Annotated[int, typer.Option(min=1, help="Frames per row after resampling.")],
) -> None:
    """Resample every row's frame list of an SFT JSONL file uniformly to --target-frames."""
    from gdo_core.build import resample_jsonl

    with clear_errors():
        _existing_file(input, "--input")
        rows = resample_jsonl(input, output, target_frames)
    typer.echo(f"wrote {rows} rows to {output}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
