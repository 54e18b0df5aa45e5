"""Stratum fields: every bucket edge, MCQ on raw text, temporal cues, source groups."""

import re
import threading

import numpy as np
import polars as pl
import pytest

from gdo_core import strata
from gdo_core.schema import BUCKET_IMAGE, BUCKET_VIDEO, STRATUM_FIELDS


@pytest.mark.parametrize(
    ("n_frames", "label"),
    [(0, "image"), (1, "image"), (2, "very_short"), (8, "very_short"), (9, "short"), (24, "short"),
     (25, "medium"), (64, "medium"), (65, "long"), (160, "long"), (161, "very_long")],
)
def test_duration_bucket_edges(n_frames, label):
    assert strata.duration_bucket(n_frames) == label


@pytest.mark.parametrize(
    ("tokens", "label"),
    [(0, "q_tiny"), (6, "q_tiny"), (7, "q_short"), (14, "q_short"), (15, "q_medium"),
     (30, "q_medium"), (31, "q_long"), (60, "q_long"), (61, "q_very_long")],
)
def test_question_length_edges(tokens, label):
    assert strata.q_len_bucket(tokens) == label


@pytest.mark.parametrize(
    ("tokens", "label"),
    [(1, "a_tiny"), (2, "a_tiny"), (3, "a_short"), (8, "a_short"), (9, "a_medium"),
     (24, "a_medium"), (25, "a_long"), (64, "a_long"), (65, "a_very_long")],
)
def test_answer_length_edges(tokens, label):
    assert strata.a_len_bucket(tokens) == label


@pytest.mark.parametrize(
    ("text", "n"),
    [("What colour is it?", 4), ("snake_case x1, Y2!", 3), ("", 0), ("<image> a-b", 3), ("é ü", 0)],
)
def test_token_count(text, n):
    assert strata.count_tokens(text) == n


def test_token_bytes_are_the_token_pattern_characters():
    every = np.arange(256, dtype=np.uint8)
    expected = [re.fullmatch(strata.TOKEN_PATTERN, chr(b)) is not None for b in range(128)]
    assert strata.is_token_byte(every).tolist() == expected + [False] * 128


@pytest.mark.parametrize("piece_bytes", [1, 7, 64, 2**18])
def test_token_counts_match_the_scalar_count(monkeypatch, piece_bytes):
    import random

    monkeypatch.setattr(strata, "_TOKEN_CHUNK_ROWS", 97)  # many chunks, texts across their edges
    monkeypatch.setattr(strata, "_TOKEN_PIECE_BYTES", piece_bytes)  # pieces of one text or many
    monkeypatch.setattr(strata, "_SCRATCH", threading.local())  # work arrays of the piece size
    rng = random.Random(5)
    alphabet = [*"abcXYZ019_ .,?!-\n\t", "é", "ß", "\u212a", "\u0130", "中", "😀", "\u00a0"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 3, 40]))) for _ in range(2000)]
    texts[7] = None
    texts[11] = "long text_1 " * 50  # longer than a piece (a piece of its own)
    column = pl.concat([pl.Series("q", texts[:500]), pl.Series("q", texts[500:])], rechunk=False)
    expected = [None if t is None else strata.count_tokens(t) for t in texts]
    assert strata.token_counts(column).to_list() == expected
    assert strata.token_counts(column.slice(3, 400)).to_list() == expected[3:403]
    assert strata.token_counts(pl.Series("q", [], dtype=pl.String)).to_list() == []


RAW_MCQ = "<video>\nWhich way does it move?\nA. left\nB. right"


@pytest.mark.parametrize(
    ("text", "form"),
    [
        (RAW_MCQ, "MCQ"),
        ("Pick one:\nA) red\nB) blue", "MCQ"),
        ("Select from the choices below", "MCQ"),
        ("Which choice is right", "MCQ"),
        ("What is in the image? A. cat", "Open"),  # options not on their own line
        ("Describe the scene.", "Open"),
        ("How do we make choicest wine", "Open"),  # word boundary
        ("\na. lower-case option", "MCQ"),  # case-insensitive, as published
        ("Choices: red, blue", "MCQ"),
        ("\nB. no first option", "Open"),
    ],
)
def test_question_form_on_raw_text(text, form):
    assert strata.question_form(text) == form


