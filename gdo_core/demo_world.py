"""Demo world pool files: image and video QA rows (scenes from gdo_core.demo_scenes, questions from
gdo_core.demo_questions) in both row layouts, the deliberately broken lines, and `make_demo_pool`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gdo_core.demo_questions import QA, image_question, video_questions
from gdo_core.demo_scenes import (
    N_MP4_VIDEOS,
    image_scene,
    make_clip,
    pick,
    render_clip,
    render_frame,
    write_jpeg,
    write_mp4,
    write_png,
)
from gdo_core.strata import is_temporal_question

ONEVISION_FILE = "onevision.jsonl"
VIDEO_FILE = "video.jsonl"

IMAGE_SOURCES: tuple[str, ...] = (
    "CLEVR-Math(MathV360K)",
    "ai2d(cauldron,llava_format)",
    "sharegpt4v(coco)",
    "ureader_cap",
)
VIDEO_SOURCES: tuple[str, ...] = (
    "0_30_s_academic_v0_1",
    "30_60_s_youtube_v0_1",
    "0_30_s_nextqa",
    "0_30_s_perceptiontest",
)

# Labels of the deliberately broken lines; the pool parser must reject each of them.
BROKEN_KINDS: tuple[str, ...] = (
    "invalid_json",
    "json_array",
    "images_not_list",
    "no_messages",
    "empty_answer",
)

# Temporal questions are rare in real pools: each clip keeps a temporal one with this probability.
TEMPORAL_KEEP = 0.35


@dataclass(frozen=True)
class DemoPool:
    """Where the demo pool lives and what it holds (valid rows exclude the broken lines)."""

    root: Path
    onevision: Path
    video: Path
    n_image_rows: int
    n_image_qas: int
    n_video_rows: int
    n_video_qas: int
    n_videos: int
    n_mp4_videos: int
    # File name -> 1-based line numbers of the broken lines, and line -> BROKEN_KINDS label.
    broken_lines: dict[str, tuple[int, ...]] = field(default_factory=dict)
    broken_kinds: dict[str, dict[int, str]] = field(default_factory=dict)


# ---------------------------------------------------------------- rows and lines


def _user(text: str, layout: str) -> dict[str, str]:
    """A user message in the row's layout."""
    return (
        {"role": "user", "content": text}
        if layout == "messages"
        else {"from": "human", "value": text}
    )


def _assistant(text: str, layout: str) -> dict[str, str]:
    """An assistant message in the row's layout."""
    if layout == "messages":
        return {"role": "assistant", "content": text}
    return {"from": "gpt", "value": text}


def _turns(qas: Sequence[QA], media_token: str, layout: str) -> list[dict[str, str]]:
    """Alternating turns; only the first user text carries the media token, as in real dumps."""
    turns: list[dict[str, str]] = []
    for k, qa in enumerate(qas):
        turns.append(_user(f"{media_token}\n{qa.question}" if k == 0 else qa.question, layout))
        turns.append(_assistant(qa.answer, layout))
    return turns


