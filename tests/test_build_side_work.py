"""Work `gdo build` moves off the critical path gives the same selection: metric terms prepared
from the metrics alone, answer token counts kept in the cache, the published view skipped when
it would change nothing."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest
from test_pool_cache import _pool  # tests/ is on sys.path under pytest's default import mode
from test_select import make_metrics, make_qa, small_profile

from gdo_core import build as BLD
from gdo_core import pool_cache as C
from gdo_core import pool_read as PR
from gdo_core import select as S
from gdo_core.candidate_score import distinct_answer_tokens


@pytest.mark.parametrize("mode", ["default", "published"])
def test_prepared_metrics_take_the_last_row_of_a_repeated_qa_uid(mode):
    """Three rows, qa_uid "a" twice: the z-stats count all three rows, the terms are the last a's.

    Every column is 1, 2, 3 up to scale and shift (mean the middle value, sample std the step),
    so the z-scores of the rows are -1, 0, 1 (loss_blind runs downwards: 1, 0, -1).
    """
    rows = pl.DataFrame(
        {
            "qa_uid": ["a", "b", "a"],
            "loss_video": [1.0, 2.0, 3.0],  # mean 2, std 1
            "loss_blind": [7.0, 5.0, 3.0],  # mean 5, std 2
            "frame_diversity": [0.0, 0.5, 1.0],  # mean 0.5, std 0.5
            "vds": [6.0, 3.0, 0.0],  # unused while both losses are there
            "quality": [10.0, 20.0, 30.0],  # mean 20, std 10
        }
    )
    prepared = S.prepare_metrics(rows, mode)
    uids = prepared.uids["qa_uid"].to_list()
    assert prepared.rows == 3 and sorted(uids) == ["a", "b"]
    assert prepared.stats["loss_video"] == pytest.approx((2.0, 1.0))
    assert prepared.stats["loss_blind"] == pytest.approx((5.0, 2.0))
    assert prepared.stats["quality"] == pytest.approx((20.0, 10.0))
    # vds3' = -z(loss_video) + z(loss_blind) + z(frame_div): a (row 2) -1 - 1 + 1, b 0.
    # The first a row would give +1 + 1 - 1 = 1 and q' -1 instead.
    vds3, quality = dict(zip(uids, prepared.vds3.tolist())), dict(zip(uids, prepared.quality))
    assert vds3 == pytest.approx({"a": -1.0, "b": 0.0})
    assert quality == pytest.approx({"a": 1.0, "b": 0.0})


def test_prepared_metrics_fall_back_to_vds_and_clip_at_four():
    """Without losses vds3' is z(VDS) + 0.5 z(frame_div), with neither z(VDS) alone; |z| <= 4."""
    rows = pl.DataFrame(
        {
            "qa_uid": [f"q{i}" for i in range(18)],
            "frame_diversity": [None] * 17 + [1.0],
            "vds": [0.0] * 17 + [100.0],
        },
        schema={"qa_uid": pl.String, "frame_diversity": pl.Float64, "vds": pl.Float64},
    )
    prepared = S.prepare_metrics(rows, "default")
    # vds: mean 100/18, sample std 100/sqrt(18); z of the last row (17/18)*sqrt(18) = 4.006: clipped.
    z_zero = -(100 / 18) / (100 / 18**0.5)
    assert prepared.vds3[:17].tolist() == pytest.approx([z_zero] * 17)  # no frame_div: z(VDS)
    # frame_div has one value (std 1 by convention, z 0): 4 + 0.5 * 0
    assert prepared.vds3[17] == pytest.approx(4.0)
    assert prepared.quality.tolist() == [0.0] * 18  # no quality column: q' is 0


def _string_join_match(qa_uids: list, metric_uids: list) -> list[int]:
    """Per QA uid, its row among the metric uids (-1: none; a null matches nothing)."""
    at = {u: i for i, u in enumerate(metric_uids)}
    return [at.get(u, -1) if u is not None else -1 for u in qa_uids]


@pytest.mark.parametrize("collide", [False, True])
def test_metric_match_joins_uid_hashes_and_falls_back_to_the_strings(monkeypatch, collide):
    rng = np.random.default_rng(3)
    metric_uids = [f"q{i}" for i in rng.permutation(3000)]
    qa_uids = [f"q{i}" for i in range(0, 4000, 2)] + [None, "q10"]  # some missing; a null; a repeat
    if collide:  # a hash shared by many uids: matched pairs whose strings differ
        by_length = lambda self, seed=0: self.str.len_bytes().cast(pl.UInt64)
        monkeypatch.setattr(pl.Series, "hash", by_length)
    uids = pl.DataFrame({"qa_uid": metric_uids})
    prepared = S.PreparedMetrics("default", 3000, uids, {}, np.zeros(3000), np.zeros(3000))
    qa = pl.DataFrame({"qa_uid": qa_uids}, schema={"qa_uid": pl.String})
    match = S._metric_match(qa, prepared)
    assert match.tolist() == _string_join_match(qa_uids, metric_uids)


