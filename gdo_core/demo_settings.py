"""The demo's settings, in one place: world size, descriptor cost, the demo budget, recipe and benchmark."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSettings:
    """What `gdo demo` builds and runs; cheap enough for a 2-core CPU, large enough to compare arms."""

    seed: int = 0
    n_image_rows: int = 480  # about 760 image QAs
    n_videos: int = 170  # about 530 video QAs, temporal questions rare among them
    chunk_lines: int = 250  # pool lines per chunk partition
    target_frames: int = 8  # frames per video QA (the paper: 32)
    sc_samples: int = 0  # self-consistency off (the paper: 5 sampled answers); SC is then imputed (docs/method.md, Merge and the shared score)
    tnc_mode: str = "llm"  # temporal necessity asked of the model, as in the paper
    descriptor_batch: int = 16
    torch_threads: int = 1
    target_count: int = 100  # the demo budget: a fixed 1x count (the paper: auto); Uni-10x is 10x it
    recipe: str = "demo"  # gdo_core/recipes/demo.yaml
    benchmark_questions: int = 120  # 20 per subtask
    trained_profiles: tuple[str, ...] = ("temp_plus",)  # `gdo demo --all-profiles` trains all four


DEMO = DemoSettings()
