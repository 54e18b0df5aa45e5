"""`gdo demo`: build the demo world and run the whole asset chain on it with a local Dagster instance.

demo pool -> descriptors -> merge -> subsets -> train the GDO 1x and Uni-10x arms -> score every
checkpoint -> convergence report. Settings live in gdo_core.demo_settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdo_core.demo_settings import DEMO, DemoSettings

BENCHMARK_DIR = "demo-benchmark"  # the demo recipe's include_path, relative to the data folder
SETTINGS_FILE = "gdo.toml"  # in the data folder: the demo's settings, for `make ui` and the gdo commands
SETTINGS_MARK = "Written by `gdo demo`"  # the first line of a settings file the demo may rewrite
SETTINGS_HEADER = f"""{SETTINGS_MARK}: the demo's pool, data folder, model and descriptor settings, as
it ran with them, so that Dagster can re-materialize and backfill the demo's partitions. `make ui`
reads .gdo/gdo.toml (unless GDO_SETTINGS or a ./gdo.toml names another file); the gdo commands:
  GDO_SETTINGS={{path}} DAGSTER_HOME={{home}} gdo backfill --dry-run
Paths are relative to this file's folder; GDO_* variables set in the environment win over these
keys. `gdo demo` rewrites this file each run: delete this first line to keep your own edits."""


def demo_settings_path(data_dir: Path) -> Path:
    """Where `gdo demo` writes its settings file."""
    return data_dir / SETTINGS_FILE


def demo_may_write_settings(path: Path) -> bool:
    """Whether the demo may (re)write the settings file at `path`: absent, or written by the demo."""
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().lstrip("# ").startswith(SETTINGS_MARK)
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False


def write_demo_settings(path: Path, project, model, training) -> Path:
    """The settings file of the demo's resources (GdoProject, DescriptorModel, TrainingResource):
    built from it, the definitions have the pool, data folder, model, chunk size, target frames,
    descriptor settings and recipe the demo ran with."""
    from gdo_assets.settings_file import resource_settings, write_settings_file

    home = Path(project.data_dir) / "dagster_home"
    header = SETTINGS_HEADER.format(path=path, home=home)
    return write_settings_file(path, resource_settings(project, model, training), header)


def _dagster_home(data_dir: Path) -> Path:
    home = data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


def demo_resources(
    data_dir: Path, settings: DemoSettings, onevision: Path, video: Path, model_dir: Path, origin: str = ""
):
    """(GdoProject, DescriptorModel, TrainingResource) the demo runs with: its pool, data folder,
    tiny model on the CPU and the descriptor settings and recipe of `settings`."""
    from gdo_assets.descriptors import DescriptorModel
    from gdo_assets.project import GdoProject
    from gdo_assets.training import TrainingResource

    project = GdoProject(
        data_dir=str(data_dir),
        onevision=[str(onevision)],
        video=[str(video)],
        chunk_lines=settings.chunk_lines,
        target_frames=settings.target_frames,
        settings=origin,
    )
    model = DescriptorModel(
        model_dir=str(model_dir), device="cpu", tnc_mode=settings.tnc_mode, sc_samples=settings.sc_samples,
        batch_size=settings.descriptor_batch, torch_threads=settings.torch_threads,
    )
    training = TrainingResource(model_dir=str(model_dir), recipe=settings.recipe)
    return project, model, training


def run_demo(
    data_dir: Path,
    *,
    settings: DemoSettings = DEMO,
    profiles: tuple[str, ...] | None = None,
    echo: Callable[[str], Any] = print,
) -> dict:
    """Create the demo world and tiny model if missing, then materialize every asset on them."""
    from dagster import DagsterInstance, MultiPartitionKey

    from dagster_project.definitions import build_definitions
    from gdo_assets.pool import register_chunks
    from gdo_assets.project import DB_FILE
    from gdo_assets.subsets import goal_profiles
    from gdo_assets.training import held_out_losses, read_scores
    from gdo_core import convergence as C
    from gdo_core import schema as S
    from gdo_core.demo import benchmark_baselines, make_demo_benchmark, make_demo_pool
    from gdo_core.tiny_model import build_tiny_model

    started = time.perf_counter()
    data_dir = Path(os.path.abspath(data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(_dagster_home(data_dir))
    pool_dir = data_dir / "demo" / "pool"
    echo(f"demo pool -> {pool_dir}")
    demo_pool = make_demo_pool(pool_dir, seed=settings.seed, n_image_rows=settings.n_image_rows,
                               n_videos=settings.n_videos)
    bench = make_demo_benchmark(data_dir / BENCHMARK_DIR, seed=settings.seed, n_questions=settings.benchmark_questions)
    model_dir = data_dir / "tiny-model"
    if not (model_dir / "config.json").exists():
        echo(f"tiny model -> {model_dir}")
        build_tiny_model(model_dir, seed=settings.seed)
    settings_path = demo_settings_path(data_dir)
    writes_settings = demo_may_write_settings(settings_path)
    project, model, training = demo_resources(
        data_dir, settings, demo_pool.onevision, demo_pool.video, model_dir,
        origin=(
            f"settings: gdo demo's, written to {settings_path}" if writes_settings
            else f"settings: gdo demo's ({settings_path} kept as it is: not written by gdo demo)"
        ),
    )
    if writes_settings:
        write_demo_settings(settings_path, project, model, training)
        echo(f"settings -> {settings_path}")
    else:
        echo(f"settings: {settings_path} was not written by gdo demo; left as it is")
    defs = build_definitions(project, model, training, in_process=True)
    timings: dict[str, float] = {}

    def stage(name: str, began: float) -> None:
        timings[name] = round(time.perf_counter() - began, 1)

    with DagsterInstance.get() as instance:
        began = time.perf_counter()
        new, total = register_chunks(instance, demo_pool.onevision, demo_pool.video, settings.chunk_lines)
        echo(f"chunk partitions: {total} ({len(new)} new)")
        _run(defs, "observe_pool", instance)
        keys = instance.get_dynamic_partitions("pool_chunks")
        for key in keys:
            _run(defs, "ingest_pool", instance, partition_key=key)
        metadata = _materialization_metadata(_run(defs, "profile_pool", instance), "pool_profile")
        echo(f"QA pairs: {metadata.get('qa_rows')} {metadata.get('qa_per_bucket')}")
        echo(f"rejects: {metadata.get('rejects')} {metadata.get('rejects_per_reason')}")
        stage("pool", began)
        began = time.perf_counter()
        described = []
        for key in keys:
            run = _run(defs, "describe_chunks", instance, partition_key=key)
            described.append(_materialization_metadata(run, "descriptor_shards"))
            echo(f"descriptors: chunk {key} ({described[-1].get('qa')} QAs, {time.perf_counter() - began:.0f} s)")
        stage("descriptors", began)
        began = time.perf_counter()
        merged = _materialization_metadata(_run(defs, "merge_descriptors", instance), "descriptors")
        echo(f"merged descriptors into {data_dir / 'gdo.duckdb'}")
        subsets = {}
        subset_config = {"ops": {"goal_subsets": {"config": {"target_count": settings.target_count}}}}
        for profile in goal_profiles.get_partition_keys():
            meta = _materialization_metadata(
                _run(defs, "build_subsets", instance, partition_key=profile, run_config=subset_config),
                "goal_subsets",
            )
            subsets[profile] = {k: meta.get(k) for k in ("target_count", "uni_count", "unmet_constraints")}
            echo(f"goal subsets [{profile}]: GDO 1x {meta.get('target_count')}, Uni-10x {meta.get('uni_count')}, "
                 f"unmet constraints: {meta.get('unmet_constraints') or 'none'}")
        stage("merge_and_subsets", began)
        for profile in profiles or settings.trained_profiles:
            for arm in (S.ARM_GDO, S.ARM_UNI):
                key = MultiPartitionKey({"profile": profile, "arm": arm})
                began = time.perf_counter()
                meta = _materialization_metadata(_run(defs, "train_arm", instance, partition_key=key), "checkpoints")
                stage(f"train {profile}/{arm}", began)
                echo(f"trained {profile}/{arm}: {meta.get('rows')} rows, {len(meta.get('checkpoints') or [])} checkpoints, "
                     f"held-out loss {meta.get('held_out_loss_first'):.3f} -> {meta.get('held_out_loss_last'):.3f} "
                     f"({timings[f'train {profile}/{arm}']} s)")
                began = time.perf_counter()
                meta = _materialization_metadata(_run(defs, "score_arm", instance, partition_key=key), "benchmark_scores")
                stage(f"score {profile}/{arm}", began)
                echo(f"scored {profile}/{arm}: {meta.get('scored')} checkpoints with lmms-eval "
                     f"({timings[f'score {profile}/{arm}']} s)")
        report = _materialization_metadata(_run(defs, "report_convergence", instance), "convergence_report")

    scores = read_scores(project)
    tables = C.analyse(scores)
    baselines = benchmark_baselines(bench)
    final = C.chance_table(scores, baselines)
    losses = held_out_losses(project)
    seconds = round(time.perf_counter() - started, 1)
    lines = [
        "",
        (
            f"== GDO demo: convergence (demo budget: GDO 1x = {settings.target_count} QAs, Uni-10x = "
            f"{10 * settings.target_count} QAs; tiny random Qwen3-VL, recipe '{settings.recipe}') =="
        ),
        C.markdown(tables.summary),
        "",
        (
            "Final accuracy per subtask (%; chance: a uniform guess over the options; constant: the best "
            "single answer given to every question; p <arm>: one-sided binomial p-value of that arm's "
            "score against chance):"
        ),
        C.markdown(C.p_values_as_text(final)),
        "",
        "Held-out loss (ms-swift's split), first -> last checkpoint:",
        C.markdown(losses, 3),
        "",
        *C.headline(tables.summary),
        "",
        f"report:   {report.get('report')}",
        f"plots:    {report.get('plot_curves')}, {report.get('plot_frontier')}, {report.get('plot_subtask_deltas')}",
        (
            f"DuckDB:   {project.path(*DB_FILE)}  (try: gdo sql \"select arm, step, task, subtask, accuracy "
            "from scores order by arm, step\")"
        ),
        f"Dagster UI with these runs: make ui, then open http://127.0.0.1:3000 (DAGSTER_HOME={os.environ['DAGSTER_HOME']})",
        (
            f"settings: {settings_path} (make ui reads .gdo/gdo.toml; for the gdo commands: "
            f"GDO_SETTINGS={settings_path} DAGSTER_HOME={os.environ['DAGSTER_HOME']} gdo backfill --dry-run)"
        ),
        f"done in {seconds} s",
    ]
    for line in lines:
        echo(line)
    return {
        "data_dir": str(data_dir),
        "chunks": len(keys),
        "qa_rows": metadata.get("qa_rows"),
        "qa_per_bucket": metadata.get("qa_per_bucket"),
        "rejects": metadata.get("rejects"),
        "descriptors": {
            "computed": sum(int(m.get("computed", 0) or 0) for m in described),
            "reused": sum(int(m.get("reused", 0) or 0) for m in described),
            "rows": merged.get("rows"),
        },
        "subsets": subsets,
        "summary": tables.summary,
        "final": final,
        "held_out_loss": losses,
        "baselines": baselines,
        "timings": timings,
        "seconds": seconds,
    }


def _run(defs, job_name: str, instance, **kwargs):
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    run_config = {**quiet, **kwargs.pop("run_config", {})}
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, run_config=run_config, **kwargs)
    if not result.success:
        raise RuntimeError(f"Dagster job {job_name} failed")
    return result


def _materialization_metadata(result, asset_name: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset_name:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {}
