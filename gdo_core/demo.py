"""A small, seeded demo world: rendered image/video QA pools and a local lmms-eval benchmark."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gdo_core.pool import resample_indices
from gdo_core.strata import is_temporal_question

ONEVISION_FILE = "onevision.jsonl"
VIDEO_FILE = "video.jsonl"

IMAGE_SIZES: tuple[int, ...] = (64, 96)
VIDEO_SIZE = 64
# Object radii in video frames (px, upper bound exclusive): large enough that a 16 px patch of the
# tiny model's vision encoder is mostly one colour.
VIDEO_RADIUS = (8, 12)
VIDEO_FRAME_COUNTS: tuple[int, ...] = (8, 12, 16, 20, 24, 32, 40, 48)
N_MP4_VIDEOS = 4
MP4_FPS = 8.0
JPEG_QUALITY = 90

# BGR, because OpenCV draws in BGR.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 220),
    "green": (40, 170, 40),
    "blue": (220, 60, 30),
    "yellow": (30, 220, 230),
    "purple": (170, 40, 150),
    "orange": (20, 140, 255),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "grey": (170, 170, 170),
    "black": (25, 25, 25),
    "beige": (200, 225, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

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
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."

# Labels of the deliberately broken lines; the pool parser must reject each of them.
BROKEN_KINDS: tuple[str, ...] = (
    "invalid_json",
    "json_array",
    "images_not_list",
    "no_messages",
    "empty_answer",
)

BENCHMARK_GROUP = "gdo_demo"
# MCQ subtasks over short clips, and one open question (answer in a word): the colour of a shape,
# the kind of fact a tiny model can learn from pixels in one epoch of the demo pool.
BENCHMARK_CATEGORIES: tuple[str, ...] = ("direction", "order", "count", "colour", "colour_open")
OPEN_CATEGORIES: tuple[str, ...] = ("colour_open",)
# Frames per benchmark clip, sampled as the pool's video QAs are (the demo trains on 8).
BENCHMARK_FRAMES = 8
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


@dataclass
class _Obj:
    """One drawn shape; `path` holds its centre per frame (a single row for images)."""

    shape: str
    colour: str
    radius: int
    path: np.ndarray
    appear: int = 0

    @property
    def name(self) -> str:
        """The phrase a question uses for this object."""
        return f"{self.colour} {self.shape}"


@dataclass
class _QA:
    """One question/answer pair before it is placed into a row."""

    question: str
    answer: str


# ---------------------------------------------------------------- drawing


def _draw(img: np.ndarray, obj: _Obj, centre: np.ndarray) -> None:
    """Draw one filled shape at `centre` (x, y)."""
    colour = COLOURS[obj.colour]
    cx, cy = round(float(centre[0])), round(float(centre[1]))
    r = obj.radius
    if obj.shape == "circle":
        cv2.circle(img, (cx, cy), r, colour, -1, lineType=cv2.LINE_8)
    elif obj.shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1, lineType=cv2.LINE_8)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], dtype=np.int32)
        cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_8)


def _render_frame(size: int, background: str, objs: Sequence[_Obj], t: int) -> np.ndarray:
    """Frame t of a scene (t = 0 for a still image)."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[background]
    for obj in objs:
        if t >= obj.appear:
            _draw(img, obj, obj.path[min(t, len(obj.path) - 1)])
    return img


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    """Write a JPEG, failing loudly (cv2 returns False instead of raising)."""
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _write_png(path: Path, img: np.ndarray) -> None:
    """Write a PNG, failing loudly."""
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float = MP4_FPS) -> None:
    """Write frames as an MPEG-4 Part 2 .mp4 (a codec decord 0.6 reads)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot open a video writer for {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


# ---------------------------------------------------------------- small text helpers


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One item, chosen by the seeded generator."""
    return items[int(rng.integers(len(items)))]


def _mcq(
    rng: np.random.Generator, question: str, correct: str, pool: Sequence[str], n_options: int = 4
) -> tuple[str, str, str]:
    """MCQ text with options on new lines; returns (text, letter, correct option)."""
    distractors = [p for p in dict.fromkeys(pool) if p != correct]
    chosen = [distractors[i] for i in rng.permutation(len(distractors))[: n_options - 1]]
    options = [correct, *chosen]
    options = [options[i] for i in rng.permutation(len(options))]
    letter = "ABCDEF"[options.index(correct)]
    lines = "".join(f"\n{'ABCDEF'[i]}. {opt}" for i, opt in enumerate(options))
    return f"{question}{lines}\n{MCQ_SUFFIX}", letter, correct


