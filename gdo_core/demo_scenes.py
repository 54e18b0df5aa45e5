"""Demo world scenes: palette and geometry constants, drawn shapes, media writers, and the seeded
scripting of still image scenes and short video clips (questions about them: gdo_core.demo_questions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

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
# Two backgrounds, one light and one dark. The tiny random model's vision encoder normalises each
# patch (LayerNorm), which erases the difference between flat greys of the same sign (white, grey
# and beige came out alike), so a background question it can learn from pixels needs backgrounds
# that differ in sign (docs/benchmarks.md, "Can the tiny demo model learn colours from pixels?").
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}


@dataclass
class Obj:
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
class Clip:
    """A rendered clip's script: objects with per-frame paths and the facts its QAs ask about."""

    kind: str
    n_frames: int
    background: str
    objs: list[Obj]
    facts: dict[str, Any]


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One item, chosen by the seeded generator."""
    return items[int(rng.integers(len(items)))]


# ---------------------------------------------------------------- drawing and media files


def _draw(img: np.ndarray, obj: Obj, centre: np.ndarray) -> None:
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


def render_frame(size: int, background: str, objs: Sequence[Obj], t: int) -> np.ndarray:
    """Frame t of a scene (t = 0 for a still image)."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[background]
    for obj in objs:
        if t >= obj.appear:
            _draw(img, obj, obj.path[min(t, len(obj.path) - 1)])
    return img


def write_jpeg(path: Path, img: np.ndarray) -> None:
    """Write a JPEG, failing loudly (cv2 returns False instead of raising)."""
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def write_png(path: Path, img: np.ndarray) -> None:
    """Write a PNG, failing loudly."""
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float = MP4_FPS) -> None:
    """Write frames as an MPEG-4 Part 2 .mp4 (a codec decord 0.6 reads)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot open a video writer for {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


# ---------------------------------------------------------------- image scenes


def image_scene(rng: np.random.Generator) -> tuple[int, str, list[Obj]]:
    """1-4 non-overlapping shapes on a 3x3 grid of a 64 or 96 px canvas."""
    size = int(pick(rng, IMAGE_SIZES))
    background = str(pick(rng, tuple(BACKGROUNDS)))
    n_objs = int(rng.integers(1, 5))
    cell = size // 3
    cells = rng.choice(9, size=n_objs, replace=False)
    objs: list[Obj] = []
    for c in cells:
        cx = (int(c) % 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        cy = (int(c) // 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        radius = int(rng.integers(cell // 4 + 2, cell // 2 - 1))
        objs.append(
            Obj(
                str(pick(rng, SHAPES)),
                str(pick(rng, tuple(COLOURS))),
                radius,
                np.array([[cx, cy]], float),
            )
        )
    return size, background, objs


# ---------------------------------------------------------------- video clips


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


@dataclass
class _Cast:
    """The drawn objects' looks, chosen before a clip's motion is scripted."""

    n_frames: int
    shapes: list[str]
    colours: list[str]
    radii: list[int]


def _cast(rng: np.random.Generator, kind: str, n: int) -> _Cast:
    """Colours (all distinct), shapes and radii of the clip's objects."""
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    n_objs = {
        "move": int(rng.integers(1, 4)),
        "still": int(rng.integers(1, 4)),
        "appear": int(rng.integers(2, 4)),
        "bursts": int(rng.integers(1, 3)),
        "sequence": 2,
    }[kind]
    shapes = [str(pick(rng, SHAPES)) for _ in range(n_objs)]
    radii = [int(rng.integers(VIDEO_RADIUS[0], VIDEO_RADIUS[1])) for _ in range(n_objs)]
    return _Cast(n, shapes, colours, radii)


