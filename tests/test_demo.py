"""The demo world: seeded pools with known broken lines, and a local lmms-eval task folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import cv2
import decord
import numpy as np
import pytest
import yaml

from gdo_core.demo import (
    BENCHMARK_CATEGORIES,
    BENCHMARK_FRAMES,
    BENCHMARK_GROUP,
    BROKEN_KINDS,
    ONEVISION_FILE,
    VIDEO_FILE,
    DemoPool,
    benchmark_baselines,
    make_demo_benchmark,
    make_demo_pool,
)
from gdo_core.demo_scenes import BACKGROUNDS

N_IMAGE_ROWS = 40
N_VIDEOS = 12
N_QUESTIONS = 12


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoPool, DemoPool, DemoPool]:
    """Two pools from seed 0 and one from seed 1."""
    a = make_demo_pool(
        tmp_path_factory.mktemp("a"), seed=0, n_image_rows=N_IMAGE_ROWS, n_videos=N_VIDEOS
    )
    b = make_demo_pool(
        tmp_path_factory.mktemp("b"), seed=0, n_image_rows=N_IMAGE_ROWS, n_videos=N_VIDEOS
    )
    c = make_demo_pool(
        tmp_path_factory.mktemp("c"), seed=1, n_image_rows=N_IMAGE_ROWS, n_videos=N_VIDEOS
    )
    return a, b, c


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo benchmark folder."""
    return make_demo_benchmark(tmp_path_factory.mktemp("bench"), seed=0, n_questions=N_QUESTIONS)


def _lines(path: Path) -> list[str]:
    """The file's lines without their endings."""
    return path.read_text(encoding="utf-8").splitlines()


