"""Convergence analysis (docs/method.md, Convergence analysis): peak match, reduction, deltas,
frontier, ablations, plots.

Input is the `scores` table (schema.SCORE_SCHEMA): one accuracy per (arm, profile, checkpoint,
task, subtask). A profile's Uni-10x arm is the reference: its final accuracy per benchmark is what
the GDO 1x curve must reach, and its final samples_seen is what GDO's peak match is compared with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gdo_core import schema as S

Curve = Sequence[tuple[float, float]]  # (samples_seen, accuracy) in step order

SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "profile": pl.String(),
    "task": pl.String(),
    "uni_final": pl.Float64(),
    "uni_samples": pl.Int64(),
    "gdo_final": pl.Float64(),
    "gdo_samples": pl.Int64(),
    "peak_match_samples": pl.Float64(),  # null: the GDO curve never reached uni_final
    "reduction": pl.Float64(),  # uni_samples / peak_match_samples
    "delta": pl.Float64(),  # gdo_final - uni_final, in points
}
SUBTASK_SCHEMA: dict[str, pl.DataType] = {
    "profile": pl.String(),
    "task": pl.String(),
    "subtask": pl.String(),
    "gdo_final": pl.Float64(),
    "uni_final": pl.Float64(),
    "delta": pl.Float64(),
}
FRONTIER_SCHEMA: dict[str, pl.DataType] = {
    "task": pl.String(),
    "profile": pl.String(),
    "budget_samples": pl.Int64(),  # samples in the profile's 1x epoch
    "accuracy": pl.Float64(),
    "on_frontier": pl.Boolean(),  # no other profile is as cheap and more accurate, or cheaper and as accurate
}
ABLATION_SCHEMA: dict[str, pl.DataType] = {
    "profile": pl.String(),
    "task": pl.String(),
    "arm": pl.String(),
    "final": pl.Float64(),
    "gdo_final": pl.Float64(),
    "delta_vs_gdo": pl.Float64(),
}


def samples_seen(step: int, global_batch: int) -> int:
    """Samples a run has seen after `step` optimizer steps of `global_batch` samples."""
    return step * global_batch


def peak_match_samples(curve: Curve, reference: float) -> float | None:
    """Smallest samples_seen where the linearly interpolated curve reaches reference (None if never)."""
    previous: tuple[float, float] | None = None
    for x, y in curve:
        if y >= reference:
            if previous is None or previous[1] >= reference:
                return float(x)
            x0, y0 = previous
            return x0 + (reference - y0) * (x - x0) / (y - y0)
        previous = (x, y)
    return None


def reduction(uni_samples: float, peak_match: float | None) -> float | None:
    """How many times fewer samples GDO needed: Uni-10x samples / peak match (None if no match)."""
    if peak_match is None or peak_match <= 0:
        return None
    return uni_samples / peak_match


def above_chance_p(correct: int, questions: int, chance: float) -> float:
    """One-sided exact binomial p-value: P(at least `correct` of `questions` right when each is a guess right with probability `chance`)."""
    if not 0 <= correct <= questions or not 0.0 <= chance <= 1.0:
        raise ValueError(f"need 0 <= correct <= questions and chance in [0, 1], got {correct}/{questions}, {chance}")
    return min(1.0, sum(math.comb(questions, k) * chance**k * (1 - chance) ** (questions - k) for k in range(correct, questions + 1)))


def accuracy_p_value(accuracy: float, questions: int, chance: float) -> float:
    """`above_chance_p` of an accuracy in percent over `questions` questions against a chance in percent."""
    return above_chance_p(round(accuracy * questions / 100), questions, chance / 100)


def arm_curve(scores: pl.DataFrame, profile: str, arm: str, task: str, subtask: str = S.OVERALL) -> list[tuple[int, float]]:
    """(samples_seen, accuracy) of one arm's checkpoints on one benchmark, in step order."""
    rows = scores.filter(
        (pl.col("profile") == profile)
        & (pl.col("arm") == arm)
        & (pl.col("task") == task)
        & (pl.col("subtask") == subtask)
    ).sort("step")
    return list(zip(rows["samples_seen"].to_list(), rows["accuracy"].to_list(), strict=True))


def _final(scores: pl.DataFrame) -> pl.DataFrame:
    """The last checkpoint's row per (profile, arm, task, subtask)."""
    return scores.sort("step").group_by(["profile", "arm", "task", "subtask"], maintain_order=True).last()


