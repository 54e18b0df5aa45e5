"""Convergence arithmetic on hand-made curves; every expected number is worked out by hand below."""

import math

import polars as pl
import pytest

from gdo_core import convergence as C
from gdo_core import schema as S


def test_samples_seen_is_step_times_global_batch():
    # 8 processes x batch 1 x accumulation 1 (the paper's recipe): step 64 has seen 512 samples.
    assert C.samples_seen(64, 8) == 512


@pytest.mark.parametrize(
    ("curve", "reference", "expected"),
    [
        # crosses between (200, 40) and (300, 60): 200 + (50 - 40) * 100 / 20 = 250
        ([(100, 20.0), (200, 40.0), (300, 60.0)], 50.0, 250.0),
        # reached exactly at a checkpoint (a tie counts as reached)
        ([(100, 20.0), (200, 40.0), (300, 60.0)], 40.0, 200.0),
        # already above at the first checkpoint: that checkpoint, no extrapolation towards 0
        ([(100, 20.0), (200, 40.0)], 10.0, 100.0),
        # never reached
        ([(100, 20.0), (200, 40.0), (300, 60.0)], 70.0, None),
        # a flat start at the reference: the first checkpoint
        ([(1, 30.0), (2, 30.0), (3, 50.0)], 30.0, 1.0),
        # the first crossing counts even if the curve dips later: 1 + (40 - 10) * 1 / 40 = 1.75
        ([(1, 10.0), (2, 50.0), (3, 20.0)], 40.0, 1.75),
        # no checkpoints at all
        ([], 10.0, None),
    ],
)
def test_peak_match_interpolates_linearly(curve, reference, expected):
    got = C.peak_match_samples(curve, reference)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_reduction_is_uni_samples_over_peak_match():
    # The paper's example: 512k / 35.4k = 14.46x.
    assert C.reduction(512_000, 35_400) == pytest.approx(14.463, abs=1e-3)
    assert C.reduction(512_000, None) is None


def _rows(profile, arm, task, subtask, points):
    return [
        {
            "arm": arm,
            "profile": profile,
            "checkpoint": f"checkpoint-{step}",
            "step": step,
            "samples_seen": samples,
            "task": task,
            "subtask": subtask,
            "accuracy": acc,
        }
        for step, samples, acc in points
    ]


@pytest.fixture()
def scores() -> pl.DataFrame:
    rows = []
    # temp_plus: Uni-10x 5 checkpoints of 200 samples, GDO 1x 5 checkpoints of 20 samples.
    uni = [(s, 200 * s, a) for s, a in zip(range(1, 6), (20.0, 30.0, 35.0, 38.0, 40.0))]
    gdo = [(s, 20 * s, a) for s, a in zip(range(1, 6), (25.0, 35.0, 45.0, 42.0, 41.0))]
    rows += _rows("temp_plus", S.ARM_UNI, "demo", S.OVERALL, uni)
    rows += _rows("temp_plus", S.ARM_GDO, "demo", S.OVERALL, gdo)
    # a second benchmark the GDO arm never reaches
    rows += _rows("temp_plus", S.ARM_UNI, "other", S.OVERALL, [(5, 1000, 60.0)])
    rows += _rows("temp_plus", S.ARM_GDO, "other", S.OVERALL, [(1, 20, 10.0), (5, 100, 50.0)])
    # subtasks at the last checkpoint (and an earlier one that must be ignored)
    rows += _rows("temp_plus", S.ARM_GDO, "demo", "colour", [(1, 20, 99.0), (5, 100, 50.0)])
    rows += _rows("temp_plus", S.ARM_UNI, "demo", "colour", [(5, 1000, 30.0)])
    rows += _rows("temp_plus", S.ARM_GDO, "demo", "count", [(5, 100, 20.0)])
    rows += _rows("temp_plus", S.ARM_UNI, "demo", "count", [(5, 1000, 25.0)])
    rows += _rows("temp_plus", S.ARM_GDO, "demo", "order", [(5, 100, 30.0)])
    rows += _rows("temp_plus", S.ARM_UNI, "demo", "order", [(5, 1000, 30.0)])
    # two more profiles' GDO arms for the frontier, and an ablation arm
    rows += _rows("minloss", S.ARM_GDO, "demo", S.OVERALL, [(4, 80, 45.0)])
    rows += _rows("diverse", S.ARM_GDO, "demo", S.OVERALL, [(6, 120, 50.0)])
    rows += _rows("temp_plus", "gdo_wo_vds", "demo", S.OVERALL, [(5, 100, 38.0)])
    return pl.DataFrame(rows, schema=S.SCORE_SCHEMA, orient="row")


