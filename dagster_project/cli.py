"""`gdo` commands that drive Dagster: register-pool, backfill and demo, added to the method's CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gdo_core.cli import CliError, app, clear_errors
from gdo_core.cli import main as _core_main

DEFAULT_DATA_DIR = Path(".gdo")


def project_settings():
    """(the project resource from the GDO_* variables over the settings file, the line saying
    where its settings came from); errors name the variable, or the file and key."""
    from gdo_assets.project import EnvError, project_from_env
    from gdo_assets.settings_file import load_settings

    settings = load_settings()
    try:
        return project_from_env(settings.env, settings=settings.describe()), settings.describe()
    except EnvError as exc:
        raise settings.explain(exc) from None


@app.command("register-pool")
def register_pool(
    onevision: Annotated[
        Path | None, typer.Option(help="Image pool file (default: the project's, from gdo.toml or GDO_ONEVISION).")
    ] = None,
    video: Annotated[
        Path | None, typer.Option(help="Video pool file (default: the project's, from gdo.toml or GDO_VIDEO).")
    ] = None,
    chunk_lines: Annotated[
        int | None,
        typer.Option(min=1, help="Lines per chunk partition (default: chunk_lines of gdo.toml, GDO_CHUNK_LINES, else 20000)."),
    ] = None,
) -> None:
    """Register the pool's chunk partitions with the Dagster instance (DAGSTER_HOME); chunks these
    files no longer have are retired. Without --onevision and --video, the project's pool files
    (settings file gdo.toml or $GDO_SETTINGS, GDO_* variables over it). `gdo backfill` does this
    for the whole project and reruns what is stale."""
    from dagster import DagsterInstance

    from gdo_assets.pool import register_chunks

    with clear_errors():
        project, origin = project_settings()
        if onevision is None and video is None:
            if not project.onevision and not project.video:
                raise CliError(
                    "give --onevision and/or --video, or configure the pool: onevision / video in the settings "
                    f"file (gdo.toml, or $GDO_SETTINGS), or GDO_ONEVISION / GDO_VIDEO [{origin}]"
                )
            typer.echo(origin)
            files = ([Path(p) for p in project.onevision], [Path(p) for p in project.video])
        else:
            files = ([onevision] if onevision else [], [video] if video else [])
        new, total = register_chunks(DagsterInstance.get(), *files, chunk_lines or project.chunk_lines)
    typer.echo(f"registered {len(new)} new chunk partitions ({total} in the pool)")


@app.command()
def backfill(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what is stale and what would run; change and run nothing.")
    ] = False,
    rehash: Annotated[
        bool,
        typer.Option("--rehash", help="Read and fingerprint every pool file, not only those whose size or mtime changed."),
    ] = False,
) -> None:
    """Follow a changed pool: register new chunks, retire chunks of shrunk or deleted files, and
    rerun only the stale chunk partitions, then the merge and the subsets, as runs on the Dagster
    instance at DAGSTER_HOME (the project from the settings file, gdo.toml or $GDO_SETTINGS, and
    the GDO_* variables over it, as `dagster dev` reads them)."""
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from gdo_assets.living import describe_plan, describe_report, plan_backfill, run_backfill

    with clear_errors():
        if not os.environ.get("DAGSTER_HOME"):
            raise CliError("set DAGSTER_HOME to the folder of the Dagster instance (the one `dagster dev` uses)")
        defs = build_definitions(in_process=True)
        typer.echo(defs.resources["gdo"].settings)
        with DagsterInstance.get() as instance:
            if dry_run:
                plan = plan_backfill(defs, instance, dry_run=True, rehash=rehash)
                for line in describe_plan(plan, dry_run=True):
                    typer.echo(line)
                typer.echo("dry run: nothing was registered, retired or run")
                return
            report = run_backfill(defs, instance, rehash=rehash, echo=typer.echo)
    for line in describe_report(report):
        typer.echo(line)
    if report.failed:
        raise typer.Exit(1)


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