def _compared(scores: pl.DataFrame) -> list[tuple[str, str]]:
    """(profile, task) pairs that have both a GDO and a Uni-10x curve, sorted."""
    overall = scores.filter(pl.col("subtask") == S.OVERALL)
    arms = overall.group_by(["profile", "task"]).agg(pl.col("arm").unique())
    pairs = [
        (p, t) for p, t, a in arms.iter_rows() if S.ARM_GDO in a and S.ARM_UNI in a
    ]
    return sorted(pairs)


def summary_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per (profile, benchmark): finals, samples, peak match, reduction and delta
    (docs/method.md, Convergence analysis)."""
    final = _final(scores)
    rows = []
    for profile, task in _compared(scores):
        here = final.filter(
            (pl.col("profile") == profile) & (pl.col("task") == task) & (pl.col("subtask") == S.OVERALL)
        )
        uni = here.filter(pl.col("arm") == S.ARM_UNI).row(0, named=True)
        gdo = here.filter(pl.col("arm") == S.ARM_GDO).row(0, named=True)
        peak = peak_match_samples(arm_curve(scores, profile, S.ARM_GDO, task), uni["accuracy"])
        rows.append(
            {
                "profile": profile,
                "task": task,
                "uni_final": uni["accuracy"],
                "uni_samples": uni["samples_seen"],
                "gdo_final": gdo["accuracy"],
                "gdo_samples": gdo["samples_seen"],
                "peak_match_samples": peak,
                "reduction": reduction(uni["samples_seen"], peak),
                "delta": gdo["accuracy"] - uni["accuracy"],
            }
        )
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA, orient="row")


def subtask_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per (profile, benchmark, subtask): GDO final - Uni-10x final, largest gain first."""
    final = _final(scores).filter(pl.col("subtask") != S.OVERALL)
    keys = ["profile", "task", "subtask"]
    gdo = final.filter(pl.col("arm") == S.ARM_GDO).select(*keys, gdo_final="accuracy")
    uni = final.filter(pl.col("arm") == S.ARM_UNI).select(*keys, uni_final="accuracy")
    table = gdo.join(uni, on=keys, how="inner").with_columns(
        delta=pl.col("gdo_final") - pl.col("uni_final")
    )
    return table.select(list(SUBTASK_SCHEMA)).cast(SUBTASK_SCHEMA).sort(
        ["profile", "task", "delta", "subtask"], descending=[False, False, True, False]
    )


def top_gains(subtasks: pl.DataFrame, k: int = 5) -> pl.DataFrame:
    """The k subtasks where GDO gained most over Uni-10x (positive deltas only)."""
    return subtasks.filter(pl.col("delta") > 0).sort(["delta", "subtask"], descending=[True, False]).head(k)


def adverse_subtasks(subtasks: pl.DataFrame) -> pl.DataFrame:
    """Subtasks where GDO ended below Uni-10x, worst first."""
    return subtasks.filter(pl.col("delta") < 0).sort(["delta", "subtask"])


def frontier_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Accuracy vs 1x budget per profile's GDO arm, with the Pareto frontier marked, per benchmark."""
    final = _final(scores).filter((pl.col("arm") == S.ARM_GDO) & (pl.col("subtask") == S.OVERALL))
    rows = []
    for task in sorted(final["task"].unique().to_list()):
        points = final.filter(pl.col("task") == task).sort("profile")
        pairs = list(zip(points["samples_seen"].to_list(), points["accuracy"].to_list(), strict=True))
        for profile, (budget, accuracy) in zip(points["profile"].to_list(), pairs, strict=True):
            dominated = any(
                (b <= budget and a >= accuracy) and (b < budget or a > accuracy) for b, a in pairs
            )
            rows.append(
                {
                    "task": task,
                    "profile": profile,
                    "budget_samples": budget,
                    "accuracy": accuracy,
                    "on_frontier": not dominated,
                }
            )
    return pl.DataFrame(rows, schema=FRONTIER_SCHEMA, orient="row").sort(["task", "budget_samples", "profile"])