def test_summary_peak_match_reduction_and_delta(scores):
    summary = C.summary_table(scores)
    assert summary.select("profile", "task").rows() == [("temp_plus", "demo"), ("temp_plus", "other")]
    demo = summary.row(0, named=True)
    # reference 40 (Uni final); GDO crosses between (40, 35) and (60, 45): 40 + 5 * 20 / 10 = 50
    assert demo["uni_final"] == 40.0 and demo["uni_samples"] == 1000
    assert demo["gdo_final"] == 41.0 and demo["gdo_samples"] == 100
    assert demo["peak_match_samples"] == pytest.approx(50.0)
    assert demo["reduction"] == pytest.approx(20.0)  # 1000 / 50
    assert demo["delta"] == pytest.approx(1.0)  # 41 - 40
    other = summary.row(1, named=True)
    assert other["peak_match_samples"] is None and other["reduction"] is None
    assert other["delta"] == pytest.approx(-10.0)
    lines = C.headline(summary)
    assert "50 samples (20.0x fewer than its 1,000)" in lines[0]
    assert "never reached Uni-10x's 60.0%" in lines[1]


def test_subtask_deltas_gains_and_adverse(scores):
    subtasks = C.subtask_table(scores)
    # largest gain first; the earlier colour checkpoint (99%) is not the final one
    assert subtasks.select("subtask", "delta").rows() == [("colour", 20.0), ("order", 0.0), ("count", -5.0)]
    assert C.top_gains(subtasks)["subtask"].to_list() == ["colour"]
    assert C.adverse_subtasks(subtasks)["subtask"].to_list() == ["count"]


def test_frontier_marks_dominated_profiles(scores):
    frontier = C.frontier_table(scores).filter(pl.col("task") == "demo")
    # minloss (80 samples, 45%) is cheaper and better than temp_plus (100, 41); diverse (120, 50) is the best.
    assert frontier.select("profile", "budget_samples", "on_frontier").rows() == [
        ("minloss", 80, True),
        ("temp_plus", 100, False),
        ("diverse", 120, True),
    ]


def test_ablation_rows_against_full_gdo(scores):
    ablations = C.ablation_table(scores)
    assert ablations.rows() == [("temp_plus", "demo", "gdo_wo_vds", 38.0, 41.0, -3.0)]


def test_markdown_and_plots(scores, tmp_path):
    tables = C.analyse(scores)
    text = C.markdown(tables.summary)
    header = [cell.strip() for cell in text.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["profile", "task", "uni_final"]
    other = [cell.strip() for cell in text.splitlines()[3].strip("|").split("|")]
    assert other[:2] == ["temp_plus", "other"] and other[6:8] == ["-", "-"]  # never matched: no peak, no reduction
    for plot in (
        C.plot_curves(scores, tables.summary, tmp_path / "curves.png"),
        C.plot_frontier(tables.frontier, tables.summary, tmp_path / "frontier.png"),
        C.plot_subtask_heatmap(tables.subtasks, tmp_path / "subtasks.png"),
    ):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(tables.summary["delta"].sum())


@pytest.mark.parametrize(
    ("correct", "questions", "chance", "expected"),
    [
        (0, 5, 0.25, 1.0),  # at least none right: certain
        (2, 2, 0.5, 0.25),  # both right: 1/2 * 1/2
        (1, 3, 0.25, 1 - 0.75**3),  # at least one right: 1 - P(none)
        (3, 3, 0.25, 0.25**3),
    ],
)
def test_above_chance_p_by_hand(correct, questions, chance, expected):
    assert C.above_chance_p(correct, questions, chance) == pytest.approx(expected)


def test_above_chance_p_matches_scipy_binomial_tail():
    from scipy.stats import binom

    for correct, questions, chance in [(10, 20, 0.25), (24, 50, 0.25), (4, 20, 1 / 6), (0, 20, 1 / 6)]:
        assert C.above_chance_p(correct, questions, chance) == pytest.approx(binom.sf(correct - 1, questions, chance))


def test_accuracy_p_value_counts_the_right_answers():
    # 50% of 20 questions is 10 right: the same tail as above_chance_p(10, 20, 0.25)
    assert C.accuracy_p_value(50.0, 20, 25.0) == pytest.approx(C.above_chance_p(10, 20, 0.25))
    assert C.accuracy_p_value(100.0, 20, 50.0) == pytest.approx(0.5**20)


def test_above_chance_p_rejects_impossible_counts():
    with pytest.raises(ValueError, match="correct <= questions"):
        C.above_chance_p(5, 4, 0.25)