def test_published_quirk_mcq_never_matches_collapsed_text():
    """The published code tested collapsed text, so newline options were never MCQ (the fix)."""
    assert strata.question_form(strata.clean_question(RAW_MCQ)) == "Open"
    assert strata.question_form(RAW_MCQ) == "MCQ"


@pytest.mark.parametrize(
    ("question", "category"),
    [
        ("What happens after the ball falls?", "Temporal"),
        ("What HAPPENS next", "Temporal"),
        ("Which shape appears FIRST?", "Temporal"),
        ("What colour is the square?", "Mixed"),
        ("Is it happening?", "Mixed"),  # 'happen' needs a word boundary
        ("afterwards they left", "Mixed"),
    ],
)
def test_temporal_category_video(question, category):
    assert strata.temporal_category(BUCKET_VIDEO, question) == category


def test_temporal_category_image_is_static():
    assert strata.temporal_category(BUCKET_IMAGE, "What happens after this?") == "Static"


@pytest.mark.parametrize(
    ("source", "group"),
    [
        ("CLEVR-Math(MathV360K)", "CLEVR-Math"),
        ("ai2d(cauldron,llava_format)", "ai2d"),
        ("0_30_s_academic_v0_1", "0_30_s_academic"),
        ("llava_wild_4v_39k_filtered", "llava_wild_4v_39k"),
        ("ureader_cap", "ureader_cap"),
        ("infographic_vqa", "infographic_vqa"),
        ("", "unknown"),
        (None, "unknown"),
        ("(weird)", "unknown"),
        ("  sharegpt4v(coco) ", "sharegpt4v"),
    ],
)
def test_source_group(source, group):
    assert strata.source_group(source) == group


def test_vectorised_fields_match_scalar_functions():
    rows = {
        "bucket": [BUCKET_VIDEO, BUCKET_IMAGE, BUCKET_VIDEO, BUCKET_VIDEO],
        "question": ["What happens then?", "What colour?", "Which shape is it? A. one", "x " * 61],
        "answer": ["It falls", "red", "A", "word " * 65],
        "user_text": [
            "<video>\nWhat happens then?",
            "<image>\nWhat colour?",
            "<video>\nWhich shape is it?\nA. one",
            "x " * 61,
        ],
        "n_frames": [32, 1, 8, 200],
        "data_source": ["0_30_s_academic_v0_1", "GEOS(MathV360K)", "", None],
    }
    out = strata.with_stratum_fields(pl.DataFrame(rows))
    for row in out.iter_rows(named=True):
        expected = {
            "bucket": row["bucket"],
            "duration_bucket": strata.duration_bucket(row["n_frames"]),
            "temporal_category": strata.temporal_category(row["bucket"], row["question"]),
            "question_form": strata.question_form(row["user_text"]),
            "q_len_bucket": strata.q_len_bucket(strata.count_tokens(row["question"])),
            "a_len_bucket": strata.a_len_bucket(strata.count_tokens(row["answer"])),
            "source_group": strata.source_group(row["data_source"]),
        }
        assert {f: row[f] for f in STRATUM_FIELDS} == expected
        assert row["stratum"] == strata.stratum_key(expected)
    assert out["question_form"].to_list() == ["Open", "Open", "MCQ", "Open"]
    # a frame of image QAs only (one OneVision file) skips the temporal regex, same fields
    images = pl.DataFrame(rows).filter(pl.col("bucket") == BUCKET_IMAGE)
    assert strata.with_stratum_fields(images).equals(out.filter(pl.col("bucket") == BUCKET_IMAGE))
    assert strata.with_stratum_fields(images.head(0)).height == 0