def _as_form(
    rng: np.random.Generator,
    question: str,
    short: str,
    sentence: str,
    pool: Sequence[str],
    mcq_share: float,
) -> _QA:
    """The same fact as an MCQ (letter or letter+option answer) or an open question."""
    if rng.random() < mcq_share and len(set(pool)) >= 3:
        text, letter, correct = _mcq(rng, question, short, pool, n_options=min(4, len(set(pool))))
        answer = letter if rng.random() < 0.7 else f"{letter}. {correct}"
        return _QA(text, answer)
    return _QA(question, short if rng.random() < 0.5 else sentence)


def _column(x: float, size: int) -> str:
    """Horizontal position word for a centre x."""
    return "left" if x < size / 3 else ("right" if x >= 2 * size / 3 else "middle")


def _row(y: float, size: int) -> str:
    """Vertical position word for a centre y."""
    return "top" if y < size / 3 else ("bottom" if y >= 2 * size / 3 else "middle")


def _where(centre: np.ndarray, size: int) -> str:
    """A phrase like 'top left' or 'centre' for a centre point."""
    col, row = _column(float(centre[0]), size), _row(float(centre[1]), size)
    if col == row == "middle":
        return "centre"
    if row == "middle":
        return f"middle {col}"
    if col == "middle":
        return f"{row} middle"
    return f"{row} {col}"


def _plural(shape: str, n: int) -> str:
    """'circle' -> 'circles' when n != 1."""
    return shape if n == 1 else f"{shape}s"


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


def _turns(qas: Sequence[_QA], media_token: str, layout: str) -> list[dict[str, str]]:
    """Alternating turns; only the first user text carries the media token, as in real dumps."""
    turns: list[dict[str, str]] = []
    for k, qa in enumerate(qas):
        turns.append(_user(f"{media_token}\n{qa.question}" if k == 0 else qa.question, layout))
        turns.append(_assistant(qa.answer, layout))
    return turns


def _dumps(row: Any) -> str:
    """One JSONL line; key order is insertion order, so bytes are stable."""
    return json.dumps(row, ensure_ascii=False)


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