def ablation_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Final accuracy of every ablation arm that was trained, against its profile's full GDO arm."""
    final = _final(scores).filter(pl.col("subtask") == S.OVERALL)
    gdo = final.filter(pl.col("arm") == S.ARM_GDO).select("profile", "task", gdo_final="accuracy")
    ablated = final.filter(pl.col("arm").is_in(list(S.ABLATION_ARMS))).select(
        "profile", "task", "arm", final="accuracy"
    )
    table = ablated.join(gdo, on=["profile", "task"], how="inner").with_columns(
        delta_vs_gdo=pl.col("final") - pl.col("gdo_final")
    )
    order = {arm: i for i, arm in enumerate(S.ABLATION_ARMS)}
    return (
        table.select(list(ABLATION_SCHEMA))
        .cast(ABLATION_SCHEMA)
        .sort(["profile", "task", pl.col("arm").replace_strict(order, return_dtype=pl.Int32)])
    )


@dataclass(frozen=True)
class ConvergenceTables:
    """Every table of the convergence report."""

    summary: pl.DataFrame
    subtasks: pl.DataFrame
    frontier: pl.DataFrame
    ablations: pl.DataFrame

    def named(self) -> dict[str, pl.DataFrame]:
        """The tables by file stem."""
        return {
            "summary": self.summary,
            "subtasks": self.subtasks,
            "frontier": self.frontier,
            "ablations": self.ablations,
        }


def analyse(scores: pl.DataFrame) -> ConvergenceTables:
    """All convergence tables of a scores table."""
    scores = scores.select(list(S.SCORE_SCHEMA)).cast(S.SCORE_SCHEMA)
    return ConvergenceTables(
        summary_table(scores), subtask_table(scores), frontier_table(scores), ablation_table(scores)
    )


def chance_table(scores: pl.DataFrame, baselines: Mapping[str, Mapping[str, float]]) -> pl.DataFrame:
    """Final accuracy per profile, benchmark and subtask, one column per arm, beside the subtask's
    chance and constant-answer baselines (percent) and each arm's `above_chance_p` ('p <arm>')."""
    last = scores.sort("step").group_by(["profile", "arm", "task", "subtask"], maintain_order=True).last()
    wide = last.pivot(on="arm", index=["profile", "task", "subtask"], values="accuracy").sort(["profile", "task", "subtask"])
    arms = [c for c in wide.columns if c not in ("profile", "task", "subtask")]

    def p_value(subtask: str, accuracy: float | None) -> float | None:
        base = baselines.get(subtask)
        if accuracy is None or base is None or subtask == S.OVERALL:
            return None  # overall mixes subtasks of different chance: no single binomial
        return accuracy_p_value(accuracy, int(base["questions"]), base["chance"])

    return wide.with_columns(
        **{
            kind: pl.col("subtask").replace_strict(
                {sub: b[kind] for sub, b in baselines.items()}, default=None, return_dtype=pl.Float64
            )
            for kind in ("chance", "constant")
        },
        **{
            f"p {arm}": pl.Series([p_value(sub, acc) for sub, acc in zip(wide["subtask"], wide[arm])], dtype=pl.Float64)
            for arm in arms
        },
    )


def p_values_as_text(table: pl.DataFrame) -> pl.DataFrame:
    """A chance_table with its p-value columns as text of 2 significant digits (markdown rounds floats)."""
    return table.with_columns(
        pl.col(c).map_elements(lambda v: f"{v:.2g}", return_dtype=pl.String) for c in table.columns if c.startswith("p ")
    )


def markdown(table: pl.DataFrame, float_digits: int = 1) -> str:
    """A table as GitHub markdown, floats rounded, nulls shown as '-'."""
    rounded = table.with_columns(pl.selectors.float().round(float_digits))
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=200,
        tbl_width_chars=1000,
    ):
        return str(rounded).replace("| null ", "| -    ")


