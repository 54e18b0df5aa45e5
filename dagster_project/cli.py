"""`gdo` commands that drive Dagster: register-pool and demo, added to the method's CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gdo_core.cli import CliError, app, clear_errors
from gdo_core.cli import main as _core_main

DEFAULT_DATA_DIR = Path(".gdo")


@app.command("register-pool")
def register_pool(
    onevision: Annotated[Path | None, typer.Option(help="Image pool file.")] = None,
    video: Annotated[Path | None, typer.Option(help="Video pool file.")] = None,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines per chunk partition.")] = 20_000,
) -> None:
    """Register the pool's chunk partitions with the Dagster instance (DAGSTER_HOME)."""
    from dagster import DagsterInstance

    from gdo_assets.pool import register_chunks

    with clear_errors():
        if onevision is None and video is None:
            raise CliError("give at least one of --onevision and --video")
        new, total = register_chunks(DagsterInstance.get(), onevision, video, chunk_lines)
    typer.echo(f"registered {len(new)} new chunk partitions ({total} in the pool)")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Project data folder (DuckDB, Parquet, outputs).")] = DEFAULT_DATA_DIR,
    seed: Annotated[int, typer.Option(help="Seed of the demo world.")] = 0,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines per chunk partition of the demo pool.")] = 40,
) -> None:
    """Run the main job end to end on the embedded demo pool and tiny model."""
    from dagster_project.demo import run_demo

    with clear_errors():
        report = run_demo(data_dir.resolve(), seed=seed, chunk_lines=chunk_lines, echo=typer.echo)
    typer.echo(json.dumps(report, indent=2, sort_keys=True))


def main() -> None:
    """Console-script entry point: the method's commands plus the Dagster ones."""
    _core_main()
