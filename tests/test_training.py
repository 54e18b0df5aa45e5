"""Recipe -> `swift sft` argv: cadence arithmetic, devices, multi-node and DeepSpeed flags, log parsing."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gdo_core import training as T


def _args(argv: list[str]) -> dict[str, str]:
    """`--key value` pairs of an argv after `swift sft`."""
    assert argv[:2] == ["swift", "sft"]
    pairs = argv[2:]
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def test_packaged_recipes_differ_only_in_learning_rate_and_max_length():
    paper, demo = T.load_recipe("paper"), T.load_recipe("demo")
    assert paper.train.learning_rate == 2e-5 and paper.train.max_length == 8192
    assert demo.train.learning_rate == 1e-3 and demo.train.max_length == 2048
    same = replace(demo.train, learning_rate=paper.train.learning_rate, max_length=paper.train.max_length)
    assert same == paper.train
    # the paper's settings (docs/method.md, Training recipe), written down from the paper
    t = paper.train
    assert (t.warmup_ratio, t.weight_decay, t.max_grad_norm) == (0.1, 0.01, 1.0)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.nproc_per_node) == (1, 1, 8)
    assert (t.deepspeed, t.data_seed, t.split_dataset_ratio, t.max_pixels) == ("zero2", 42, 0.001, 50176)
    assert paper.eval.tasks == ("mvbench", "videomme", "mlvu_test", "lvbench")
    assert (paper.eval.max_num_frames, paper.eval.max_pixels, paper.eval.fps) == (32, 602112, 1)


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("train:\n  learning_rat: 1\n")
    with pytest.raises(ValueError, match=r"r\.yaml \[train\]: unknown keys \['learning_rat'\]"):
        T.load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="packaged recipes"):
        T.load_recipe("no_such_recipe")


@pytest.mark.parametrize(
    ("n_rows", "ratio", "expected"),
    [(100, 0.001, 1), (1000, 0.001, 1), (5000, 0.001, 5), (40, 0.1, 4), (100, 0.0, 0)],
)
def test_held_out_rows(n_rows, ratio, expected):
    # max(int(n * ratio), 1): 100 * 0.001 = 0.1 -> 0 -> 1; 5000 * 0.001 = 5
    assert T.held_out_rows(n_rows, ratio) == expected


def test_epoch_steps_and_cadence_on_cpu():
    recipe = T.load_recipe("demo").train
    cpu = T.Launch()
    # 100 rows, 1 held out, 1 process, batch 1, accumulation 1: 99 steps; cadence floor(99 / 5) = 19
    assert T.epoch_steps(100, recipe, cpu) == 99
    assert T.save_steps(99, 5) == 19
    assert T.checkpoint_steps(99, 19) == [19, 38, 57, 76, 95, 99]
    # a run of 4 steps still saves every step (cadence at least 1)
    assert T.save_steps(4, 5) == 1
    assert T.checkpoint_steps(4, 1) == [1, 2, 3, 4]
    assert T.checkpoint_steps(10, 2) == [2, 4, 6, 8, 10]


def test_epoch_steps_with_processes_and_accumulation():
    recipe = replace(T.load_recipe("paper").train, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    four_gpus = T.Launch(gpus=(4, 5, 6, 7))
    # 10,000 rows: 10 held out, 9,990 train; 4 processes -> floor(9990 / 4) = 2497 per rank;
    # ceil(2497 / 2) = 1249 batches; ceil(1249 / 2) = 625 steps; global batch 2 * 2 * 4 = 16
    assert T.held_out_rows(10_000, 0.001) == 10
    assert T.epoch_steps(10_000, recipe, four_gpus) == 625
    assert T.global_batch(recipe, four_gpus) == 16
    assert T.save_steps(625, 5) == 125


def test_cpu_command_is_float32_single_process_without_deepspeed(tmp_path):
    recipe = T.load_recipe("demo").train
    argv, env = T.sft_command(
        recipe, model_dir=tmp_path / "m", dataset=tmp_path / "d.jsonl", output_dir=tmp_path / "out",
        n_rows=100, launch=T.Launch(),
    )
    args = _args(argv)
    assert args["--torch_dtype"] == "float32" and args["--bf16"] == "false" and args["--fp16"] == "false"
    assert args["--tuner_type"] == "full" and args["--model_type"] == "qwen3_vl"
    assert args["--check_model"] == "false" and args["--add_version"] == "false"
    assert args["--freeze_vit"] == "false" and args["--freeze_aligner"] == "false"
    assert args["--gradient_accumulation_steps"] == "1" and args["--save_only_model"] == "true"
    assert args["--save_steps"] == args["--eval_steps"] == "19"
    assert args["--learning_rate"] == "0.001" and args["--max_length"] == "2048"
    assert args["--model"] == str((tmp_path / "m").resolve())
    assert "--deepspeed" not in args and args["--gradient_checkpointing"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "NPROC_PER_NODE" not in env and "NNODES" not in env


def test_gpu_command_uses_the_gpus_given_in_bfloat16_with_deepspeed(tmp_path):
    recipe = T.load_recipe("paper").train
    argv, env = T.sft_command(
        recipe, model_dir=tmp_path, dataset=tmp_path / "d.jsonl", output_dir=tmp_path / "o",
        n_rows=8000, launch=T.Launch(gpus=(2, 3)),
    )
    args = _args(argv)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["NPROC_PER_NODE"] == "2"  # min(8 per node, 2 GPUs given)
    assert args["--torch_dtype"] == "bfloat16" and args["--bf16"] == "true"
    assert args["--deepspeed"] == "zero2" and args["--gradient_checkpointing"] == "true"
    # 8000 rows - 8 held out = 7992; / 2 processes = 3996 steps; cadence floor(3996 / 5) = 799
    assert args["--save_steps"] == "799"


def test_multi_node_command_sets_the_torchrun_environment(tmp_path):
    recipe = replace(T.load_recipe("paper").train, nnodes=2, extra_args=("--attn_impl", "flash_attn"))
    launch = T.Launch(gpus=tuple(range(8)), node_rank=1, master_addr="10.0.0.5", master_port=29600)
    argv, env = T.sft_command(
        recipe, model_dir=tmp_path, dataset=tmp_path / "d.jsonl", output_dir=tmp_path / "o",
        n_rows=16_016, launch=launch,
    )
    assert (env["NPROC_PER_NODE"], env["NNODES"], env["NODE_RANK"]) == ("8", "2", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29600")
    assert argv[-2:] == ["--attn_impl", "flash_attn"]
    # 16,016 rows - 16 held out = 16,000 over 16 processes: 1000 steps, cadence 200
    assert _args(argv[:-2])["--save_steps"] == "200"
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        T.sft_command(recipe, model_dir=tmp_path, dataset=tmp_path, output_dir=tmp_path, n_rows=10,
                      launch=T.Launch(gpus=(0,)))


def test_progress_lines_and_loss_log(tmp_path):
    # verbatim ms-swift 4.6 stdout lines
    line = ("{'loss': '11.71', 'grad_norm': '22.94', 'learning_rate': '0.0009981', 'token_acc': '0', "
            "'epoch': '0.02778', 'global_step/max_steps': '1/36', 'elapsed_time': '0s'}")
    assert T.parse_progress(line)["global_step/max_steps"] == "1/36"
    assert T.parse_progress("[INFO:swift] last_model_checkpoint: /x") is None
    assert T.parse_progress("{'not': 'progress'}") is None
    events = [
        {"loss": 9.77, "global_step/max_steps": "1/10"},
        {"eval_loss": 9.62, "global_step/max_steps": "5/10"},
        {"loss": 5.1, "global_step/max_steps": "10/10"},
        {"eval_loss": 6.1, "global_step/max_steps": "10/10"},
        {"train_runtime": 18.8, "train_loss": 8.4, "global_step/max_steps": "10/10"},
    ]
    (tmp_path / T.LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    losses = T.read_loss_log(tmp_path)
    assert losses.drop_nulls("eval_loss").select("step", "eval_loss").rows() == [(5, 9.62), (10, 6.1)]
    assert losses.drop_nulls("loss")["step"].to_list() == [1, 10]
    for step in (10, 5, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "last-checkpoint").symlink_to(tmp_path / "checkpoint-12")
    assert [s for s, _ in T.list_checkpoints(tmp_path)] == [5, 10, 12]


def test_sft_file_check_names_file_and_line(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    good = {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
            "images": [str(image)]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "images": [str(tmp_path / "gone.jpg")]}) + "\n")
    with pytest.raises(ValueError, match=r"sft\.jsonl:2: image .*gone\.jpg does not exist"):
        T.check_sft_file(path)
    path.write_text(json.dumps(good) + "\n\n")
    assert T.check_sft_file(path) == 1


def test_failed_command_carries_argv_and_tail(tmp_path):
    script = "import sys\nfor i in range(60): print('line', i)\nsys.exit(3)"
    with pytest.raises(T.CommandFailed) as info:
        T.run_streaming(["python3", "-c", script], {}, log_path=tmp_path / "log.txt")
    assert info.value.returncode == 3
    assert info.value.tail[-1] == "line 59" and len(info.value.tail) == T.LOG_TAIL_LINES
    assert "command: python3 -c" in str(info.value)
    assert Path(tmp_path / "log.txt").read_text().count("\n") == 60