def _burst_frames(rng: np.random.Generator, n: int) -> tuple[list[bool], int]:
    """Which frames move for a 'bursts' clip, and how many bursts there are."""
    times = int(rng.integers(1, 4))
    # Bursts of `run` moving frames separated by pauses of `gap` still frames.
    run, gap = 4, max(3, (n - 4 * times) // (times + 1))
    moving = [False] * n
    t = gap
    for _ in range(times):
        for k in range(t, min(n, t + run)):
            moving[k] = True
        t += run + gap
    return moving, times


def _mover_clip(
    rng: np.random.Generator, kind: str, cast: _Cast
) -> tuple[list[Obj], dict[str, Any]]:
    """'move' and 'bursts': the first object moves in one direction, the others stay put."""
    size, n, radii = VIDEO_SIZE, cast.n_frames, cast.radii
    facts: dict[str, Any] = {}
    direction = str(pick(rng, tuple(DIRECTIONS)))
    if kind == "move":
        moving = [True] * n
        facts["moves"] = 1
    else:
        moving, facts["moves"] = _burst_frames(rng, n)
    travel_frames = max(1, sum(moving[1:]))
    max_speed = (size - 2 * radii[0] - 6) / travel_frames
    speed = float(min(pick(rng, (1.0, 1.5, 2.0, 3.0, 4.0)), max_speed))
    start = _start_for(size, radii[0], direction, speed * travel_frames, rng)
    path = _linear_path(start, direction, speed, moving)
    objs = [Obj(cast.shapes[0], cast.colours[0], radii[0], path)]
    facts.update(direction=direction, speed=speed, mover=objs[0])
    taken = [objs[0].path[0], objs[0].path[-1]]
    still = [False] * n
    for j in range(1, len(radii)):
        spot = _free_spot(rng, size, radii[j], taken)
        taken.append(spot)
        path = _linear_path(spot, "left", 0.0, still)
        objs.append(Obj(cast.shapes[j], cast.colours[j], radii[j], path))
    return objs, facts


def _placed_clip(
    rng: np.random.Generator, kind: str, cast: _Cast
) -> tuple[list[Obj], dict[str, Any]]:
    """'still' and 'appear': nothing moves; in 'appear' the objects show up one after another."""
    n, n_objs = cast.n_frames, len(cast.radii)
    facts: dict[str, Any] = {}
    still = [False] * n
    taken: list[np.ndarray] = []
    objs: list[Obj] = []
    # Distinct appearance frames in the first two thirds; the first object is there from frame 0.
    appear_at = [0] * n_objs
    if kind == "appear":
        later = rng.choice(np.arange(1, n * 2 // 3), size=n_objs - 1, replace=False)
        appear_at = [0, *sorted(int(a) for a in later)]
    for j in range(n_objs):
        spot = _free_spot(rng, VIDEO_SIZE, cast.radii[j], taken)
        taken.append(spot)
        path = _linear_path(spot, "left", 0.0, still)
        objs.append(Obj(cast.shapes[j], cast.colours[j], cast.radii[j], path, appear_at[j]))
    if kind == "appear":
        # Appearance order is shuffled against drawing order: "first" is not always index 0.
        order = [objs[j] for j in rng.permutation(n_objs)]
        times = sorted({o.appear for o in objs})
        for o, a in zip(order, times, strict=True):
            o.appear = a
        objs.sort(key=lambda o: o.appear)
        facts["order"] = list(objs)
    return objs, facts


def _sequence_clip(rng: np.random.Generator, cast: _Cast) -> tuple[list[Obj], dict[str, Any]]:
    """'sequence': A moves during the first half, then B during the second half."""
    size, n, radii = VIDEO_SIZE, cast.n_frames, cast.radii
    shapes, colours = cast.shapes, cast.colours
    half = n // 2
    d1, d2 = (str(d) for d in rng.choice(list(DIRECTIONS), size=2, replace=True))
    moving_a = [0 < t <= half for t in range(n)]
    moving_b = [t > half for t in range(n)]
    travel = max(1, half)
    speed_a = float(min(2.0, (size - 2 * radii[0] - 6) / travel))
    speed_b = float(min(2.0, (size - 2 * radii[1] - 6) / max(1, n - half - 1)))
    start_a = _start_for(size, radii[0], d1, speed_a * travel, rng)
    a = Obj(shapes[0], colours[0], radii[0], _linear_path(start_a, d1, speed_a, moving_a))
    start_b = _start_for(size, radii[1], d2, speed_b * (n - half - 1), rng)
    b = Obj(shapes[1], colours[1], radii[1], _linear_path(start_b, d2, speed_b, moving_b))
    return [a, b], {"first": a, "second": b, "d1": d1, "d2": d2}


def make_clip(rng: np.random.Generator, kind: str) -> Clip:
    """Script one clip of the given kind: move, still, appear, bursts or sequence."""
    background = str(pick(rng, tuple(BACKGROUNDS)))
    frame_choices = {
        "move": VIDEO_FRAME_COUNTS,
        "still": VIDEO_FRAME_COUNTS,
        "appear": (12, 16, 20, 24, 32, 40, 48),
        "bursts": (24, 32, 40, 48),
        "sequence": (16, 20, 24, 32, 40, 48),
    }[kind]
    n = int(pick(rng, frame_choices))
    cast = _cast(rng, kind, n)
    if kind in ("move", "bursts"):
        objs, facts = _mover_clip(rng, kind, cast)
    elif kind in ("still", "appear"):
        objs, facts = _placed_clip(rng, kind, cast)
    else:
        objs, facts = _sequence_clip(rng, cast)
    return Clip(kind, n, background, objs, facts)


def render_clip(clip: Clip) -> list[np.ndarray]:
    """All frames of a clip."""
    return [render_frame(VIDEO_SIZE, clip.background, clip.objs, t) for t in range(clip.n_frames)]
