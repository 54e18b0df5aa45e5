"""A small, seeded demo world: rendered image/video QA pools and a local lmms-eval benchmark.

This module re-exports the names other code imports; the parts live in:

- `gdo_core.demo_scenes`: colours, backgrounds, shapes, directions and sizes; the drawn object and
  clip dataclasses; frame rendering and JPEG/PNG/MP4 writing; image scenes and video clip scripts.
- `gdo_core.demo_questions`: QA generation: MCQ and open forms, position words, image questions
  and captions, video questions.
- `gdo_core.demo_world`: the pool files: rows in both layouts, the deliberately broken lines,
  `DemoPool` and `make_demo_pool`.
- `gdo_core.demo_benchmark`: the lmms-eval task folder (`make_demo_benchmark`, its template YAML
  and utils.py), `benchmark_baselines` and the `BENCHMARK_*` constants.
"""

from __future__ import annotations

from gdo_core.demo_benchmark import (
    BENCHMARK_CATEGORIES,
    BENCHMARK_FRAMES,
    BENCHMARK_GROUP,
    OPEN_CATEGORIES,
    benchmark_baselines,
    make_demo_benchmark,
)
from gdo_core.demo_questions import NUMBER_WORDS
from gdo_core.demo_scenes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES
from gdo_core.demo_world import (
    BROKEN_KINDS,
    IMAGE_SOURCES,
    ONEVISION_FILE,
    VIDEO_FILE,
    VIDEO_SOURCES,
    DemoPool,
    make_demo_pool,
)

__all__ = [
    "BACKGROUNDS",
    "BENCHMARK_CATEGORIES",
    "BENCHMARK_FRAMES",
    "BENCHMARK_GROUP",
    "BROKEN_KINDS",
    "COLOURS",
    "DIRECTIONS",
    "IMAGE_SOURCES",
    "NUMBER_WORDS",
    "ONEVISION_FILE",
    "OPEN_CATEGORIES",
    "SHAPES",
    "VIDEO_FILE",
    "VIDEO_SOURCES",
    "DemoPool",
    "benchmark_baselines",
    "make_demo_benchmark",
    "make_demo_pool",
]