def _image_scene(rng: np.random.Generator) -> tuple[int, str, list[_Obj]]:
    """1-4 non-overlapping shapes on a 3x3 grid of a 64 or 96 px canvas."""
    size = int(_pick(rng, IMAGE_SIZES))
    background = str(_pick(rng, tuple(BACKGROUNDS)))
    n_objs = int(rng.integers(1, 5))
    cell = size // 3
    cells = rng.choice(9, size=n_objs, replace=False)
    objs: list[_Obj] = []
    for c in cells:
        cx = (int(c) % 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        cy = (int(c) // 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        radius = int(rng.integers(cell // 4 + 2, cell // 2 - 1))
        objs.append(
            _Obj(
                str(_pick(rng, SHAPES)),
                str(_pick(rng, tuple(COLOURS))),
                radius,
                np.array([[cx, cy]], float),
            )
        )
    return size, background, objs


def _unique(objs: Sequence[_Obj], key: Callable[[_Obj], str]) -> list[_Obj]:
    """Objects whose `key` value no other object shares (questions about them are unambiguous)."""
    values = [key(o) for o in objs]
    return [o for o in objs if values.count(key(o)) == 1]


def _image_question(
    rng: np.random.Generator,
    kind: str,
    size: int,
    background: str,
    objs: Sequence[_Obj],
    mcq_share: float,
) -> _QA | None:
    """One static question of `kind` about the scene, or None when the scene cannot support it."""
    if kind == "colour":
        cands = _unique(objs, lambda o: o.shape)
        if not cands:
            return None
        o = _pick(rng, cands)
        q = _pick(
            rng,
            (
                f"What colour is the {o.shape}?",
                f"What is the colour of the {o.shape} in the image?",
            ),
        )
        return _as_form(
            rng, q, o.colour, f"The {o.shape} is {o.colour}.", tuple(COLOURS), mcq_share
        )
    if kind == "shape":
        cands = _unique(objs, lambda o: o.colour)
        if not cands:
            return None
        o = _pick(rng, cands)
        q = _pick(
            rng, (f"What shape is the {o.colour} object?", f"Which shape is drawn in {o.colour}?")
        )
        return _as_form(
            rng, q, o.shape, f"The {o.colour} object is a {o.shape}.", SHAPES, mcq_share
        )
    if kind == "count":
        shape = str(_pick(rng, SHAPES))
        n = sum(o.shape == shape for o in objs)
        q = f"How many {shape}s are there in the image?"
        sentence = (
            f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {_plural(shape, n)} in the image."
        )
        return _as_form(rng, q, str(n), sentence, tuple(str(i) for i in range(6)), mcq_share)
    if kind == "subtract":
        colour = str(_pick(rng, tuple(COLOURS)))
        left = sum(o.colour != colour for o in objs)
        q = f"Subtract all {colour} objects. How many objects are left?"
        return _QA(q, str(left))
    if kind == "position":
        cands = _unique(objs, lambda o: o.name)
        if not cands:
            return None
        o = _pick(rng, cands)
        col = _column(float(o.path[0, 0]), size)
        q = f"Is the {o.name} on the left, in the middle or on the right of the image?"
        return _as_form(
            rng,
            q,
            col,
            f"The {o.name} is on the {col} side of the image."
            if col != "middle"
            else f"The {o.name} is in the middle of the image.",
            ("left", "middle", "right"),
            mcq_share,
        )
    if kind == "where":
        cands = _unique(objs, lambda o: o.name)
        if not cands:
            return None
        o = _pick(rng, cands)
        spot = _where(o.path[0], size)
        return _QA(f"Where is the {o.name} located?", f"It is in the {spot} of the image.")
    if kind == "caption":
        return _QA(
            _pick(rng, ("Describe the image briefly.", "What does this picture show?")),
            _caption(size, background, objs, detailed=False),
        )
    if kind == "detailed":
        q = _pick(
            rng,
            (
                "Write a detailed description of the picture.",
                "Describe every object in the image, its colour and where it is.",
            ),
        )
        return _QA(q, _caption(size, background, objs, detailed=True))
    raise ValueError(f"unknown image question kind {kind!r}")


def _caption(size: int, background: str, objs: Sequence[_Obj], detailed: bool) -> str:
    """A short or detailed description of a still scene."""
    n = len(objs)
    parts = [f"a {o.name} in the {_where(o.path[0], size)}" for o in objs]
    listing = parts[0] if n == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    count = f"{NUMBER_WORDS[n]} {_plural('shape', n)}"
    text = f"The image shows {count} on a {background} background: {listing}."
    if not detailed:
        return text
    big = max(objs, key=lambda o: o.radius)
    extra = [
        f"The largest shape is the {big.name}.",
        "The shapes are flat and do not overlap, and there is no text in the picture.",
        f"The picture is a small square drawing of {size} by {size} pixels, plain background.",
    ]
    for o in objs:
        extra.append(f"The {o.shape} is filled with {o.colour} and has sharp, simple edges.")
    return " ".join([text, *extra])


# Question kinds per source: what each public source mostly contains.
_IMAGE_KINDS: dict[str, tuple[str, ...]] = {
    "CLEVR-Math(MathV360K)": ("subtract", "count", "count", "colour"),
    "ai2d(cauldron,llava_format)": ("shape", "colour", "position", "count"),
    "sharegpt4v(coco)": ("detailed", "where", "colour", "shape"),
    "ureader_cap": ("caption", "where", "colour"),
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
        size, background, objs = _image_scene(rng)
        rel = f"images/{i:06d}.png"
        _write_png(root / rel, _render_frame(size, background, objs, 0))
        first_image = first_image or rel
        source = str(_pick(rng, IMAGE_SOURCES))
        n_turns = int(_pick(rng, (1, 1, 1, 1, 2, 2, 3)))
        kinds = _IMAGE_KINDS[source]
        qas: list[_QA] = []
        for kind in [kinds[j] for j in rng.permutation(len(kinds))]:
            qa = _image_question(rng, kind, size, background, objs, _IMAGE_MCQ_SHARE[source])
            if qa is not None and all(qa.question != prev.question for prev in qas):
                qas.append(qa)
            if len(qas) == n_turns:
                break
        if not qas:
            # Every scene supports a count question, so no row is left without a pair.
            count_qa = _image_question(rng, "count", size, background, objs, 0.0)
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
        lines.append(_dumps(row))
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
        ("json_array", _dumps([{"id": "ov_broken_array", "images": [image], "messages": pair}])),
        (
            "images_not_list",
            _dumps(
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
            _dumps({"id": "ov_broken_nomsg", "images": [image], "data_source": "ureader_cap"}),
        ),
        (
            "empty_answer",
            _dumps(
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


@dataclass
class _Clip:
    """A rendered clip's script: objects with per-frame paths and the facts its QAs ask about."""

    kind: str
    n_frames: int
    background: str
    objs: list[_Obj]
    facts: dict[str, Any]


def _free_spot(
    rng: np.random.Generator, size: int, radius: int, taken: list[np.ndarray]
) -> np.ndarray:
    """A centre at least 2.2 radii from every taken centre (best effort after 50 tries)."""
    best = np.array([size / 2, size / 2])
    for _ in range(50):
        cand = rng.integers(radius + 2, size - radius - 2, size=2).astype(float)
        if all(np.linalg.norm(cand - t) > 2.2 * radius + 2 for t in taken):
            return cand
        best = cand
    return best


def _linear_path(
    start: np.ndarray, direction: str, speed: float, moving: Sequence[bool]
) -> np.ndarray:
    """Positions per frame: advance by `speed` px along `direction` on frames where moving[t]."""
    step = np.array(DIRECTIONS[direction], dtype=float) * speed
    path = np.empty((len(moving), 2))
    pos = start.astype(float).copy()
    for t, m in enumerate(moving):
        if t > 0 and m:
            pos = pos + step
        path[t] = pos
    return path


def _start_for(
    size: int, radius: int, direction: str, travel: float, rng: np.random.Generator
) -> np.ndarray:
    """A start point from which `travel` px along `direction` stays inside the canvas."""
    lo, hi = radius + 2, size - radius - 2
    dx, dy = DIRECTIONS[direction]
    room = max(0, int(hi - lo - travel))
    offset = float(rng.integers(0, room + 1))
    along = lo + offset if (dx + dy) > 0 else hi - offset
    other = float(rng.integers(lo, hi))
    return np.array([along, other]) if dx != 0 else np.array([other, along])


def _make_clip(rng: np.random.Generator, kind: str) -> _Clip:
    """Script one clip of the given kind: move, still, appear, bursts or sequence."""
    size = VIDEO_SIZE
    background = str(_pick(rng, ("white", "grey", "black", "beige")))
    frame_choices = {
        "move": VIDEO_FRAME_COUNTS,
        "still": VIDEO_FRAME_COUNTS,
        "appear": (12, 16, 20, 24, 32, 40, 48),
        "bursts": (24, 32, 40, 48),
        "sequence": (16, 20, 24, 32, 40, 48),
    }[kind]
    n = int(_pick(rng, frame_choices))
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    n_objs = {
        "move": int(rng.integers(1, 4)),
        "still": int(rng.integers(1, 4)),
        "appear": int(rng.integers(2, 4)),
        "bursts": int(rng.integers(1, 3)),
        "sequence": 2,
    }[kind]
    shapes = [str(_pick(rng, SHAPES)) for _ in range(n_objs)]
    radii = [int(rng.integers(VIDEO_RADIUS[0], VIDEO_RADIUS[1])) for _ in range(n_objs)]
    objs: list[_Obj] = []
    facts: dict[str, Any] = {}
    still = [False] * n
    taken: list[np.ndarray] = []
    if kind in ("move", "bursts"):
        direction = str(_pick(rng, tuple(DIRECTIONS)))
        if kind == "move":
            moving = [True] * n
            facts["moves"] = 1
        else:
            times = int(rng.integers(1, 4))
            # Bursts of `run` moving frames separated by pauses of `gap` still frames.
            run, gap = 4, max(3, (n - 4 * times) // (times + 1))
            moving = [False] * n
            t = gap
            for _ in range(times):
                for k in range(t, min(n, t + run)):
                    moving[k] = True
                t += run + gap
            facts["moves"] = times
        travel_frames = max(1, sum(moving[1:]))
        max_speed = (size - 2 * radii[0] - 6) / travel_frames
        speed = float(min(_pick(rng, (1.0, 1.5, 2.0, 3.0, 4.0)), max_speed))
        start = _start_for(size, radii[0], direction, speed * travel_frames, rng)
        objs.append(
            _Obj(shapes[0], colours[0], radii[0], _linear_path(start, direction, speed, moving))
        )
        facts.update(direction=direction, speed=speed, mover=objs[0])
        taken.extend([objs[0].path[0], objs[0].path[-1]])
        for j in range(1, n_objs):
            spot = _free_spot(rng, size, radii[j], taken)
            taken.append(spot)
            objs.append(
                _Obj(shapes[j], colours[j], radii[j], _linear_path(spot, "left", 0.0, still))
            )
    elif kind in ("still", "appear"):
        # Distinct appearance frames in the first two thirds; the first object is there from frame 0.
        appear_at = [0] * n_objs
        if kind == "appear":
            later = rng.choice(np.arange(1, n * 2 // 3), size=n_objs - 1, replace=False)
            appear_at = [0, *sorted(int(a) for a in later)]
        for j in range(n_objs):
            spot = _free_spot(rng, size, radii[j], taken)
            taken.append(spot)
            appear = appear_at[j]
            objs.append(
                _Obj(
                    shapes[j], colours[j], radii[j], _linear_path(spot, "left", 0.0, still), appear
                )
            )
        if kind == "appear":
            # Appearance order is shuffled against drawing order: "first" is not always index 0.
            order = [objs[j] for j in rng.permutation(n_objs)]
            times = sorted({o.appear for o in objs})
            for o, a in zip(order, times, strict=True):
                o.appear = a
            objs.sort(key=lambda o: o.appear)
            facts["order"] = list(objs)
    else:  # sequence: A moves during the first half, then B during the second half
        half = n // 2
        d1, d2 = (str(d) for d in rng.choice(list(DIRECTIONS), size=2, replace=True))
        moving_a = [0 < t <= half for t in range(n)]
        moving_b = [t > half for t in range(n)]
        travel = max(1, half)
        speed_a = float(min(2.0, (size - 2 * radii[0] - 6) / travel))
        speed_b = float(min(2.0, (size - 2 * radii[1] - 6) / max(1, n - half - 1)))
        start_a = _start_for(size, radii[0], d1, speed_a * travel, rng)
        a = _Obj(shapes[0], colours[0], radii[0], _linear_path(start_a, d1, speed_a, moving_a))
        start_b = _start_for(size, radii[1], d2, speed_b * (n - half - 1), rng)
        b = _Obj(shapes[1], colours[1], radii[1], _linear_path(start_b, d2, speed_b, moving_b))
        objs = [a, b]
        facts.update(first=a, second=b, d1=d1, d2=d2)
    return _Clip(kind, n, background, objs, facts)


def _render_clip(clip: _Clip) -> list[np.ndarray]:
    """All frames of a clip."""
    return [_render_frame(VIDEO_SIZE, clip.background, clip.objs, t) for t in range(clip.n_frames)]


def _video_questions(rng: np.random.Generator, clip: _Clip, mcq_share: float) -> list[_QA]:
    """Every question the clip supports: temporal ones from its script, static colour/shape ones."""
    qas: list[_QA] = []
    f = clip.facts
    dirs = tuple(DIRECTIONS)
    dir_pool = (*dirs, "it does not move")
    if clip.kind in ("move", "bursts"):
        o: _Obj = f["mover"]
        d = f["direction"]
        q = _pick(
            rng,
            (
                f"In which direction does the {o.name} move during the video?",
                f"Which way is the {o.name} moving?",
            ),
        )
        qas.append(_as_form(rng, q, d, f"The {o.name} moves {d}.", dir_pool, mcq_share))
        qas.append(
            _as_form(
                rng,
                "What colour is the object that moves?",
                o.colour,
                f"The moving object is {o.colour}.",
                tuple(COLOURS),
                mcq_share,
            )
        )
        qas.append(
            _as_form(
                rng,
                "What shape is the moving object?",
                o.shape,
                f"It is a {o.shape}.",
                SHAPES,
                mcq_share,
            )
        )
        fast = "fast" if f["speed"] >= 2.0 else "slowly"
        qas.append(_QA(f"Does the {o.name} move fast or slowly?", f"It moves {fast}."))
        end = _where(o.path[-1], VIDEO_SIZE)
        qas.append(
            _QA(
                f"Where is the {o.name} after it has moved?",
                f"At the end of the video the {o.name} is in the {end} of the frame.",
            )
        )
        if clip.kind == "bursts":
            k = f["moves"]
            qas.append(
                _as_form(
                    rng,
                    f"How many times does the {o.name} move during the clip?",
                    str(k),
                    f"The {o.name} moves {NUMBER_WORDS[k]} {'time' if k == 1 else 'times'}, "
                    "pausing in between.",
                    ("1", "2", "3", "4"),
                    mcq_share,
                )
            )
            then = f"moves {d} again" if k > 1 else "does not move again"
            qas.append(
                _QA(
                    f"What does the {o.name} do after it stops for the first time?",
                    f"It stays still for a moment and then {then}.",
                )
            )
    elif clip.kind == "still":
        o = _pick(rng, clip.objs)
        qas.append(
            _as_form(
                rng,
                f"In which direction does the {o.name} move?",
                "it does not move",
                "It does not move; the scene stays still.",
                dir_pool,
                mcq_share,
            )
        )
        qas.append(
            _QA(
                "Does anything move during the video?",
                _pick(rng, ("No.", "No, every object stays in place for the whole clip.")),
            )
        )
    elif clip.kind == "appear":
        order: list[_Obj] = f["order"]
        names = [x.name for x in order]
        pool = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
        qas.append(
            _as_form(
                rng,
                "Which object appears first in the video?",
                names[0],
                f"The {names[0]} appears first.",
                (*names, *pool[:6]),
                mcq_share,
            )
        )
        qas.append(
            _as_form(
                rng,
                "Which object appears last?",
                names[-1],
                f"The {names[-1]} is the last to appear.",
                (*names, *pool[6:12]),
                mcq_share,
            )
        )
        qas.append(
            _QA(
                f"What happens after the {names[0]} appears?",
                f"Then the {names[1]} appears"
                + (f", and finally the {names[2]}." if len(names) > 2 else "."),
            )
        )
        k = len(order)
        qas.append(
            _as_form(
                rng,
                "How many objects are visible after the last one appears?",
                str(k),
                f"There are {NUMBER_WORDS[k]} objects.",
                ("1", "2", "3", "4"),
                mcq_share,
            )
        )
    else:
        a, b = f["first"], f["second"]
        qas.append(
            _QA(
                f"What happens after the {a.name} moves {f['d1']}?",
                f"The {b.name} moves {f['d2']}.",
            )
        )
        qas.append(
            _as_form(
                rng,
                "Which object moves first?",
                a.name,
                f"The {a.name} moves first, then the {b.name}.",
                (a.name, b.name, "neither of them", "both at the same time"),
                mcq_share,
            )
        )
        qas.append(
            _as_form(
                rng,
                f"In which direction does the {b.name} move after that?",
                f["d2"],
                f"The {b.name} moves {f['d2']}.",
                dir_pool,
                mcq_share,
            )
        )
    # Static questions about the clip's objects.
    by_shape = _unique(clip.objs, lambda x: x.shape)
    if by_shape:
        o = _pick(rng, by_shape)
        qas.append(
            _as_form(
                rng,
                f"What colour is the {o.shape} in the video?",
                o.colour,
                f"The {o.shape} is {o.colour}.",
                tuple(COLOURS),
                mcq_share,
            )
        )
    by_colour = _unique(clip.objs, lambda x: x.colour)
    if by_colour:
        o = _pick(rng, by_colour)
        qas.append(
            _as_form(
                rng,
                f"What shape is the {o.colour} object?",
                o.shape,
                f"The {o.colour} object is a {o.shape}.",
                SHAPES,
                mcq_share,
            )
        )
    return qas


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
        clip = _make_clip(rng, str(_pick(rng, _VIDEO_KINDS)))
        frames = _render_clip(clip)
        video_id = f"v{v:04d}"
        as_mp4 = v > n_videos - n_mp4
        media: dict[str, Any]
        if as_mp4:
            (root / "videos").mkdir(parents=True, exist_ok=True)
            rel = f"videos/{video_id}.mp4"
            _write_mp4(root / rel, frames)
            media = {"video": rel}
        else:
            folder = root / "frames" / video_id
            folder.mkdir(parents=True, exist_ok=True)
            rels = [f"frames/{video_id}/{t:04d}.jpg" for t in range(clip.n_frames)]
            for rel, frame in zip(rels, frames, strict=True):
                _write_jpeg(root / rel, frame)
            media = {"images": rels}
            first_frames = first_frames or rels
        source = str(_pick(rng, VIDEO_SOURCES))
        mcq_share = 0.7 if source.endswith(("nextqa", "perceptiontest")) else 0.35
        pool = _video_questions(rng, clip, mcq_share)
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
            lines.append(_dumps(row))
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
            _dumps(
                [{"id": "vv_broken_array", "video_id": "vb2", "images": frames, "messages": pair}]
            ),
        ),
        (
            "images_not_list",
            _dumps(
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
            _dumps(
                {"id": "vv_broken_nomsg", "video_id": "vb4", "images": frames, "data_source": src}
            ),
        ),
        (
            "empty_answer",
            _dumps(
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


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write JSONL with '\\n' endings regardless of platform."""
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


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
    _write_lines(onevision, ov_all)
    _write_lines(video, vv_all)
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


# ---------------------------------------------------------------- benchmark


def _benchmark_item(rng: np.random.Generator, category: str) -> tuple[_Clip, str, list[str], str]:
    """A clip and one MCQ (question, candidates, answer) of the given category."""
    if category == "direction":
        clip = _make_clip(rng, "move")
        o, d = clip.facts["mover"], clip.facts["direction"]
        return clip, f"In which direction does the {o.name} move?", list(DIRECTIONS), d
    if category == "order":
        clip = _make_clip(rng, "appear")
        names = [x.name for x in clip.facts["order"]]
        extra = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in names]
        cands = [*names[:3], *[extra[i] for i in rng.permutation(len(extra))[: 4 - len(names[:3])]]]
        return clip, "Which object appears first in the video?", cands, names[0]
    if category == "count":
        clip = _make_clip(rng, "bursts")
        o = clip.facts["mover"]
        return (
            clip,
            f"How many times does the {o.name} move?",
            ["1", "2", "3", "4"],
            str(clip.facts["moves"]),
        )
    if category == "colour_open":
        clip = _make_clip(rng, "still")
        while len(clip.objs) != 1:  # one object: the question needs no binding of shape to colour
            clip = _make_clip(rng, "still")
        o = clip.objs[0]
        return clip, f"What colour is the {o.shape} in the video?", list(COLOURS), o.colour
    clip = _make_clip(rng, "move")
    o = clip.facts["mover"]
    others = [c for c in COLOURS if c != o.colour]
    cands = [o.colour, *[others[i] for i in rng.permutation(len(others))[:3]]]
    return clip, "What colour is the object that moves?", cands, o.colour


_TEMPLATE_YAML = """\
# Shared settings of the gdo demo benchmark (generated by gdo_core.demo.make_demo_benchmark).
dataset_path: json
test_split: test
output_type: generate_until
doc_to_visual: !function utils.gdo_demo_frames_doc_to_visual
doc_to_text: !function utils.gdo_demo_doc_to_text
doc_to_target: "answer"
process_results: !function utils.gdo_demo_process_results
generation_kwargs:
  max_new_tokens: 16
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
metric_list:
  - metric: gdo_demo_accuracy
    aggregation: !function utils.gdo_demo_aggregate_results
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "Answer with the option's letter from the given choices directly."
metadata:
  version: 0.0
"""

_UTILS_PY = '''\
"""doc_to_visual, doc_to_text, process_results of the gdo demo benchmark (lmms-eval utils)."""

import re
import string
from pathlib import Path

# Media paths in the data file are relative to this folder, so the folder can be moved as a whole.
TASK_DIR = Path(__file__).resolve().parent


def gdo_demo_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    """The clip as an .mp4 path, the form lmms-eval video models take."""
    return [str(TASK_DIR / doc["video"])]


def gdo_demo_frames_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    """The clip's sampled frames as PIL images, one image per frame: how gdo's SFT rows show a video."""
    from PIL import Image

    return [Image.open(TASK_DIR / f).convert("RGB") for f in doc["frames"]]


def gdo_demo_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """MCQ: question, lettered options on new lines, the post prompt. Open: the question alone."""
    kwargs = lmms_eval_specific_kwargs or {}
    if doc.get("form") == "open":
        return f"{kwargs.get('pre_prompt', '')}{doc['question']}"
    letters = string.ascii_uppercase
    options = "".join(f"\\n{letters[i]}. {c}" for i, c in enumerate(doc["candidates"]))
    post = kwargs.get("post_prompt", "")
    text = f"{kwargs.get('pre_prompt', '')}{doc['question']}{options}"
    return text + (f"\\n{post}" if post else "")


def _named(pred, candidates):
    """The one option a free-form prediction names as a whole word (else None)."""
    lowered = pred.strip().lower()
    hits = [i for i, c in enumerate(candidates) if re.search(rf"\\b{re.escape(c.lower())}\\b", lowered)]
    return hits[0] if len(hits) == 1 else None


def _letter(pred, candidates):
    """The option a prediction names: leading letter, else the one option text, else a letter."""
    letters = string.ascii_uppercase[: len(candidates)]
    text = pred.strip()
    # "A." or "(A)" or a bare "A"; "A red square" falls through to the option-text match.
    m = re.match(rf"^\\(?([{letters}])(?:[\\).:,]|$)", text)
    if m:
        return m.group(1)
    lowered = text.lower()
    hits = [
        i for i, c in enumerate(candidates) if re.search(rf"\\b{re.escape(c.lower())}\\b", lowered)
    ]
    if len(hits) == 1:
        return letters[hits[0]]
    m = re.search(rf"\\b([{letters}])\\b", text)
    return m.group(1) if m else ""


def gdo_demo_process_results(doc, results):
    """Score one prediction: the option it names must be the answer."""
    pred = results[0] if results else ""
    cands = doc["candidates"]
    gt = string.ascii_uppercase[cands.index(doc["answer"])]
    if doc.get("form") == "open":
        named = _named(pred, cands)
        letter = "" if named is None else string.ascii_uppercase[named]
    else:
        letter = _letter(pred, cands)
    return {
        "gdo_demo_accuracy": {
            "question_id": doc["question_id"],
            "category": doc["category"],
            "pred_answer": letter,
            "gt_answer": gt,
            "score": int(letter == gt),
        }
    }


def gdo_demo_aggregate_results(results):
    """Accuracy in percent over all questions (unanswered ones count as wrong)."""
    if not results:
        return 0.0
    return 100.0 * sum(r["score"] for r in results) / len(results)
'''


def make_demo_benchmark(
    out_dir: Path, seed: int = 0, n_questions: int = 100, n_frames: int = BENCHMARK_FRAMES
) -> Path:
    """Write a local lmms-eval task folder (group gdo_demo) of questions over short clips; returns it."""
    root = Path(out_dir).resolve()
    for sub in ("videos", "frames", "data"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for sub in ("videos", "frames", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    docs: dict[str, list[dict[str, Any]]] = {c: [] for c in BENCHMARK_CATEGORIES}
    for i in range(n_questions):
        category = BENCHMARK_CATEGORIES[i % len(BENCHMARK_CATEGORIES)]
        clip, question, cands, answer = _benchmark_item(rng, category)
        cands = [cands[j] for j in rng.permutation(len(cands))]
        if category not in OPEN_CATEGORIES:
            # The answer's letter cycles A, B, C, D within a subtask: no letter is a free win.
            others = [c for c in cands if c != answer]
            k = len(docs[category]) % len(cands)
            cands = [*others[:k], answer, *others[k:]]
        qid = f"gdo_demo_{i:04d}"
        frames = _render_clip(clip)
        _write_mp4(root / "videos" / f"{qid}.mp4", frames)
        (root / "frames" / qid).mkdir()
        rels = []
        for t in resample_indices(len(frames), n_frames):
            rels.append(f"frames/{qid}/{t:04d}.jpg")
            _write_jpeg(root / rels[-1], frames[t])
        docs[category].append(
            {
                "question_id": qid,
                "category": category,
                "form": "open" if category in OPEN_CATEGORIES else "mcq",
                "video": f"videos/{qid}.mp4",
                "frames": rels,
                "question": question,
                "candidates": cands,
                "answer": answer,
            }
        )
    (root / "_default_template_yaml").write_text(_TEMPLATE_YAML)
    (root / "utils.py").write_text(_UTILS_PY)
    tasks = [f"{BENCHMARK_GROUP}_{c}" for c in BENCHMARK_CATEGORIES]
    for category, task in zip(BENCHMARK_CATEGORIES, tasks, strict=True):
        data = root / "data" / f"{category}.jsonl"
        _write_lines(data, [_dumps(d) for d in docs[category]])
        # datasets resolves relative data_files against the working directory, so write it absolute.
        (root / f"{task}.yaml").write_text(
            "include: _default_template_yaml\n"
            f"task: {task}\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    test: {json.dumps(str(data))}\n"
        )
    group = "".join(f"  - {t}\n" for t in tasks)
    (root / f"{BENCHMARK_GROUP}.yaml").write_text(
        f"group: {BENCHMARK_GROUP}\ntask:\n{group}aggregate_metric_list:\n"
        "  - metric: gdo_demo_accuracy\n    aggregation: mean\n    weight_by_size: true\n"
    )
    return root


def benchmark_baselines(bench_dir: Path) -> dict[str, dict[str, float]]:
    """Per subtask and overall, in percent: a uniform guess over the options ('chance') and the best
    single answer given to every question ('constant': a letter for MCQ, an option for open ones)."""
    per: dict[str, dict[str, float]] = {}
    total: dict[str, float] = {"chance": 0.0, "constant": 0.0}
    n = 0
    for category in BENCHMARK_CATEGORIES:
        path = Path(bench_dir) / "data" / f"{category}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        if not rows:
            continue
        guess = sum(100.0 / len(r["candidates"]) for r in rows)
        if category in OPEN_CATEGORIES:
            golds = [r["answer"] for r in rows]
        else:
            golds = [r["candidates"].index(r["answer"]) for r in rows]
        best = max(golds.count(g) for g in set(golds)) * 100.0
        per[category] = {"chance": guess / len(rows), "constant": best / len(rows)}
        total["chance"] += guess
        total["constant"] += best
        n += len(rows)
    if n:
        per["overall"] = {k: v / n for k, v in total.items()}
    return per
