"""`gdo` commands that drive Dagster: register-pool and demo, added to the method's CLI."""

from __future__ import annotations

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
    data_dir: Annotated[Path, typer.Option(help="Project data folder (DuckDB, Parquet, runs, report).")] = DEFAULT_DATA_DIR,
    all_profiles: Annotated[
        bool, typer.Option("--all-profiles", help="Train and score all four presets, not only temp_plus.")
    ] = False,
) -> None:
    """Run the main job end to end on the embedded demo world: descriptors, subsets, training, scores, report."""
    from dagster_project.demo import run_demo
    from gdo_assets.subsets import goal_profiles

    with clear_errors():
        profiles = tuple(goal_profiles.get_partition_keys()) if all_profiles else None
        run_demo(data_dir.resolve(), profiles=profiles, echo=typer.echo)


def main() -> None:
    """Console-script entry point: the method's commands plus the Dagster ones."""
    _core_main()
