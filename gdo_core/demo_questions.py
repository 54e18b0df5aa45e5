"""Demo world questions: MCQ and open forms, position words, and the QA pairs (with captions) that
the demo pool asks about image scenes and video clips (gdo_core.demo_scenes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gdo_core.demo_scenes import COLOURS, DIRECTIONS, SHAPES, VIDEO_SIZE, Clip, Obj, pick

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
# Share of video clips asked the colour of their background. The tiny random model learns a
# background's brightness from pixels in one epoch when about a quarter of the QAs ask it
# (docs/benchmarks.md, "Can the tiny demo model learn colours from pixels?").
VIDEO_BACKGROUND_SHARE = 0.6


@dataclass
class QA:
    """One question/answer pair before it is placed into a row."""

    question: str
    answer: str


# ---------------------------------------------------------------- question forms and words


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
) -> QA:
    """The same fact as an MCQ (letter or letter+option answer) or an open question."""
    if rng.random() < mcq_share and len(set(pool)) >= 3:
        text, letter, correct = _mcq(rng, question, short, pool, n_options=min(4, len(set(pool))))
        answer = letter if rng.random() < 0.7 else f"{letter}. {correct}"
        return QA(text, answer)
    return QA(question, short if rng.random() < 0.5 else sentence)


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


def _unique(objs: Sequence[Obj], key: Callable[[Obj], str]) -> list[Obj]:
    """Objects whose `key` value no other object shares (questions about them are unambiguous)."""
    values = [key(o) for o in objs]
    return [o for o in objs if values.count(key(o)) == 1]


# ---------------------------------------------------------------- image questions
# Each takes (rng, size, background, objs, mcq_share) and returns None when the scene cannot
# support the question.


def _image_colour(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """The colour of the one object of its shape."""
    cands = _unique(objs, lambda o: o.shape)
    if not cands:
        return None
    o = pick(rng, cands)
    q = pick(
        rng,
        (
            f"What colour is the {o.shape}?",
            f"What is the colour of the {o.shape} in the image?",
        ),
    )
    return _as_form(rng, q, o.colour, f"The {o.shape} is {o.colour}.", tuple(COLOURS), mcq_share)


def _image_background(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """The colour of the background (every patch of the image shows it), answered in one word."""
    # One word, as the video question is answered: half the answers opening with "The background
    # is ..." made the tiny model open with "The" and wander off ("The yellow.").
    q = pick(rng, ("What colour is the background?", "What is the background colour of the image?"))
    return QA(q, background)


def _image_shape(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """The shape of the one object of its colour."""
    cands = _unique(objs, lambda o: o.colour)
    if not cands:
        return None
    o = pick(rng, cands)
    q = pick(
        rng, (f"What shape is the {o.colour} object?", f"Which shape is drawn in {o.colour}?")
    )
    return _as_form(rng, q, o.shape, f"The {o.colour} object is a {o.shape}.", SHAPES, mcq_share)


def _image_count(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """How many shapes of one kind (possibly none) the scene holds."""
    shape = str(pick(rng, SHAPES))
    n = sum(o.shape == shape for o in objs)
    q = f"How many {shape}s are there in the image?"
    sentence = (
        f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {_plural(shape, n)} in the image."
    )
    return _as_form(rng, q, str(n), sentence, tuple(str(i) for i in range(6)), mcq_share)


def _image_subtract(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """CLEVR-Math style: objects left after removing one colour."""
    colour = str(pick(rng, tuple(COLOURS)))
    left = sum(o.colour != colour for o in objs)
    q = f"Subtract all {colour} objects. How many objects are left?"
    return QA(q, str(left))


def _image_position(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """Left, middle or right of one uniquely named object."""
    cands = _unique(objs, lambda o: o.name)
    if not cands:
        return None
    o = pick(rng, cands)
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


def _image_where(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """The grid spot ('top left', 'centre') of one uniquely named object."""
    cands = _unique(objs, lambda o: o.name)
    if not cands:
        return None
    o = pick(rng, cands)
    spot = _where(o.path[0], size)
    return QA(f"Where is the {o.name} located?", f"It is in the {spot} of the image.")


def _image_caption(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """A short description of the scene."""
    return QA(
        pick(rng, ("Describe the image briefly.", "What does this picture show?")),
        _caption(size, background, objs, detailed=False),
    )


def _image_detailed(
    rng: np.random.Generator, size: int, background: str, objs: Sequence[Obj], mcq_share: float
) -> QA | None:
    """A long description of the scene."""
    q = pick(
        rng,
        (
            "Write a detailed description of the picture.",
            "Describe every object in the image, its colour and where it is.",
        ),
    )
    return QA(q, _caption(size, background, objs, detailed=True))


_IMAGE_QUESTIONS: dict[
    str, Callable[[np.random.Generator, int, str, Sequence[Obj], float], QA | None]
] = {
    "colour": _image_colour,
    "background": _image_background,
    "shape": _image_shape,
    "count": _image_count,
    "subtract": _image_subtract,
    "position": _image_position,
    "where": _image_where,
    "caption": _image_caption,
    "detailed": _image_detailed,
}


def image_question(
    rng: np.random.Generator,
    kind: str,
    size: int,
    background: str,
    objs: Sequence[Obj],
    mcq_share: float,
) -> QA | None:
    """One static question of `kind` about the scene, or None when the scene cannot support it."""
    if kind not in _IMAGE_QUESTIONS:
        raise ValueError(f"unknown image question kind {kind!r}")
    return _IMAGE_QUESTIONS[kind](rng, size, background, objs, mcq_share)


def _caption(size: int, background: str, objs: Sequence[Obj], detailed: bool) -> str:
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


# ---------------------------------------------------------------- video questions

# Direction options of video MCQs: the four directions and the answer for a still object.
_DIR_POOL: tuple[str, ...] = (*DIRECTIONS, "it does not move")


def _mover_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """'move' and 'bursts': direction, look, speed and end spot of the mover (and its bursts)."""
    f = clip.facts
    o: Obj = f["mover"]
    d = f["direction"]
    q = pick(
        rng,
        (
            f"In which direction does the {o.name} move during the video?",
            f"Which way is the {o.name} moving?",
        ),
    )
    qas = [_as_form(rng, q, d, f"The {o.name} moves {d}.", _DIR_POOL, mcq_share)]
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
    qas.append(QA(f"Does the {o.name} move fast or slowly?", f"It moves {fast}."))
    end = _where(o.path[-1], VIDEO_SIZE)
    qas.append(
        QA(
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
            QA(
                f"What does the {o.name} do after it stops for the first time?",
                f"It stays still for a moment and then {then}.",
            )
        )
    return qas


def _still_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """'still': nothing moves."""
    o = pick(rng, clip.objs)
    return [
        _as_form(
            rng,
            f"In which direction does the {o.name} move?",
            "it does not move",
            "It does not move; the scene stays still.",
            _DIR_POOL,
            mcq_share,
        ),
        QA(
            "Does anything move during the video?",
            pick(rng, ("No.", "No, every object stays in place for the whole clip.")),
        ),
    ]


def _appear_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """'appear': which object shows up first, last, next, and how many there are at the end."""
    order: list[Obj] = clip.facts["order"]
    names = [x.name for x in order]
    pool = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
    qas = [
        _as_form(
            rng,
            "Which object appears first in the video?",
            names[0],
            f"The {names[0]} appears first.",
            (*names, *pool[:6]),
            mcq_share,
        )
    ]
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
        QA(
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
    return qas


def _sequence_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """'sequence': what happens after the first move, who moves first, where the second goes."""
    f = clip.facts
    a, b = f["first"], f["second"]
    qas = [
        QA(
            f"What happens after the {a.name} moves {f['d1']}?",
            f"The {b.name} moves {f['d2']}.",
        )
    ]
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
            _DIR_POOL,
            mcq_share,
        )
    )
    return qas


def _static_video_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """Colour and shape of the clip's objects, where unambiguous, and often its background colour."""
    qas: list[QA] = []
    if rng.random() < VIDEO_BACKGROUND_SHARE:
        qas.append(QA("What colour is the background of the video?", clip.background))
    by_shape = _unique(clip.objs, lambda x: x.shape)
    if by_shape:
        o = pick(rng, by_shape)
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
        o = pick(rng, by_colour)
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


def video_questions(rng: np.random.Generator, clip: Clip, mcq_share: float) -> list[QA]:
    """Every question the clip supports: temporal ones from its script, static colour/shape ones."""
    if clip.kind in ("move", "bursts"):
        qas = _mover_questions(rng, clip, mcq_share)
    elif clip.kind == "still":
        qas = _still_questions(rng, clip, mcq_share)
    elif clip.kind == "appear":
        qas = _appear_questions(rng, clip, mcq_share)
    else:
        qas = _sequence_questions(rng, clip, mcq_share)
    return qas + _static_video_questions(rng, clip, mcq_share)
