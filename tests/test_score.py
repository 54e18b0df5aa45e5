"""Every formula of docs/method.md, Merge and the shared score, pinned on hand-made rows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gdo_core import score
from gdo_core.score import RobustStat


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Hand-picked stats: centre and scale chosen so the z-scores below are round numbers.
STATS = {
    "vds": RobustStat(center=0.2, scale=0.5, q1=0.0, q3=0.0, n=10),
    "ppl": RobustStat(center=3.0, scale=2.0, q1=0.0, q3=0.0, n=10),
    "amm": RobustStat(center=1.0, scale=0.5, q1=0.0, q3=0.0, n=10),
    "frame_diversity": RobustStat(center=0.1, scale=0.05, q1=0.0, q3=0.0, n=10),
    "sc": RobustStat(center=0.5, scale=0.3, q1=0.0, q3=0.0, n=10),
}


def rows() -> pl.DataFrame:
    # A: every signal present; B: SC missing (-1); C: model pass failed (nulls); D: SC exactly 0.
    return pl.DataFrame(
        {
            "vds": [0.7, 0.7, None, 0.2],
            "ppl": [7.0, 7.0, None, 3.0],
            "amm": [0.5, 0.5, 1.0, 1.0],
            "frame_diversity": [0.2, 0.2, 0.15, 0.1],
            "sc": [0.6, -1.0, None, 0.0],
            "tnc_score": [1.0, 1.0, None, 0.0],
            "cluster_rep": [0.8, 0.8, 0.5, 1.0],
            "cluster_hard": [0.2, 0.2, 0.5, 0.0],
        },
        schema={
            "vds": pl.Float64,
            "ppl": pl.Float64,
            "amm": pl.Float64,
            "frame_diversity": pl.Float64,
            "sc": pl.Float64,
            "tnc_score": pl.Float64,
            "cluster_rep": pl.Float64,
            "cluster_hard": pl.Float64,
        },
    )


def test_robust_stat_median_and_iqr_over_1349() -> None:
    # Linear quartiles of [1, 2, 3, 4, 5, 100]: q1 = 2.25, median = 3.5, q3 = 4.75.
    stat = score.robust_stat(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0]))
    assert stat.center == pytest.approx(3.5)
    assert (stat.q1, stat.q3) == (pytest.approx(2.25), pytest.approx(4.75))
    assert stat.scale == pytest.approx(2.5 / 1.349)
    assert stat.n == 6
    z = pl.DataFrame({"vds": [100.0, 3.5, 1.0]}).select(score.robust_z("vds", stat)).to_series()
    assert z.to_list() == pytest.approx(
        [(100 - 3.5) / (2.5 / 1.349), 0.0, (1 - 3.5) / (2.5 / 1.349)]
    )


def test_robust_stat_ignores_missing_and_floors_iqr() -> None:
    stat = score.robust_stat(pl.Series([2.0, 2.0, None, float("nan"), float("inf"), 2.0]))
    assert stat.n == 3 and stat.center == 2.0
    assert stat.scale == pytest.approx(1e-6 / 1.349)
    # z divides by max(scale, 1e-6), so a constant signal gives z = delta / 1e-6.
    z = pl.DataFrame({"amm": [3.0]}).select(score.robust_z("amm", stat)).item()
    assert z == pytest.approx(1.0 / 1e-6)


def test_sc_stats_use_only_nonnegative_values() -> None:
    stat = score.robust_stat(np.array([-1.0, -1.0, 0.2, 0.4, 0.6]), "sc")
    assert stat.n == 3 and stat.center == pytest.approx(0.4)
    assert stat.scale == pytest.approx((0.5 - 0.3) / 1.349)


def test_empty_signal_gets_identity_scale() -> None:
    stat = score.robust_stat(pl.Series([None, None], dtype=pl.Float64))
    assert (stat.center, stat.scale, stat.n) == (0.0, 1.0, 0)


def test_robust_stats_of_a_frame() -> None:
    stats = score.robust_stats(rows())
    assert set(stats) == {"vds", "ppl", "amm", "frame_diversity", "sc"}
    assert stats["amm"].center == pytest.approx(0.75)
    assert stats["sc"].n == 2  # -1 and null are not SC values


def test_sc_fallback_only_where_sc_is_missing() -> None:
    out = rows().select(score.sc_filled(STATS)).to_series().to_list()
    assert out[0] == pytest.approx(0.6)  # present: kept
    # z(VDS) = (0.7 - 0.2) / 0.5 = 1, z(PPL) = (7 - 3) / 2 = 2: sigma(0.6 * 1 - 0.2 * 2) = sigma(0.2)
    assert out[1] == pytest.approx(sig(0.2))
    assert out[1] == pytest.approx(0.549833997)
    assert out[2] == pytest.approx(0.5)  # model pass failed: z = 0 for both, sigma(0)
    assert out[3] == 0.0  # SC = 0 is a computed value, not missing


def test_vds3_ppl_mid_amm_mid() -> None:
    frame = rows().select(
        vds3=score.vds3(STATS), ppl_mid=score.ppl_mid(STATS), amm_mid=score.amm_mid(STATS)
    )
    # Row A: z(VDS) = 1, z(frame_div) = (0.2 - 0.1) / 0.05 = 2; z(PPL) = 2; z(AMM) = (0.5 - 1) / 0.5 = -1.
    assert frame["vds3"][0] == pytest.approx(3.0)
    assert frame["ppl_mid"][0] == pytest.approx(math.exp(-2.0))
    assert frame["amm_mid"][0] == pytest.approx(math.exp(-1.0))
    # Row C: VDS and PPL missing sit at the centre (z = 0); frame_div z = 1.
    assert frame["vds3"][2] == pytest.approx(1.0)
    assert frame["ppl_mid"][2] == pytest.approx(1.0)
    assert frame["amm_mid"][2] == pytest.approx(1.0)


def test_quality_weights_are_named_and_sum_to_one() -> None:
    assert score.QUALITY_WEIGHTS == {
        "vds3": 0.28,
        "sc_filled": 0.18,
        "ppl_mid": 0.14,
        "amm_mid": 0.12,
        "tnc_score": 0.12,
        "cluster_rep": 0.10,
        "cluster_hard": 0.06,
    }
    assert score.weights_sum() == pytest.approx(1.0, abs=1e-12)


def test_quality_on_a_hand_computed_row() -> None:
    scored = score.add_scores(rows(), STATS)
    expected_a = (
        0.28 * sig(3.0)
        + 0.18 * 0.6
        + 0.14 * math.exp(-2.0)
        + 0.12 * math.exp(-1.0)
        + 0.12 * 1.0
        + 0.10 * 0.8
        + 0.06 * 0.2
    )
    assert expected_a == pytest.approx(0.649813, abs=1e-6)  # the same sum done by hand
    assert scored["quality"][0] == pytest.approx(expected_a, rel=1e-12)
    expected_b = expected_a - 0.18 * 0.6 + 0.18 * sig(0.2)
    assert scored["quality"][1] == pytest.approx(expected_b, rel=1e-12)
    # Row C: vds3 = 1, SC = 0.5, ppl_mid = amm_mid = 1, TNC missing = 0.5.
    expected_c = 0.28 * sig(1.0) + 0.18 * 0.5 + 0.14 + 0.12 + 0.12 * 0.5 + 0.10 * 0.5 + 0.06 * 0.5
    assert scored["quality"][2] == pytest.approx(expected_c, rel=1e-12)
    # Row D: every z = 0, SC = 0, TNC = 0, rep = 1.
    assert scored["quality"][3] == pytest.approx(0.28 * 0.5 + 0.14 + 0.12 + 0.10, rel=1e-12)
    assert scored["quality"].is_finite().all()


def test_quality_is_bounded_when_every_term_is_extreme() -> None:
    low = pl.DataFrame(
        {
            "vds3": [-1e9],
            "sc_filled": [0.0],
            "ppl_mid": [0.0],
            "amm_mid": [0.0],
            "tnc_score": [0.0],
            "cluster_rep": [0.0],
            "cluster_hard": [0.0],
        }
    )
    high = pl.DataFrame(
        {
            "vds3": [1e9],
            "sc_filled": [1.0],
            "ppl_mid": [1.0],
            "amm_mid": [1.0],
            "tnc_score": [1.0],
            "cluster_rep": [1.0],
            "cluster_hard": [1.0],
        }
    )
    assert low.select(score.quality()).item() == pytest.approx(0.0)
    assert high.select(score.quality()).item() == pytest.approx(1.0)


def test_cluster_rep_is_exp_minus_distance() -> None:
    assert score.cluster_rep(np.array([0.0, 1.0, 2.5])) == pytest.approx(
        [1.0, math.exp(-1.0), math.exp(-2.5)]
    )
