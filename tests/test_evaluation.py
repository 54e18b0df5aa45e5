"""lmms-eval scoring: model_args and CLI, and parsing real results JSON that lmms-eval writes in the test."""

import json
from pathlib import Path

import pytest

from gdo_core import schema as S
from gdo_core.demo import BENCHMARK_CATEGORIES, BENCHMARK_GROUP, make_demo_benchmark
from gdo_core.evaluation import (
    EvalLaunch,
    eval_env,
    lmms_eval_cli,
    model_args,
    parse_results,
    read_results,
    score_checkpoints,
)
from gdo_core.tiny_model import build_tiny_model
from gdo_core.training import load_recipe


def test_model_args_on_cpu_and_on_the_given_gpu(tmp_path):
    paper = load_recipe("paper").eval
    cpu = model_args(paper, tmp_path, EvalLaunch())
    assert cpu == (f"pretrained={tmp_path.resolve()},device=cpu,device_map=cpu,"
                   "max_num_frames=32,max_pixels=602112,fps=1")
    # GPU 3 is the only one the process sees, so it is cuda:0 inside it
    gpu = model_args(paper, tmp_path, EvalLaunch(gpu=3))
    assert "device=cuda:0,device_map=cuda:0" in gpu
    assert eval_env(EvalLaunch(gpu=3))["CUDA_VISIBLE_DEVICES"] == "3"
    assert eval_env(EvalLaunch())["CUDA_VISIBLE_DEVICES"] == ""
    demo = load_recipe("demo").eval
    assert "max_num_frames=8,max_pixels=602112,min_pixels=4096" in model_args(demo, tmp_path, EvalLaunch())


def test_cli_line_for_one_checkpoint(tmp_path):
    argv, env = lmms_eval_cli(load_recipe("paper").eval, tmp_path / "ckpt", tmp_path / "out", EvalLaunch(gpu=1))
    assert argv[:3] == ["lmms-eval", "--model", "qwen3_vl"]
    assert argv[argv.index("--tasks") + 1] == "mvbench,videomme,mlvu_test,lvbench"
    assert argv[argv.index("--timezone") + 1] == "UTC" and "--include_path" not in argv
    assert env["HF_HUB_OFFLINE"] == "1"


def test_group_without_aggregate_is_the_weighted_mean_of_its_subtasks():
    # mvbench's group entry carries no metric; lvbench reports a 0-1 fraction.
    results = {
        "results": {
            "mvbench": {" ": " ", "alias": "mvbench"},
            "mvbench_action": {"mvbench_accuracy,none": 50.0, "mvbench_accuracy_stderr,none": "N/A"},
            "mvbench_object": {"mvbench_accuracy,none": 20.0},
            "lvbench": {"lvbench_score,none": 0.25, "alias": "lvbench"},
        },
        "group_subtasks": {"mvbench": ["mvbench_action", "mvbench_object"], "lvbench": []},
        "n-samples": {"mvbench_action": {"effective": 10}, "mvbench_object": {"effective": 30}},
    }
    rows = parse_results(results, ["mvbench", "lvbench"])
    # (50 * 10 + 20 * 30) / 40 = 27.5; 0.25 -> 25%
    assert rows == [
        ("mvbench", S.OVERALL, 27.5),
        ("mvbench", "action", 50.0),
        ("mvbench", "object", 20.0),
        ("lvbench", S.OVERALL, 25.0),
    ]
    with pytest.raises(ValueError, match="no numeric metric for task 'videomme'"):
        parse_results({"results": {"videomme": {"alias": "x"}}}, ["videomme"])


@pytest.mark.e2e
def test_scores_real_lmms_eval_output(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    bench = make_demo_benchmark(tmp_path / "bench", n_questions=2 * len(BENCHMARK_CATEGORIES))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(load_recipe("demo").path.read_text())
    found = score_checkpoints(recipe, [model], tmp_path / "eval", EvalLaunch(), include_path=bench)
    results_path = found[model.name]
    rows = read_results(results_path, [BENCHMARK_GROUP])
    assert rows[0][:2] == (BENCHMARK_GROUP, S.OVERALL)
    assert sorted(r[1] for r in rows[1:]) == sorted(BENCHMARK_CATEGORIES)
    assert {r[0] for r in rows} == {BENCHMARK_GROUP}
    # The expected accuracies come from the per-question scores lmms-eval logged, not from the parser.
    by_subtask = {}
    for category in BENCHMARK_CATEGORIES:
        lines = (results_path.parent / f"samples_{BENCHMARK_GROUP}_{category}.jsonl").read_text().splitlines()
        scores = [json.loads(line)["gdo_demo_accuracy"]["score"] for line in lines]
        assert len(scores) == 2
        by_subtask[category] = 100.0 * sum(scores) / len(scores)
    got = {subtask: accuracy for _, subtask, accuracy in rows}
    for category, expected in by_subtask.items():
        assert got[category] == pytest.approx(expected)
    assert got[S.OVERALL] == pytest.approx(sum(by_subtask.values()) / len(by_subtask))
    assert Path(tmp_path / "eval" / "lmms_eval.log").is_file()