def dumps(row: Any) -> str:
    """One JSONL line; key order is insertion order, so bytes are stable."""
    return json.dumps(row, ensure_ascii=False)


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write JSONL with '\\n' endings regardless of platform."""
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def _insert_broken(
    rng: np.random.Generator, lines: list[str], broken: Sequence[tuple[str, str]]
) -> tuple[list[str], dict[int, str]]:
    """Insert broken lines at seeded positions; returns all lines and {1-based line: kind}."""
    total = len(lines) + len(broken)
    positions = sorted(int(p) for p in rng.choice(total, size=len(broken), replace=False))
    out: list[str] = []
    kinds: dict[int, str] = {}
    valid = iter(lines)
    pending = iter(broken)
    for i in range(total):
        if i in positions:
            kind, text = next(pending)
            kinds[i + 1] = kind
            out.append(text)
        else:
            out.append(next(valid))
    return out, kinds


# ---------------------------------------------------------------- image pool

# Question kinds per source: what each public source mostly contains.
# A kind listed twice is asked twice as often. The background question is common so that the tiny
# model sees it often enough to learn it (gdo_core.demo_questions.VIDEO_BACKGROUND_SHARE).
_IMAGE_KINDS: dict[str, tuple[str, ...]] = {
    "CLEVR-Math(MathV360K)": ("subtract", "count", "count", "colour", "background", "background"),
    "ai2d(cauldron,llava_format)": ("shape", "colour", "position", "count", "background", "background"),
    "sharegpt4v(coco)": ("detailed", "where", "colour", "shape", "background", "background"),
    "ureader_cap": ("caption", "where", "colour", "background", "background"),
}
_IMAGE_MCQ_SHARE: dict[str, float] = {
    "CLEVR-Math(MathV360K)": 0.2,
    "ai2d(cauldron,llava_format)": 0.9,
    "sharegpt4v(coco)": 0.1,
    "ureader_cap": 0.0,
}


def _image_rows(rng: np.random.Generator, root: Path, n_rows: int) -> tuple[list[str], int, str]:
    """Render n_rows image QA rows; returns the JSONL lines, QA count and one valid image path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    n_qas = 0
    first_image = ""
    for i in range(1, n_rows + 1):
        size, background, objs = image_scene(rng)
        rel = f"images/{i:06d}.png"
        write_png(root / rel, render_frame(size, background, objs, 0))
        first_image = first_image or rel
        source = str(pick(rng, IMAGE_SOURCES))
        n_turns = int(pick(rng, (1, 1, 1, 1, 2, 2, 3)))
        kinds = _IMAGE_KINDS[source]
        qas: list[QA] = []
        for kind in [kinds[j] for j in rng.permutation(len(kinds))]:
            qa = image_question(rng, kind, size, background, objs, _IMAGE_MCQ_SHARE[source])
            if qa is not None and all(qa.question != prev.question for prev in qas):
                qas.append(qa)
            if len(qas) == n_turns:
                break
        if not qas:
            # Every scene supports a count question, so no row is left without a pair.
            count_qa = image_question(rng, "count", size, background, objs, 0.0)
            assert count_qa is not None
            qas.append(count_qa)
        layout = "conversations" if rng.random() < 0.15 else "messages"
        row: dict[str, Any] = {"id": f"ov_{i:06d}"}
        if rng.random() < 0.15:
            row["image"] = rel
        else:
            row["images"] = [rel]
        row[layout] = _turns(qas, "<image>", layout)
        row["data_source"] = source
        lines.append(dumps(row))
        n_qas += len(qas)
    return lines, n_qas, first_image


def _broken_image_lines(image: str) -> list[tuple[str, str]]:
    """One line of each broken kind for the image file."""
    pair = [
        {"role": "user", "content": "<image>\nWhat colour is the circle?"},
        {"role": "assistant", "content": "red"},
    ]
    return [
        (
            "invalid_json",
            '{"id": "ov_broken_json", "images": ["' + image + '"], "messages": [{"role": "user"',
        ),
        ("json_array", dumps([{"id": "ov_broken_array", "images": [image], "messages": pair}])),
        (
            "images_not_list",
            dumps(
                {
                    "id": "ov_broken_images",
                    "images": 7,
                    "messages": pair,
                    "data_source": "ureader_cap",
                }
            ),
        ),
        (
            "no_messages",
            dumps({"id": "ov_broken_nomsg", "images": [image], "data_source": "ureader_cap"}),
        ),
        (
            "empty_answer",
            dumps(
                {
                    "id": "ov_broken_empty",
                    "images": [image],
                    "messages": [pair[0], {"role": "assistant", "content": "  "}],
                    "data_source": "ai2d(cauldron,llava_format)",
                }
            ),
        ),
    ]


# ---------------------------------------------------------------- video pool

_VIDEO_KINDS: tuple[str, ...] = ("move", "move", "move", "still", "appear", "bursts", "sequence")