def test_prepared_metrics_must_match_the_mode():
    qa = make_qa()
    prepared = S.prepare_metrics(make_metrics(qa), "default")
    with pytest.raises(ValueError, match="prepared for default mode"):
        S.select_subsets(
            qa, small_profile(), metrics=prepared, options=S.SelectOptions(mode="published")
        )


def test_answer_counts_given_or_kept_select_the_same():
    qa = make_qa()
    metrics = make_metrics(qa)
    plain = S.select_subsets(qa, small_profile(), metrics=metrics)
    counts = distinct_answer_tokens(qa["answer"], qa["answer_len"].to_numpy())
    with ThreadPoolExecutor(1) as side:
        given = S.select_subsets(
            qa,
            small_profile(),
            metrics=metrics,
            answer_distinct=side.submit(S.answer_distinct_tokens, qa),
        )
    kept = S.select_subsets(
        qa.with_columns(pl.Series(S.ANSWER_DISTINCT, counts, dtype=pl.Int32)),
        small_profile(),
        metrics=metrics,
    )
    for other in (given, kept):
        assert other.gdo.rows == plain.gdo.rows and other.uni_rows == plain.uni_rows
        assert other.scores.equals(plain.scores)
    # a kept column is what the tokeniser counts, and what is used
    wrong = qa.with_columns(pl.Series(S.ANSWER_DISTINCT, counts + 1, dtype=pl.Int32))
    assert S.answer_distinct_tokens(wrong).tolist() == (counts + 1).tolist()


def test_cache_entry_keeps_answer_counts_and_text_codes(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    BLD.build_subsets("temp", ov, vv, tmp_path / "a", cache_dir=cache, progress=False)
    (entry,) = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("metrics-")]
    kept = C._load(entry, texts_on_disk=False)[0].qa
    # Distinct lower-cased word tokens of each answer, counted here by a plain regex.
    expected = [len(set(re.findall(r"[A-Za-z0-9_]+", a.lower()))) for a in kept["answer"]]
    assert kept[S.ANSWER_DISTINCT].to_list() == expected
    # Text code: the first row with the same (question, answer), by a dict walk.
    first: dict[tuple[str, str], int] = {}
    codes = [
        first.setdefault((q, a), i) for i, (q, a) in enumerate(zip(kept["question"], kept["answer"]))
    ]
    assert kept[S.TEXT_CODE].to_list() == codes
    assert len(set(codes)) < len(codes)  # the pool repeats some pairs, so the codes are tested


def _published_pool(tmp_path, messy: bool) -> pl.DataFrame:
    ov, vv = _pool(tmp_path / "pool")
    if messy:  # a data_source the published reader collapses, and one it replaces
        lines = ov.read_text().splitlines()
        row = json.loads(lines[0])
        row["data_source"] = "  ai2d(cauldron)\t "
        lines[0] = json.dumps(row)
        row = json.loads(lines[1])
        row.pop("data_source")
        lines[1] = json.dumps(row)
        ov.write_text("\n".join(lines) + "\n")
    return PR.read_pool(ov, vv, mcq_on_raw=False).qa


@pytest.mark.parametrize("messy", [False, True])
def test_published_view_of_a_compat_parse_needs_no_mcq_pass(tmp_path, messy):
    qa = _published_pool(tmp_path, messy)
    full = BLD.published_view(qa)
    short = BLD.published_view(qa, mcq_collapsed=True)
    assert short.equals(full)
    assert (short is qa) == (not messy)  # nothing to change: the table itself
    if messy:
        assert not full["data_source"].equals(qa["data_source"])


def test_published_view_keeps_the_mcq_test_without_the_flag():
    qa = make_qa()
    raw = qa.with_columns(question_form=pl.lit("Open"))  # as if tested on other text
    out = BLD.published_view(raw)
    expected = np.where(qa["question"].str.contains(BLD.MCQ_PATTERN).to_numpy(), "MCQ", "Open")
    assert out["question_form"].to_list() == expected.tolist()


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\n\nb\n", b"\n\n\n", b"x" * 100 + b"\n" + b"y"],
)
def test_line_count_of_a_file_matches_its_bytes(tmp_path, content):
    """The metrics reader's line count (a short read means rows were skipped): a last line without
    a newline counts, blank lines count."""
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    assert BLD._line_count(None, path) == BLD._line_count(content, path)
    assert BLD._line_count(None, path) == content.count(b"\n") + (
        0 if not content or content.endswith(b"\n") else 1
    )
