"""The shared score rho(x): robust z-scores, the SC fallback, vds3, ppl_mid, amm_mid
(docs/method.md, Merge and the shared score).

Missing values (a failed or skipped model pass leaves vds/ppl null; NaN counts as null) take
the pool centre of their signal, i.e. z = 0, both here and in the k-means feature vector
(gdo_core.merge.feature_matrix); a missing TNC is 0.5 ("undecided"); SC < 0 or null gets the
SC fallback. Nothing missing ever turns `quality` null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from gdo_core.schema import ROBUST_SIGNALS

# Robust scale: IQR / 1.349 is the standard deviation of a normal distribution with that IQR.
IQR_PER_SIGMA = 1.349
IQR_FLOOR = 1e-6
SCALE_FLOOR = 1e-6

# SC fallback for QAs without sampled answers: sigma(0.6 * z(VDS) - 0.2 * |z(PPL)|).
SC_FALLBACK_VDS_WEIGHT = 0.6
SC_FALLBACK_PPL_WEIGHT = 0.2

# rho(x) weights, in the order of the formula; they sum to 1.
W_VDS3 = 0.28
W_SC = 0.18
W_PPL_MID = 0.14
W_AMM_MID = 0.12
W_TNC = 0.12
W_CLUSTER_REP = 0.10
W_CLUSTER_HARD = 0.06
QUALITY_WEIGHTS: dict[str, float] = {
    "vds3": W_VDS3,
    "sc_filled": W_SC,
    "ppl_mid": W_PPL_MID,
    "amm_mid": W_AMM_MID,
    "tnc_score": W_TNC,
    "cluster_rep": W_CLUSTER_REP,
    "cluster_hard": W_CLUSTER_HARD,
}

# TNC of a QA whose temporal-necessity pass gave nothing: the "undecided" value of
# docs/method.md, Descriptors (Temporal necessity).
TNC_MISSING = 0.5

# Signals whose robust stats are taken over SC >= 0 only (SC < 0 means "not computed").
NONNEGATIVE_ONLY_SIGNALS: frozenset[str] = frozenset({"sc"})


@dataclass(frozen=True)
class RobustStat:
    """Robust centre (median) and scale (IQR / 1.349, IQR floored) of one signal."""

    center: float
    scale: float
    q1: float
    q3: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """The stat as plain numbers (for reports and metadata)."""
        return asdict(self)


def robust_stat_from_quartiles(
    q1: float | None, median: float | None, q3: float | None, n: int
) -> RobustStat:
    """The stat from quartiles; a signal with no values gets centre 0 and scale 1."""
    if n == 0 or median is None or q1 is None or q3 is None:
        return RobustStat(center=0.0, scale=1.0, q1=0.0, q3=0.0, n=0)
    iqr = max(float(q3) - float(q1), IQR_FLOOR)
    return RobustStat(
        center=float(median), scale=iqr / IQR_PER_SIGMA, q1=float(q1), q3=float(q3), n=int(n)
    )


def valid_values_expr(signal: str) -> pl.Expr:
    """Filter for the values a signal's stats are taken over: finite, and >= 0 for SC."""
    keep = pl.col(signal).is_not_null() & pl.col(signal).is_finite()
    if signal in NONNEGATIVE_ONLY_SIGNALS:
        keep = keep & (pl.col(signal) >= 0)
    return keep


def robust_stat(values: np.ndarray | pl.Series, signal: str = "") -> RobustStat:
    """Median and IQR/1.349 of the valid values (linear-interpolated quartiles, as DuckDB quantile_cont)."""
    series = pl.Series("v", values, dtype=pl.Float64)
    kept = (
        pl.DataFrame({signal or "v": series}).filter(valid_values_expr(signal or "v")).to_series()
    )
    if kept.len() == 0:
        return robust_stat_from_quartiles(None, None, None, 0)
    q1, median, q3 = np.quantile(kept.to_numpy(), [0.25, 0.5, 0.75])
    return robust_stat_from_quartiles(q1, median, q3, kept.len())


def robust_stats(
    frame: pl.DataFrame, signals: tuple[str, ...] = ROBUST_SIGNALS
) -> dict[str, RobustStat]:
    """Robust stats of every signal over an in-memory frame."""
    return {signal: robust_stat(frame[signal], signal) for signal in signals}