def _video_rows(
    rng: np.random.Generator, root: Path, n_videos: int
) -> tuple[list[str], int, int, list[str]]:
    """Render clips and their QA rows; returns lines, row count, QA count and one frame list."""
    lines: list[str] = []
    n_qas = 0
    first_frames: list[str] = []
    n_mp4 = min(N_MP4_VIDEOS, n_videos)
    for v in range(1, n_videos + 1):
        clip = make_clip(rng, str(pick(rng, _VIDEO_KINDS)))
        frames = render_clip(clip)
        video_id = f"v{v:04d}"
        as_mp4 = v > n_videos - n_mp4
        media: dict[str, Any]
        if as_mp4:
            (root / "videos").mkdir(parents=True, exist_ok=True)
            rel = f"videos/{video_id}.mp4"
            write_mp4(root / rel, frames)
            media = {"video": rel}
        else:
            folder = root / "frames" / video_id
            folder.mkdir(parents=True, exist_ok=True)
            rels = [f"frames/{video_id}/{t:04d}.jpg" for t in range(clip.n_frames)]
            for rel, frame in zip(rels, frames, strict=True):
                write_jpeg(root / rel, frame)
            media = {"images": rels}
            first_frames = first_frames or rels
        source = str(pick(rng, VIDEO_SOURCES))
        mcq_share = 0.7 if source.endswith(("nextqa", "perceptiontest")) else 0.35
        pool = video_questions(rng, clip, mcq_share)
        rare = [qa for qa in pool if not is_temporal_question(qa.question) or rng.random() < TEMPORAL_KEEP]
        pool = rare or pool
        n_q = int(min(len(pool), rng.integers(2, 6)))
        qas = [pool[i] for i in sorted(rng.permutation(len(pool))[:n_q])]
        layout = "conversations" if rng.random() < 0.15 else "messages"
        # Real LLaVA-Video dumps hold both shapes: one multi-turn row per video, or one row per QA.
        groups = [qas] if rng.random() < 0.4 else [[qa] for qa in qas]
        for g, group in enumerate(groups):
            row: dict[str, Any] = {"id": f"vv_{video_id}_{g}", "video_id": video_id, **media}
            row[layout] = _turns(group, "<video>", layout)
            row["data_source"] = source
            lines.append(dumps(row))
        n_qas += len(qas)
    return lines, len(lines), n_qas, first_frames


def _broken_video_lines(frames: list[str]) -> list[tuple[str, str]]:
    """One line of each broken kind for the video file."""
    pair = [
        {"role": "user", "content": "<video>\nIn which direction does the red circle move?"},
        {"role": "assistant", "content": "left"},
    ]
    src = "0_30_s_academic_v0_1"
    return [
        (
            "invalid_json",
            '{"id": "vv_broken_json", "video_id": "vb1", "images": ["' + frames[0] + '", ',
        ),
        (
            "json_array",
            dumps(
                [{"id": "vv_broken_array", "video_id": "vb2", "images": frames, "messages": pair}]
            ),
        ),
        (
            "images_not_list",
            dumps(
                {
                    "id": "vv_broken_images",
                    "video_id": "vb3",
                    "images": 12,
                    "messages": pair,
                    "data_source": src,
                }
            ),
        ),
        (
            "no_messages",
            dumps(
                {"id": "vv_broken_nomsg", "video_id": "vb4", "images": frames, "data_source": src}
            ),
        ),
        (
            "empty_answer",
            dumps(
                {
                    "id": "vv_broken_empty",
                    "video_id": "vb5",
                    "images": frames,
                    "messages": [pair[0], {"role": "assistant", "content": ""}],
                    "data_source": src,
                }
            ),
        ),
    ]


# ---------------------------------------------------------------- the pool


def make_demo_pool(
    out_dir: Path, seed: int = 0, n_image_rows: int = 160, n_videos: int = 48
) -> DemoPool:
    """Render the demo image and video pools (with a few broken lines each) under out_dir."""
    root = Path(out_dir)
    for sub in ("images", "frames", "videos"):
        # Stale media from an earlier, larger generation would otherwise linger.
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    # Independent streams, so changing the video count leaves the image pool unchanged.
    image_rng, video_rng, broken_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    image_lines, n_image_qas, first_image = _image_rows(image_rng, root, n_image_rows)
    video_lines, n_video_rows, n_video_qas, first_frames = _video_rows(video_rng, root, n_videos)
    if not first_frames:
        first_frames = ["frames/missing/0000.jpg"]
    first_image = first_image or "images/missing.png"

    ov_all, ov_kinds = _insert_broken(broken_rng, image_lines, _broken_image_lines(first_image))
    vv_all, vv_kinds = _insert_broken(broken_rng, video_lines, _broken_video_lines(first_frames))
    onevision, video = root / ONEVISION_FILE, root / VIDEO_FILE
    write_lines(onevision, ov_all)
    write_lines(video, vv_all)
    return DemoPool(
        root=root,
        onevision=onevision,
        video=video,
        n_image_rows=n_image_rows,
        n_image_qas=n_image_qas,
        n_video_rows=n_video_rows,
        n_video_qas=n_video_qas,
        n_videos=n_videos,
        n_mp4_videos=min(N_MP4_VIDEOS, n_videos),
        broken_lines={ONEVISION_FILE: tuple(sorted(ov_kinds)), VIDEO_FILE: tuple(sorted(vv_kinds))},
        broken_kinds={ONEVISION_FILE: ov_kinds, VIDEO_FILE: vv_kinds},
    )
