"""checkpoints -> benchmark_scores -> convergence_report through dagster.materialize on a very small demo world.

One chain: a small pool ingested, described (motion only, so no model pass), merged and subset;
both arms trained with ms-swift and scored with lmms-eval; the report built; a second scoring
run rescoring only what is missing; and the constraint check blocking training when unmet.
"""

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, MultiPartitionKey, materialize

from gdo_assets.descriptors import DescriptorModel, descriptor_shards
from gdo_assets.merge import descriptors
from gdo_assets.pool import candidate_pool, register_chunks
from gdo_assets.project import GdoProject
from gdo_assets.subsets import CHECK_CONSTRAINTS, goal_subsets, scan_ordered_qa
from gdo_assets.training import (
    TrainingResource,
    benchmark_scores,
    checkpoints,
    convergence_report,
    scores_file,
)
from gdo_core import schema as S
from gdo_core.demo import BENCHMARK_CATEGORIES, BENCHMARK_GROUP, make_demo_benchmark, make_demo_pool
from gdo_core.sql import late_views, run_sql
from gdo_core.tiny_model import build_tiny_model
from gdo_core.training import load_recipe

CHUNK_LINES = 1000
TARGET = 8  # GDO 1x; Uni-10x is 80


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small demo pool through ingestion, motion-only descriptors and the merge."""
    root = tmp_path_factory.mktemp("chain")
    pool = make_demo_pool(root / "pool", seed=0, n_image_rows=40, n_videos=20)
    data = root / "data"
    make_demo_benchmark(data / "demo-benchmark", n_questions=len(BENCHMARK_CATEGORIES))
    model = build_tiny_model(root / "model")
    project = GdoProject(data_dir=str(data), onevision=[str(pool.onevision)], video=[str(pool.video)],
                         chunk_lines=CHUNK_LINES, target_frames=8)
    resources = {
        "gdo": project,
        "descriptor_model": DescriptorModel(motion_only=True),
        "training": TrainingResource(model_dir=str(model), recipe="demo"),
    }
    instance = DagsterInstance.ephemeral()
    register_chunks(instance, pool.onevision, pool.video, CHUNK_LINES)
    for key in sorted(instance.get_dynamic_partitions("pool_chunks")):
        assert materialize([candidate_pool, descriptor_shards], partition_key=key, instance=instance,
                           resources=resources).success
    assert materialize([descriptors], instance=instance, resources=resources).success
    return project, resources, instance


def _subsets(world, profile, **config):
    _, resources, instance = world
    return materialize([goal_subsets], partition_key=profile, instance=instance, resources=resources,
                       run_config={"ops": {"goal_subsets": {"config": {"target_count": TARGET, **config}}}},
                       raise_on_error=False)


@pytest.mark.e2e
def test_chain_trains_scores_and_reports(world):
    project, resources, instance = world
    result = _subsets(world, "temp_plus")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks[CHECK_CONSTRAINTS] is True
    for arm in (S.ARM_GDO, S.ARM_UNI):
        key = MultiPartitionKey({"profile": "temp_plus", "arm": arm})
        trained = materialize([checkpoints], partition_key=key, instance=instance, resources=resources)
        meta = trained.asset_materializations_for_node("checkpoints")[0].metadata
        rows = meta["rows"].value
        assert rows == (TARGET if arm == S.ARM_GDO else 10 * TARGET)
        # one held-out row, batch 1 on one CPU process: rows - 1 steps, a checkpoint every floor(steps / 5)
        steps = rows - 1
        cadence = max(1, steps // 5)
        expected = list(range(cadence, steps + 1, cadence))
        expected += [] if expected[-1] == steps else [steps]
        assert meta["checkpoints"].value == [f"checkpoint-{s}" for s in expected]
        assert meta["epoch_steps"].value == steps and meta["dtype"].value == "float32"
        scored = materialize([benchmark_scores], partition_key=key, instance=instance, resources=resources)
        smeta = scored.asset_materializations_for_node("benchmark_scores")[0].metadata
        assert smeta["scored"].value == len(expected) and smeta["already_scored"].value == 0

    # scores: one overall row and one row per subtask for every checkpoint, samples_seen = step x 1
    gdo_key = MultiPartitionKey({"profile": "temp_plus", "arm": S.ARM_GDO})
    table = pl.read_parquet(scores_file(project, "temp_plus", S.ARM_GDO))
    assert table.columns == list(S.SCORE_SCHEMA)
    assert (table["samples_seen"] == table["step"]).all()
    assert table.group_by("checkpoint").len()["len"].unique().to_list() == [1 + len(BENCHMARK_CATEGORIES)]
    assert set(table["task"]) == {BENCHMARK_GROUP}

    # a second run scores nothing new; dropping one checkpoint's rows rescores exactly that one
    again = materialize([benchmark_scores], partition_key=gdo_key, instance=instance, resources=resources)
    meta = again.asset_materializations_for_node("benchmark_scores")[0].metadata
    assert (meta["scored"].value, meta["already_scored"].value) == (0, table["checkpoint"].n_unique())
    first = table.sort("step")["checkpoint"][0]
    table.filter(pl.col("checkpoint") != first).write_parquet(scores_file(project, "temp_plus", S.ARM_GDO))
    again = materialize([benchmark_scores], partition_key=gdo_key, instance=instance, resources=resources)
    assert again.asset_materializations_for_node("benchmark_scores")[0].metadata["scored"].value == 1
    rescored = pl.read_parquet(scores_file(project, "temp_plus", S.ARM_GDO))
    assert rescored.sort(["step", "subtask"]).equals(table.sort(["step", "subtask"]))  # same model, same scores

    report = materialize([convergence_report], instance=instance, resources=resources)
    rmeta = report.asset_materializations_for_node("convergence_report")[0].metadata
    for name in ("plot_curves", "plot_frontier", "plot_subtask_deltas"):
        assert Path(rmeta[name].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pl.read_parquet(project.path("report", "summary.parquet"))
    assert summary.select("profile", "task").rows() == [("temp_plus", BENCHMARK_GROUP)]
    uni_final = pl.read_parquet(scores_file(project, "temp_plus", S.ARM_UNI)).sort("step").filter(
        pl.col("subtask") == S.OVERALL)["accuracy"][-1]
    assert summary["uni_final"][0] == uni_final
    # the local benchmark says what chance is, so the report sets each final score beside it
    text = Path(rmeta["report"].value).read_text()
    assert "## Final accuracy against chance" in text and "final_vs_chance" in rmeta
    section = text.split("## Final accuracy against chance", 1)[1]
    background = next(line for line in section.splitlines() if "| background " in line)
    assert "| 50.0 " in background  # white or black: a guess is right half the time

    # the scores view answers through `gdo sql`'s read-only path
    db = project.path("gdo.duckdb")
    out = run_sql("select arm, step, task, accuracy from scores where subtask = 'overall' order by arm, step",
                  db, "json", views=late_views(db))
    rows = json.loads(out)
    assert {r["arm"] for r in rows} == {S.ARM_GDO, S.ARM_UNI}
    assert len(rows) == pl.concat([table, pl.read_parquet(scores_file(project, "temp_plus", S.ARM_UNI))]).filter(
        pl.col("subtask") == S.OVERALL).height


@pytest.mark.e2e
def test_unmet_constraints_fail_the_check_and_block_training(world, tmp_path):
    project, resources, instance = world
    # Exclude every video question (the decontamination guard): temp_plus's video minimum
    # (ceil(0.5 x 8) = 4 video QAs) cannot be met from a pool left with no video QA.
    qa = scan_ordered_qa(project)
    video = qa.filter(pl.col("bucket") == S.BUCKET_VIDEO)
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps({"question": q}) + "\n" for q in video["question"].unique().sort()))
    result = _subsets(world, "temp_plus", exclude_reference=[str(reference)], exclude_mode="question")
    report = json.loads(project.path("subsets", "temp_plus", "report.json").read_text())
    assert report["hard_constraints"]["all_constraints_met"] is False
    assert report["hard_constraints"]["selected_video_count"] == 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks[CHECK_CONSTRAINTS] is False
    key = MultiPartitionKey({"profile": "temp_plus", "arm": S.ARM_GDO})
    blocked = materialize([checkpoints], partition_key=key, instance=instance, resources=resources,
                          raise_on_error=False)
    assert not blocked.success
    failure = blocked.get_step_failure_events()[0].event_specific_data.error.message
    assert "training is blocked" in failure
    # the explicit opt-out lets the same subset through its check and leaves the waiver beside it
    waived = _subsets(world, "temp_plus", exclude_reference=[str(reference)], exclude_mode="question",
                      allow_unmet_constraints=True)
    checks = {e.check_name: e.passed for e in waived.get_asset_check_evaluations()}
    assert checks[CHECK_CONSTRAINTS] is True
    assert project.path("subsets", "temp_plus", "constraints_waived.json").is_file()
    # rebuilt without the exclusion, the waiver goes again
    assert _subsets(world, "temp_plus").success
    assert not project.path("subsets", "temp_plus", "constraints_waived.json").is_file()


@pytest.mark.e2e
def test_failed_training_fails_the_asset_with_its_command_and_log_tail(world, tmp_path):
    _, resources, instance = world
    assert _subsets(world, "temp_plus").success
    recipe = tmp_path / "broken.yaml"
    text = load_recipe("demo").path.read_text().replace("extra_args: []", "extra_args: [--no_such_flag, '1']")
    recipe.write_text(text)
    broken = {**resources, "training": TrainingResource(model_dir=resources["training"].model_dir, recipe=str(recipe))}
    key = MultiPartitionKey({"profile": "temp_plus", "arm": S.ARM_GDO})
    result = materialize([checkpoints], partition_key=key, instance=instance, resources=broken, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failures[0].event_specific_data
    assert "exited with" in data.error.message
    metadata = data.user_failure_data.metadata
    assert "--no_such_flag" in metadata["command"].value
    assert "no_such_flag" in metadata["log_tail"].value  # ms-swift's own complaint about the flag