def sigmoid(x: pl.Expr) -> pl.Expr:
    """Logistic function 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + (-x).exp())


def filled_signal(signal: str, stat: RobustStat) -> pl.Expr:
    """The signal with null/NaN/inf replaced by its pool centre (so its z is 0)."""
    col = pl.col(signal).cast(pl.Float64)
    return pl.when(col.is_not_null() & col.is_finite()).then(col).otherwise(pl.lit(stat.center))


def robust_z(signal: str, stat: RobustStat) -> pl.Expr:
    """z(v) = (v - centre) / max(scale, 1e-6), with missing values at the centre."""
    return (filled_signal(signal, stat) - stat.center) / max(stat.scale, SCALE_FLOOR)


def sc_fallback(z_vds: pl.Expr, z_ppl: pl.Expr) -> pl.Expr:
    """SC for QAs without sampled answers: sigma(0.6 * z(VDS) - 0.2 * |z(PPL)|)."""
    return sigmoid(SC_FALLBACK_VDS_WEIGHT * z_vds - SC_FALLBACK_PPL_WEIGHT * z_ppl.abs())


def sc_filled(stats: Mapping[str, RobustStat]) -> pl.Expr:
    """SC where it was computed (>= 0), the fallback where it is missing (< 0, null or NaN)."""
    sc = pl.col("sc").cast(pl.Float64)
    present = sc.is_not_null() & sc.is_finite() & (sc >= 0)
    fallback = sc_fallback(robust_z("vds", stats["vds"]), robust_z("ppl", stats["ppl"]))
    return pl.when(present).then(sc).otherwise(fallback)


def vds3(stats: Mapping[str, RobustStat]) -> pl.Expr:
    """vds3 = z(VDS) + z(frame_div)."""
    return robust_z("vds", stats["vds"]) + robust_z("frame_diversity", stats["frame_diversity"])


def ppl_mid(stats: Mapping[str, RobustStat]) -> pl.Expr:
    """ppl_mid = exp(-|z(PPL)|): highest for mid-difficulty QAs."""
    return (-robust_z("ppl", stats["ppl"]).abs()).exp()


def amm_mid(stats: Mapping[str, RobustStat]) -> pl.Expr:
    """amm_mid = exp(-|z(AMM)|): highest for typical motion."""
    return (-robust_z("amm", stats["amm"]).abs()).exp()


def tnc_filled() -> pl.Expr:
    """TNC with a missing value read as undecided (0.5)."""
    tnc = pl.col("tnc_score").cast(pl.Float64)
    return pl.when(tnc.is_not_null() & tnc.is_finite()).then(tnc).otherwise(pl.lit(TNC_MISSING))


def cluster_rep(dist: np.ndarray) -> np.ndarray:
    """cluster_rep = exp(-dist to the assigned k-means centre)."""
    return np.exp(-np.asarray(dist, dtype=np.float64))


def quality() -> pl.Expr:
    """rho(x) = 0.28 sigma(vds3) + 0.18 SC + 0.14 ppl_mid + 0.12 amm_mid + 0.12 TNC + 0.10 rep + 0.06 hard.

    Reads the columns vds3, sc_filled, ppl_mid, amm_mid, tnc_score, cluster_rep, cluster_hard.
    """
    return (
        W_VDS3 * sigmoid(pl.col("vds3"))
        + W_SC * pl.col("sc_filled")
        + W_PPL_MID * pl.col("ppl_mid")
        + W_AMM_MID * pl.col("amm_mid")
        + W_TNC * tnc_filled()
        + W_CLUSTER_REP * pl.col("cluster_rep")
        + W_CLUSTER_HARD * pl.col("cluster_hard")
    )


def add_scores(frame: pl.DataFrame, stats: Mapping[str, RobustStat]) -> pl.DataFrame:
    """Add sc_filled, vds3, ppl_mid, amm_mid and quality; needs cluster_rep and cluster_hard already."""
    return frame.with_columns(
        sc_filled=sc_filled(stats),
        vds3=vds3(stats),
        ppl_mid=ppl_mid(stats),
        amm_mid=amm_mid(stats),
    ).with_columns(quality=quality())


def weights_sum() -> float:
    """Sum of the rho(x) weights (1 by construction)."""
    return math.fsum(QUALITY_WEIGHTS.values())