def _format_samples(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "never"
    return f"{value:,.0f}"


def headline(summary: pl.DataFrame) -> list[str]:
    """One line per (profile, benchmark) in the paper's words."""
    lines = []
    for row in summary.iter_rows(named=True):
        peak = row["peak_match_samples"]
        matched = (
            f"matched Uni-10x's {row['uni_final']:.1f}% at {_format_samples(peak)} samples "
            f"({row['reduction']:.1f}x fewer than its {row['uni_samples']:,})"
            if peak is not None
            else f"never reached Uni-10x's {row['uni_final']:.1f}% ({row['uni_samples']:,} samples)"
        )
        lines.append(
            f"{row['profile']} / {row['task']}: GDO 1x {matched}; final "
            f"{row['gdo_final']:.1f}% vs {row['uni_final']:.1f}% (delta {row['delta']:+.1f} points)"
        )
    return lines


# ---- plots ------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels with units, a light grid and a small legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_curves(scores: pl.DataFrame, summary: pl.DataFrame, path: Path) -> Path:
    """Accuracy vs samples seen per benchmark: GDO 1x and Uni-10x curves, reference line, peak match."""
    tasks = sorted(summary["task"].unique().to_list()) or ["(no scores)"]
    figure = _figure(5.2 * len(tasks), 4.2)
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    colours = [f"C{i}" for i in range(10)]
    for ax, task in zip(axes, tasks, strict=True):
        rows = summary.filter(pl.col("task") == task)
        for i, row in enumerate(rows.iter_rows(named=True)):
            colour, profile = colours[i % len(colours)], row["profile"]
            for arm, style, label in ((S.ARM_GDO, "-o", "GDO 1x"), (S.ARM_UNI, "--s", "Uni-10x")):
                curve = arm_curve(scores, profile, arm, task)
                ax.plot(*zip(*curve, strict=True), style, color=colour, label=f"{profile} {label}", markersize=4)
            ax.axhline(row["uni_final"], color=colour, linestyle=":", linewidth=1,
                       label=f"{profile} Uni-10x final ({row['uni_final']:.1f}%)")
            if row["peak_match_samples"] is not None:
                ax.plot([row["peak_match_samples"]], [row["uni_final"]], marker="*", markersize=14,
                        color=colour, markeredgecolor="black", linestyle="none",
                        label=f"{profile} peak match ({row['peak_match_samples']:,.0f} samples)")
        _style(ax, f"{task}: accuracy vs samples seen", "samples seen (QAs)", "accuracy (%)")
    return _save(figure, path)


def plot_frontier(frontier: pl.DataFrame, summary: pl.DataFrame, path: Path) -> Path:
    """Final accuracy vs 1x budget per profile (frontier joined), Uni-10x finals as crosses."""
    tasks = sorted(frontier["task"].unique().to_list()) or ["(no scores)"]
    figure = _figure(5.2 * len(tasks), 4.2)
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        points = frontier.filter(pl.col("task") == task)
        ax.scatter(points["budget_samples"], points["accuracy"], color="C0", label="GDO 1x (per profile)", zorder=3)
        for row in points.iter_rows(named=True):
            ax.annotate(row["profile"], (row["budget_samples"], row["accuracy"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        best = points.filter(pl.col("on_frontier")).sort("budget_samples")
        ax.plot(best["budget_samples"], best["accuracy"], color="C0", linewidth=1, label="frontier")
        uni = summary.filter(pl.col("task") == task)
        ax.scatter(uni["uni_samples"], uni["uni_final"], marker="x", color="C3", label="Uni-10x (per profile)", zorder=3)
        _style(ax, f"{task}: accuracy vs 1x budget", "training samples (QAs, one epoch)", "final accuracy (%)")
    return _save(figure, path)


def plot_subtask_heatmap(subtasks: pl.DataFrame, path: Path) -> Path:
    """GDO 1x - Uni-10x final accuracy (points) per profile and subtask, diverging around zero."""
    import numpy as np

    columns = sorted({f"{t}/{s}" for t, s in zip(subtasks["task"], subtasks["subtask"], strict=True)}) or ["-"]
    profiles = sorted(subtasks["profile"].unique().to_list()) or ["-"]
    grid = np.full((len(profiles), len(columns)), np.nan)
    for row in subtasks.iter_rows(named=True):
        grid[profiles.index(row["profile"]), columns.index(f"{row['task']}/{row['subtask']}")] = row["delta"]
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    limit = limit or 1.0
    figure = _figure(max(5.0, 1.1 * len(columns) + 2), 1.8 + 0.6 * len(profiles))
    ax = figure.subplots()
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(profiles)), profiles, fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            strong = abs(value) > 0.6 * limit  # dark cell: white text
            ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if strong else "black")
    ax.set_title("GDO 1x - Uni-10x, final accuracy per subtask (points)")
    ax.set_xlabel("benchmark / subtask")
    ax.set_ylabel("profile")
    figure.colorbar(image, ax=ax, label="delta (points)")
    return _save(figure, path)
