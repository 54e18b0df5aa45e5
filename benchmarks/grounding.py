"""Can the tiny demo model learn to see? Train it on a uniform sample of a demo-world variant, score it.

    python benchmarks/grounding.py                                    # the demo world as shipped
    python benchmarks/grounding.py --samples 3000 --image-rows 2400 --videos 800 \\
        --one-object-images --video-radius 16,22 --bench-questions 250

A research aid for the demo world, not a speed figure. Each run:

1. renders a demo pool (`gdo_core.demo_world.make_demo_pool`) with the variant's settings:
   `--one-object-images` keeps one shape per image scene, `--video-radius LO,HI` sets the radius
   range of video objects (the shipped demo: `demo_scenes.VIDEO_RADIUS`);
2. draws `--samples` QAs uniformly (seeded), or with `--colour-share S` that share of colour
   questions (of a shape or of the background) and the rest uniformly from the others;
3. trains the tiny model (`gdo_core.tiny_model`, random weights) on them with `swift sft` under
   the demo recipe (`gdo_core/recipes/demo.yaml`; `--lr` overrides its learning rate) through
   `gdo_core.training.train_arm`, as the demo's Uni-10x arm is trained;
4. scores the last checkpoint with lmms-eval on a demo benchmark rendered with the same video
   radius (`--bench-questions`, a fifth per subtask) and prints per-subtask accuracy beside chance,
   with a one-sided exact binomial p-value of each subtask's score against chance.

Results go to <workdir>/<name>/result.json. One run takes 4-8 min on this 2-core machine (training
is single-threaded, so two runs side by side take about as long as one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from gdo_core import demo_scenes, demo_world
from gdo_core.convergence import accuracy_p_value
from gdo_core.demo_benchmark import benchmark_baselines, make_demo_benchmark
from gdo_core.evaluation import EvalLaunch, read_results, score_checkpoints
from gdo_core.pool_read import read_pool
from gdo_core.tiny_model import build_tiny_model
from gdo_core.training import Launch, load_recipe, train_arm

REPO = Path(__file__).resolve().parents[1]

COLOUR_QUESTION = r"^(What colour|What is the colour|What is the background colour)"


def _variant(one_object_images: bool, video_radius: tuple[int, int] | None) -> None:
    """Apply the world variant to the demo modules (this process only)."""
    if one_object_images:
        original = demo_scenes.image_scene

        def one_object(rng: np.random.Generator):
            size, background, objs = original(rng)
            return size, background, objs[:1]

        demo_world.image_scene = one_object
    if video_radius is not None:
        demo_scenes.VIDEO_RADIUS = video_radius


def _draw(questions: list[str], samples: int, colour_share: float | None, seed: int) -> np.ndarray:
    """Row indices: uniform, or colour_share of colour questions and the rest from the others."""
    rng = np.random.default_rng(seed)
    n = len(questions)
    if colour_share is None:
        return rng.choice(n, size=min(samples, n), replace=False)
    is_colour = np.array([bool(re.match(COLOUR_QUESTION, q)) for q in questions])
    colour, other = np.flatnonzero(is_colour), np.flatnonzero(~is_colour)
    n_colour = round(colour_share * samples)
    if n_colour > len(colour) or samples - n_colour > len(other):
        raise SystemExit(f"the pool holds {len(colour)} colour and {len(other)} other QAs: too few")
    rows = np.concatenate(
        [rng.choice(colour, n_colour, replace=False), rng.choice(other, samples - n_colour, replace=False)]
    )
    rng.shuffle(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="shipped")
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "grounding")
    ap.add_argument("--image-rows", type=int, default=480)
    ap.add_argument("--videos", type=int, default=170)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None, help="default: the demo recipe's")
    ap.add_argument("--colour-share", type=float, default=None)
    ap.add_argument("--one-object-images", action="store_true")
    ap.add_argument("--video-radius", default=None, help="LO,HI (upper bound exclusive)")
    ap.add_argument("--bench-questions", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    radius = tuple(int(x) for x in args.video_radius.split(",")) if args.video_radius else None
    _variant(args.one_object_images, radius)  # type: ignore[arg-type]

    root = args.workdir / args.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = args.workdir / "tiny-model"
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    radius_now = demo_scenes.VIDEO_RADIUS
    bench = args.workdir / f"bench-r{radius_now[0]}-{radius_now[1]}-q{args.bench_questions}"
    if not (bench / "data").is_dir():
        make_demo_benchmark(bench, n_questions=args.bench_questions)

    pool = demo_world.make_demo_pool(root / "pool", n_image_rows=args.image_rows, n_videos=args.videos)
    qa = read_pool(
        pool.onevision, pool.video, target_frames=8, media_root=pool.root, video_frame_dir=root / "frames"
    ).qa
    rows = _draw(qa["question"].to_list(), args.samples, args.colour_share, args.seed)
    sft = root / "train.jsonl"
    with sft.open("w") as fh:
        for i in rows:
            r = qa.row(int(i), named=True)
            frames = [str((pool.root / f).resolve()) for f in r["frames"]]
            user = "<image>" * len(frames) + "\n" + r["question"]
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": r["answer"]}]
            fh.write(json.dumps({"messages": messages, "images": frames}) + "\n")
    n_colour = sum(bool(re.match(COLOUR_QUESTION, qa["question"][int(i)])) for i in rows)

    recipe = load_recipe("demo")
    if args.lr is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, learning_rate=args.lr))
    started = time.perf_counter()
    trained = train_arm(recipe, model_dir=model, dataset=sft, run_dir=root / "run", launch=Launch())
    train_s = time.perf_counter() - started
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(
        yaml.safe_dump(
            {"name": "grounding", "train": dataclasses.asdict(recipe.train), "eval": dataclasses.asdict(recipe.eval)}
        )
    )
    last = trained.checkpoints[-1][1]
    found = score_checkpoints(recipe_file, [last], root / "scores", EvalLaunch(), include_path=bench)
    scores = {sub: acc for _, sub, acc in read_results(found[last.name], ["gdo_demo"])}
    baselines = benchmark_baselines(bench)
    chance = {k: v["chance"] for k, v in baselines.items()}
    # One-sided exact binomial p-value of each subtask's score against a uniform guess.
    p_values = {
        sub: accuracy_p_value(acc, int(baselines[sub]["questions"]), chance[sub])
        for sub, acc in scores.items()
        if sub in baselines and sub != "overall"
    }
    losses = trained.losses.drop_nulls("eval_loss") if "eval_loss" in trained.losses.columns else None
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pool_qas": qa.height,
        "train_rows": len(rows),
        "train_colour_rows": int(n_colour),
        "train_s": round(train_s, 1),
        "held_out_loss": losses["eval_loss"].to_list() if losses is not None else None,
        "accuracy": scores,
        "chance": chance,
        "questions": {k: v["questions"] for k, v in baselines.items()},
        "p_value": p_values,
    }
    (root / "result.json").write_text(json.dumps(result, indent=2))
    print(f"{args.name}: {len(rows)} rows ({n_colour} colour), pool {qa.height} QAs, trained in {train_s:.0f} s")
    for sub, acc in scores.items():
        p = f", p = {p_values[sub]:.2g}" if sub in p_values else ""
        print(f"  {sub:12s} {acc:5.1f}%  (chance {chance.get(sub, float('nan')):.1f}%{p})")


if __name__ == "__main__":
    main()