def _turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(speaker, text) pairs of a row in either layout."""
    items = row.get("messages") or row.get("conversations") or []
    return [(m.get("role", m.get("from")), m.get("content", m.get("value"))) for m in items]


def _valid_rows(path: Path, broken: tuple[int, ...]) -> list[dict[str, Any]]:
    """Parsed rows of the lines not listed as broken."""
    return [json.loads(line) for i, line in enumerate(_lines(path), start=1) if i not in broken]


def test_same_seed_gives_identical_bytes(pools: tuple[DemoPool, DemoPool, DemoPool]) -> None:
    a, b, c = pools
    assert a.onevision.read_bytes() == b.onevision.read_bytes()
    assert a.video.read_bytes() == b.video.read_bytes()
    assert _tree_digest(a.root) == _tree_digest(b.root)
    assert a.onevision.read_bytes() != c.onevision.read_bytes()
    assert (a.broken_lines, a.n_image_qas, a.n_video_qas) == (
        b.broken_lines,
        b.n_image_qas,
        b.n_video_qas,
    )


def test_broken_lines_are_where_the_pool_says(pools: tuple[DemoPool, DemoPool, DemoPool]) -> None:
    pool = pools[0]
    for name, path in ((ONEVISION_FILE, pool.onevision), (VIDEO_FILE, pool.video)):
        lines = _lines(path)
        kinds = pool.broken_kinds[name]
        assert tuple(sorted(kinds)) == pool.broken_lines[name]
        assert sorted(kinds.values()) == sorted(BROKEN_KINDS)
        for number, kind in kinds.items():
            text = lines[number - 1]
            if kind == "invalid_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
                continue
            row = json.loads(text)
            if kind == "json_array":
                assert isinstance(row, list)
            elif kind == "images_not_list":
                assert isinstance(row["images"], int)
            elif kind == "no_messages":
                assert "messages" not in row and "conversations" not in row
            elif kind == "empty_answer":
                assert [t for _, t in _turns(row)][1].strip() == ""
        # Every other line is a well-formed row.
        for i, line in enumerate(lines, start=1):
            if i not in kinds:
                row = json.loads(line)
                assert isinstance(row, dict) and _turns(row), (name, i)


def test_image_rows_content_and_media(pools: tuple[DemoPool, DemoPool, DemoPool]) -> None:
    pool = pools[0]
    rows = _valid_rows(pool.onevision, pool.broken_lines[ONEVISION_FILE])
    assert len(rows) == pool.n_image_rows == N_IMAGE_ROWS
    n_qas = 0
    for row in rows:
        turns = _turns(row)
        assert len(turns) % 2 == 0 and turns[0][1].startswith("<image>\n")
        assert all(text.strip() for _, text in turns)
        n_qas += len(turns) // 2
        images = [row["image"]] if "image" in row else row["images"]
        assert not Path(images[0]).is_absolute()
        img = cv2.imread(str(pool.root / images[0]))
        assert img is not None and img.shape[0] in (64, 96)
    assert n_qas == pool.n_image_qas
    assert any("conversations" in r for r in rows) and any("messages" in r for r in rows)
    assert any("image" in r for r in rows) and any(len(_turns(r)) > 2 for r in rows)
    assert any(re.search(r"\nA\. ", t) for r in rows for _, t in _turns(r))
    assert {r["data_source"] for r in rows} >= {
        "ai2d(cauldron,llava_format)",
        "CLEVR-Math(MathV360K)",
    }


def test_video_rows_content_and_media(pools: tuple[DemoPool, DemoPool, DemoPool]) -> None:
    pool = pools[0]
    rows = _valid_rows(pool.video, pool.broken_lines[VIDEO_FILE])
    assert len(rows) == pool.n_video_rows
    assert sum(len(_turns(r)) // 2 for r in rows) == pool.n_video_qas
    assert len({r["video_id"] for r in rows}) == pool.n_videos == N_VIDEOS
    mp4s = {r["video"] for r in rows if "video" in r}
    assert len(mp4s) == pool.n_mp4_videos
    for row in rows:
        assert _turns(row)[0][1].startswith("<video>\n")
        if "images" in row:
            assert 8 <= len(row["images"]) <= 48
            for rel in (row["images"][0], row["images"][-1]):
                assert cv2.imread(str(pool.root / rel)).shape == (64, 64, 3)
    for rel in mp4s:
        reader = decord.VideoReader(str(pool.root / rel))
        assert 8 <= len(reader) <= 48 and reader[0].asnumpy().shape == (64, 64, 3)
    questions = " ".join(t for r in rows for s, t in _turns(r) if s in ("user", "human"))
    assert "direction" in questions or "first" in questions


def test_benchmark_has_lmms_eval_layout(bench: Path) -> None:
    tasks = [f"{BENCHMARK_GROUP}_{c}" for c in BENCHMARK_CATEGORIES]
    assert (bench / "_default_template_yaml").is_file() and (bench / "utils.py").is_file()
    group = yaml.safe_load((bench / f"{BENCHMARK_GROUP}.yaml").read_text())
    assert group["group"] == BENCHMARK_GROUP and group["task"] == tasks
    template = yaml.safe_load(
        re.sub(r"!function \S+", "null", (bench / "_default_template_yaml").read_text())
    )
    assert template["dataset_path"] == "json" and template["output_type"] == "generate_until"
    n_docs = 0
    for task in tasks:
        cfg = yaml.safe_load((bench / f"{task}.yaml").read_text())
        assert cfg["include"] == "_default_template_yaml" and cfg["task"] == task
        data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert data.is_file()
        n_docs += len(_lines(data))
    assert n_docs == N_QUESTIONS


def test_benchmark_utils_score_one_doc(bench: Path) -> None:
    spec = importlib.util.spec_from_file_location("gdo_demo_utils", bench / "utils.py")
    assert spec is not None and spec.loader is not None
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = json.loads(_lines(bench / "data" / "direction.jsonl")[0])
    kwargs = {"pre_prompt": "", "post_prompt": "Answer with the option's letter."}
    (video,) = utils.gdo_demo_doc_to_visual(doc, kwargs)
    assert Path(video).is_file() and video.endswith(".mp4")
    frames = utils.gdo_demo_frames_doc_to_visual(doc, kwargs)
    assert len(frames) == len(doc["frames"]) == BENCHMARK_FRAMES and frames[0].size == (64, 64)
    text = utils.gdo_demo_doc_to_text(doc, kwargs)
    assert "\nA. " in text and text.startswith(doc["question"])
    letter = "ABCD"[doc["candidates"].index(doc["answer"])]
    right = utils.gdo_demo_process_results(doc, [f"{letter}."])["gdo_demo_accuracy"]
    wrong_letter = "ABCD"[(doc["candidates"].index(doc["answer"]) + 1) % 4]
    wrong = utils.gdo_demo_process_results(doc, [wrong_letter])["gdo_demo_accuracy"]
    by_text = utils.gdo_demo_process_results(doc, [f"It moves {doc['answer']}."])[
        "gdo_demo_accuracy"
    ]
    assert (right["score"], wrong["score"], by_text["score"]) == (1, 0, 1)
    assert utils.gdo_demo_aggregate_results([right, wrong]) == 50.0
    # the open question shows no options; a prediction naming exactly one option is scored by it
    doc = json.loads(_lines(bench / "data" / "colour_open.jsonl")[0])
    assert utils.gdo_demo_doc_to_text(doc, kwargs) == doc["question"] and doc["form"] == "open"
    other = next(c for c in doc["candidates"] if c != doc["answer"])
    scores = [
        utils.gdo_demo_process_results(doc, [pred])["gdo_demo_accuracy"]["score"]
        for pred in (f"The square is {doc['answer']}.", other, f"{doc['answer']} or {other}", "A")
    ]
    assert scores == [1, 0, 0, 0]


def test_benchmark_baselines(bench: Path) -> None:
    baselines = benchmark_baselines(bench)
    # four options per MCQ subtask, six colours for the open colour question, two backgrounds
    assert baselines["direction"]["chance"] == 25.0
    assert baselines["colour_open"]["chance"] == pytest.approx(100 / 6)
    assert baselines["background"]["chance"] == 50.0
    assert baselines["overall"]["questions"] == N_QUESTIONS
    assert sum(baselines[c]["questions"] for c in BENCHMARK_CATEGORIES) == N_QUESTIONS
    # background questions alternate white, black: one answer wins half of them at most
    docs = [json.loads(line) for line in _lines(bench / "data" / "background.jsonl")]
    assert [d["answer"] for d in docs] == [("white", "black")[i % 2] for i in range(len(docs))]
    assert baselines["background"]["constant"] == pytest.approx(100 * -(-len(docs) // 2) / len(docs))
    # the open colour question's answers cycle through the six colours in the same way
    docs = [json.loads(line) for line in _lines(bench / "data" / "colour_open.jsonl")]
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    assert [d["answer"] for d in docs] == [colours[i % 6] for i in range(len(docs))]
    assert baselines["colour_open"]["constant"] == pytest.approx(100 * -(-len(docs) // 6) / len(docs))
    # answer letters cycle A, B, ... within an MCQ subtask, so answering one letter throughout wins
    # at most ceil(n / 4) of n questions
    for category in ("direction", "order", "count", "colour"):
        docs = [json.loads(line) for line in _lines(bench / "data" / f"{category}.jsonl")]
        letters = ["ABCD"[d["candidates"].index(d["answer"])] for d in docs]
        assert letters == ["ABCD"[i % 4] for i in range(len(docs))]
        assert baselines[category]["constant"] == pytest.approx(100 * -(-len(docs) // 4) / len(docs))
    n = {c: len(_lines(bench / "data" / f"{c}.jsonl")) for c in BENCHMARK_CATEGORIES}
    per_question = {"colour_open": 100 / 6, "background": 50.0}
    expected = sum(n[c] * per_question.get(c, 25.0) for c in n) / sum(n.values())
    assert baselines["overall"]["chance"] == pytest.approx(expected)


def _dominant_colour(img: Any) -> tuple[int, ...]:
    """The BGR value most pixels of an image share."""
    values, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    return tuple(int(v) for v in values[counts.argmax()])


def test_background_answers_are_the_rendered_background(
    pools: tuple[DemoPool, DemoPool, DemoPool], bench: Path
) -> None:
    pool = pools[0]
    bgr = {name: tuple(v) for name, v in BACKGROUNDS.items()}
    checked = 0
    for path, broken in ((pool.onevision, pool.broken_lines[ONEVISION_FILE]), (pool.video, pool.broken_lines[VIDEO_FILE])):
        for row in _valid_rows(path, broken):
            turns = _turns(row)
            media = row.get("images") or [row.get("image") or row.get("video")]
            for (_, q), (_, a) in zip(turns[0::2], turns[1::2], strict=True):
                if "background" not in q or "\nA. " in q or media[0].endswith(".mp4"):
                    continue
                named = [b for b in BACKGROUNDS if re.search(rf"\b{b}\b", a)]
                assert len(named) == 1, (q, a)
                assert _dominant_colour(cv2.imread(str(pool.root / media[0]))) == bgr[named[0]]
                checked += 1
    assert checked >= 5
    for doc in (json.loads(line) for line in _lines(bench / "data" / "background.jsonl")):
        frame = cv2.imread(str(bench / doc["frames"][0]))
        # JPEG moves a flat colour by a few levels at most
        assert np.abs(np.array(_dominant_colour(frame)) - bgr[doc["answer"]]).max() <= 4


def test_benchmark_loads_with_lmms_eval_loader(bench: Path) -> None:
    import lmms_eval.utils as lmms_utils

    cfg = lmms_utils.load_yaml_config(str(bench / f"{BENCHMARK_GROUP}_order.yaml"), mode="full")
    assert cfg["task"] == f"{BENCHMARK_GROUP}_order" and callable(cfg["doc_to_visual"])
    assert cfg["dataset_path"] == "json" and callable(cfg["metric_list"][0]["aggregation"])
