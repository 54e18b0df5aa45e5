"""The candidate score of subset construction, with its four ablation switches
(docs/method.md, Candidate score).

Heuristic terms depend on a few small integers and categories per QA, so each is computed once
per distinct key with Python's `math` (bit-identical to the published per-row code) and joined
back; the weighted sums are numpy element-wise in the published order of operations, which is
exact IEEE arithmetic, so compat mode reproduces the published scores to the last bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from gdo_core.strata import TOKEN_PATTERN

# Naturalness ("PPL-like"): -|ln qn - ln 14| - 1.25 |ln an - ln 16| - 1.2 max(0, 0.55 - distinct(a)/an).
NAT_QUESTION_CENTRE = 14.0
NAT_ANSWER_CENTRE = 16.0
NAT_ANSWER_WEIGHT = 1.25
NAT_REPEAT_WEIGHT = 1.2
NAT_DISTINCT_FLOOR = 0.55
# Difficulty: exp(-z^2 / (2 * 0.85^2)), z = |ln max(1, qn + 0.5 an) - ln 22|.
DIFF_CENTRE = 22.0
DIFF_ANSWER_SHARE = 0.5
DIFF_WIDTH = 0.85
# Alignment: mean of ln p_pool(value) over the six non-bucket fields, p floored.
ALIGN_FIELDS: tuple[str, ...] = (
    "duration_bucket",
    "temporal_category",
    "question_form",
    "q_len_bucket",
    "a_len_bucket",
    "source_group",
)
ALIGN_FLOOR = 1e-9
# Temporal bonus (video): Temporal 1.0, Mixed 0.2, other -0.5.
TEMPORAL_BONUS = {"Temporal": 1.0, "Mixed": 0.2}
TEMPORAL_BONUS_OTHER = -0.5
# base(video) = 1.0 nat + 0.85 diff + 0.9 align + 0.55 tbonus + 0.15 prior.
W_VIDEO_NAT, W_VIDEO_DIFF, W_VIDEO_ALIGN, W_VIDEO_TBONUS, W_VIDEO_PRIOR = 1.0, 0.85, 0.9, 0.55, 0.15
# base(image) = 1.1 nat + 0.85 diff + 0.9 align + 0.15 prior.
W_IMAGE_NAT, W_IMAGE_DIFF, W_IMAGE_ALIGN, W_IMAGE_PRIOR = 1.1, 0.85, 0.9, 0.15
BASE_SQUASH = 3.0  # base_n = tanh(base / 3)
# Metric terms: z-scores (mean/std) clipped to +-4, divided by 4.
Z_CAP = 4.0
W_VIDEO_BASE, W_VIDEO_VDS3, W_VIDEO_QUALITY = 0.35, 0.95, 0.35
MISSING_METRICS_PENALTY = 0.15  # a video QA without a metrics row
W_IMAGE_BASE, W_IMAGE_QUALITY = 0.9, 0.15
VDS3_FALLBACK_FD_WEIGHT = 0.5  # vds3' = z(VDS) + 0.5 z(frame_div) without the two losses
STD_VAR_FLOOR = 1e-12  # std := 1 when the variance is at or below this
WELFORD_CHUNK = 2048  # values per GIL hold of `welford_mean_std` (~0.4 ms)

METRIC_COLUMNS: tuple[str, ...] = ("loss_video", "loss_blind", "frame_diversity", "vds", "quality")
SCORE_COLUMNS: tuple[str, ...] = (
    "naturalness",
    "difficulty",
    "alignment",
    "temporal_bonus",
    "source_prior",
    "base_score",
    "base_norm",
    "vds3",
    "quality_z",
    "has_metrics",
    "score",
)


@dataclass(frozen=True)
class Ablations:
    """Switches that drop one term each (the paper's ablation rows)."""

    no_vds: bool = False  # drop the vds3' term of the video score
    no_ppl: bool = False  # drop naturalness from the heuristic base
    no_sc: bool = False  # drop the quality (q') term
    no_vds3_budget: bool = False  # skip the VDS3 budget adjustment

    def active(self) -> list[str]:
        """Names of the switches that are on."""
        return [name for name, on in vars(self).items() if on]


# ---- metric z-scores ----------------------------------------------------------------------


def welford_mean_std(values: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, sample std) by Welford's running update in input order (the published stats)."""
    count, mean, m2 = 0, 0.0, 0.0
    # The loop holds the GIL: it lets other threads have it between chunks (a thread asking for
    # it would otherwise wait for the 5 ms switch interval each time; the build parses meanwhile).
    for start in range(0, values.size, WELFORD_CHUNK):
        chunk = values[start : start + WELFORD_CHUNK].tolist()
        for count, x in enumerate(chunk, start + 1):  # (a counter in the body cost ~8% more)
            delta = x - mean
            mean += delta / count
            m2 += delta * (x - mean)
        time.sleep(0)
    if count <= 1:
        return count, mean, 1.0
    var = m2 / (count - 1)
    return count, mean, 1.0 if var <= STD_VAR_FLOOR else math.sqrt(var)


def numpy_mean_std(values: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, sample std) with numpy's pairwise sums; std 1 when the variance is ~0."""
    count = int(values.size)
    if count == 0:
        return 0, 0.0, 1.0
    mean = float(values.mean())
    if count <= 1:
        return count, mean, 1.0
    var = float(values.var(ddof=1))
    return count, mean, 1.0 if var <= STD_VAR_FLOOR else math.sqrt(var)


def metric_columns(rows: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each metric column present as float64 (NaN where the value is null or NaN)."""
    return {
        col: rows[col].fill_nan(None).to_numpy().astype(np.float64)
        for col in METRIC_COLUMNS
        if col in rows.columns
    }


def metric_stats(rows: pl.DataFrame, *, running: bool) -> dict[str, tuple[float, float]]:
    """Mean and sample std of each metric column over every metrics row (file order, nulls skipped)."""
    return metric_stats_of(metric_columns(rows), running=running)


def metric_stats_of(
    columns: dict[str, np.ndarray], *, running: bool
) -> dict[str, tuple[float, float]]:
    """`metric_stats` of columns from `metric_columns`."""
    out: dict[str, tuple[float, float]] = {}
    for col in METRIC_COLUMNS:
        if col not in columns:
            continue
        values = columns[col][~np.isnan(columns[col])]
        count, mean, std = (welford_mean_std if running else numpy_mean_std)(values)
        if count > 0:
            out[col] = (mean, std)
    return out


def _z(values: np.ndarray, stat: tuple[float, float] | None) -> np.ndarray:
    """Clipped z-scores; NaN where the value (or the whole signal) is missing."""
    if stat is None:
        return np.full(values.shape, np.nan)
    mean, std = stat
    if std <= 0:
        return np.where(np.isnan(values), np.nan, 0.0)
    return np.clip((values - mean) / std, -Z_CAP, Z_CAP)


def metric_z_terms_of(
    columns: dict[str, np.ndarray], n_rows: int, stats: dict[str, tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """(vds3', q') per metrics row, n_rows rows given as columns from `metric_columns`:
    -z(loss_video)+z(loss_blind)+z(frame_div), else fallbacks; z(quality)."""
    z = {}
    for col in METRIC_COLUMNS:
        values = columns[col] if col in columns else np.full(n_rows, np.nan)
        z[col] = _z(values, stats.get(col))
    lv, lb, fd, vds = z["loss_video"], z["loss_blind"], z["frame_diversity"], z["vds"]
    have_losses = ~np.isnan(lv) & ~np.isnan(lb) & ~np.isnan(fd)
    have_vds_fd = ~np.isnan(vds) & ~np.isnan(fd)
    have_vds = ~np.isnan(vds)
    vds3 = np.where(
        have_losses,
        -lv + lb + fd,
        np.where(have_vds_fd, vds + VDS3_FALLBACK_FD_WEIGHT * fd, np.where(have_vds, vds, 0.0)),
    )
    quality = np.where(np.isnan(z["quality"]), 0.0, z["quality"])
    return vds3, quality


# ---- heuristic terms, one Python evaluation per distinct key ------------------------------


def naturalness(qn_raw: int, an_raw: int, distinct: int) -> float:
    """PPL-like naturalness of a QA from its token counts and distinct answer tokens."""
    qn, an = max(1, qn_raw), max(1, an_raw)
    q_term = -abs(math.log(qn) - math.log(NAT_QUESTION_CENTRE))
    a_term = -abs(math.log(an) - math.log(NAT_ANSWER_CENTRE))
    repeat_pen = max(0.0, NAT_DISTINCT_FLOOR - distinct / float(an))
    return float(q_term + NAT_ANSWER_WEIGHT * a_term - NAT_REPEAT_WEIGHT * repeat_pen)


def naturalness_many(qn_raw: np.ndarray, an_raw: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """`naturalness` of many keys at once: logs from `math` per token count, the rest element-wise."""
    qn, an = np.maximum(qn_raw, 1), np.maximum(an_raw, 1)
    q_terms = {q: -abs(math.log(q) - math.log(NAT_QUESTION_CENTRE)) for q in np.unique(qn).tolist()}
    a_terms = {a: -abs(math.log(a) - math.log(NAT_ANSWER_CENTRE)) for a in np.unique(an).tolist()}
    q_term = np.array([q_terms[q] for q in qn.tolist()], dtype=np.float64)
    a_term = np.array([a_terms[a] for a in an.tolist()], dtype=np.float64)
    gap = NAT_DISTINCT_FLOOR - distinct.astype(np.float64) / an.astype(np.float64)
    repeat_pen = np.where(gap > 0.0, gap, 0.0)  # max(0.0, gap), as Python's max picks
    return q_term + NAT_ANSWER_WEIGHT * a_term - NAT_REPEAT_WEIGHT * repeat_pen


def difficulty(qn: int, an: int) -> float:
    """Difficulty bump centred on 22 effective tokens (qn + 0.5 an)."""
    x = max(1.0, qn + DIFF_ANSWER_SHARE * an)
    z = abs(math.log(x) - math.log(DIFF_CENTRE))
    return float(math.exp(-z * z / (2.0 * DIFF_WIDTH * DIFF_WIDTH)))


def alignment(
    values: tuple[str, ...],
    probs: dict[str, dict[str, float]],
    log_cache: dict[tuple[str, str], float] | None = None,
) -> float:
    """Mean log pool probability of the six non-bucket field values (logs memoised in log_cache)."""
    cache = {} if log_cache is None else log_cache
    logs = []
    for f, v in zip(ALIGN_FIELDS, values):
        log = cache.get((f, v))
        if log is None:
            log = cache[(f, v)] = math.log(max(probs.get(f, {}).get(v, ALIGN_FLOOR), ALIGN_FLOOR))
        logs.append(log)
    return float(sum(logs) / len(logs))


def source_prior(count: int, total: int) -> float:
    """ln((total + 1) / (count(data_source) + 1)): rarer sources score higher."""
    return float(math.log((total + 1.0) / (count + 1.0)))


KEY_BITS = 21  # token counts are packed three to an int64 key
DENSE_KEYS_MAX = 1 << 22  # key spaces up to this size are looked up in a flat table, not sorted


def _per_key(columns: list[np.ndarray], fn, *, many: bool = False) -> np.ndarray:
    """fn(*key) for every row of integer key columns, evaluated once per distinct key.

    many: fn takes the distinct keys as arrays, one call for all of them.
    """
    stacked = [np.asarray(c, dtype=np.int64) for c in columns]
    n = stacked[0].size if stacked else 0
    if n == 0:
        return np.zeros(n)
    sizes = [int(c.max()) + 1 for c in stacked]
    if min(int(c.min()) for c in stacked) >= 0 and math.prod(sizes) <= DENSE_KEYS_MAX:
        flat = np.ravel_multi_index(stacked, sizes)
        present = np.zeros(math.prod(sizes), dtype=bool)
        present[flat] = True
        keys = np.nonzero(present)[0]
        parts = np.unravel_index(keys, sizes)
        table = np.zeros(present.size)
        if many:
            table[keys] = fn(*parts)
        else:
            table[keys] = [fn(*key) for key in zip(*[p.tolist() for p in parts])]
        return table[flat]
    return _per_key_sorted(np.stack(stacked, axis=1), fn, many)


def _per_key_sorted(stacked: np.ndarray, fn, many: bool) -> np.ndarray:
    """`_per_key` through a sort of the (packed) keys, for wide key ranges."""
    if stacked.size and (stacked.min() >= 0) and (stacked.max() < (1 << KEY_BITS)):
        packed = np.zeros(stacked.shape[0], dtype=np.int64)
        for j in range(stacked.shape[1]):
            packed = (packed << KEY_BITS) | stacked[:, j]
        _uniq_packed, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
        uniq = stacked[first]
    else:
        uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
    if many:
        values = np.asarray(fn(*uniq.T), dtype=np.float64)
    else:
        values = np.array([fn(*row) for row in uniq.tolist()], dtype=np.float64)
    return values[inverse.reshape(-1)] if values.size else np.zeros(stacked.shape[0])


PLAIN_TEXT_PATTERN = r"^[A-Za-z0-9_]+( [A-Za-z0-9_]+)*$"  # tokens joined by single spaces
PLAIN_LOWER_PATTERN = r"^[a-z0-9_]+( [a-z0-9_]+)*$"  # the same, already lower case


TOKENIZE_CHUNK_ROWS = 16_384  # bounds the transient token lists (chunks run in parallel): 100k-row chunks held ~60 MB more


def _distinct_tokens(texts: pl.Series) -> np.ndarray:
    """Distinct token counts: lower-case plain texts are split on spaces (chunks as parallel
    queries), any other text takes `_distinct_tokens_chunk`."""
    texts = texts.alias("text")
    t = pl.col("text")
    counts = pl.when(t.str.contains(PLAIN_LOWER_PATTERN)).then(t.str.split(" ").list.n_unique())
    queries = [
        texts.slice(i, TOKENIZE_CHUNK_ROWS).to_frame().lazy().select(counts)
        for i in range(0, texts.len(), TOKENIZE_CHUNK_ROWS)
    ]
    if not queries:
        return np.zeros(0, dtype=np.int64)
    done = pl.concat([frame.to_series() for frame in pl.collect_all(queries)])
    out = done.fill_null(-1).cast(pl.Int64).to_numpy().copy()
    rest = np.nonzero(out < 0)[0]
    if rest.size:
        out[rest] = np.concatenate(
            [
                _distinct_tokens_chunk(texts.gather(rest[i : i + TOKENIZE_CHUNK_ROWS]))
                for i in range(0, rest.size, TOKENIZE_CHUNK_ROWS)
            ]
        )
    return out


def _distinct_tokens_chunk(texts: pl.Series) -> np.ndarray:
    """Distinct token counts; plain texts (tokens and single spaces) take the 2x cheaper split path."""
    plain = texts.str.contains(PLAIN_TEXT_PATTERN).fill_null(False).to_numpy()
    out = np.zeros(texts.len(), dtype=np.int64)
    if plain.any():
        out[plain] = (
            texts.filter(plain).str.to_lowercase().str.split(" ").list.n_unique().to_numpy()
        )
    if not plain.all():
        rest = texts.filter(~plain).str.to_lowercase().str.extract_all(TOKEN_PATTERN)
        out[~plain] = rest.list.n_unique().fill_null(0).to_numpy()
    return out


def distinct_answer_tokens(answers: pl.Series, answer_len: np.ndarray | None = None) -> np.ndarray:
    """Distinct lower-cased `[A-Za-z0-9_]+` tokens per answer (once per distinct answer when many repeat)."""
    n = answers.len()
    if answer_len is not None:  # one token or none: distinct == count, no need to tokenise
        short = np.asarray(answer_len) <= 1
        if short.any():
            out = np.asarray(answer_len, dtype=np.int64).copy()
            if not short.all():
                out[~short] = distinct_answer_tokens(answers.filter(~short))
            return out
    # Mostly unique texts: tokenise every row (distinct hashes count the texts closely enough here).
    if answers.hash(seed=0).n_unique() > 0.7 * n:
        return _distinct_tokens(answers)
    table = answers.unique(maintain_order=True).alias("answer").to_frame()
    table = table.with_columns(pl.Series("d", _distinct_tokens(table["answer"])))
    joined = (
        answers.alias("answer")
        .to_frame()
        .join(table, on="answer", how="left", maintain_order="left", nulls_equal=True)
    )
    return joined["d"].to_numpy()


@dataclass
class ScoreInputs:
    """Per-QA integer keys and the per-stratum / per-source values the heuristic terms need."""

    question_len: np.ndarray
    answer_len: np.ndarray
    distinct_answer: np.ndarray
    is_video: np.ndarray
    stratum_code: np.ndarray  # per QA, into strata_fields
    strata_fields: list[dict[str, str]]  # per stratum: its field values
    source_code: np.ndarray  # per QA, into source_counts
    source_counts: list[int]  # per source code: QAs with that data_source
    field_probs: dict[str, dict[str, float]]
    total: int


def _weighted_sum(terms: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """w1*x1 + w2*x2 + ... summed left to right (as the expression would) into one new array."""
    (w, x), rest = terms[0], terms[1:]
    total = w * x
    for w, x in rest:
        total += w * x
    return total


def score_terms(
    inputs: ScoreInputs,
    *,
    qa_vds3: np.ndarray,
    qa_quality: np.ndarray,
    has_metrics: np.ndarray,
    ablations: Ablations = Ablations(),
) -> pl.DataFrame:
    """Every score term and the final score per QA row (columns SCORE_COLUMNS, row order kept)."""
    nat = _per_key(
        [inputs.question_len, inputs.answer_len, inputs.distinct_answer],
        naturalness_many,
        many=True,
    )
    diff = _per_key([inputs.question_len, inputs.answer_len], difficulty)
    logs: dict[tuple[str, str], float] = {}
    align_by_stratum = np.array(
        [
            alignment(tuple(f[k] for k in ALIGN_FIELDS), inputs.field_probs, logs)
            for f in inputs.strata_fields
        ],
        dtype=np.float64,
    )
    tbonus_by_stratum = np.array(
        [
            TEMPORAL_BONUS.get(f["temporal_category"], TEMPORAL_BONUS_OTHER)
            for f in inputs.strata_fields
        ],
        dtype=np.float64,
    )
    prior_by_source = np.array(
        [source_prior(c, inputs.total) for c in inputs.source_counts], dtype=np.float64
    )
    align = align_by_stratum[inputs.stratum_code]
    tbonus = tbonus_by_stratum[inputs.stratum_code]
    prior = prior_by_source[inputs.source_code]
    is_video = inputs.is_video
    ppl_term = np.zeros_like(nat) if ablations.no_ppl else nat
    # Same operation order as the published per-row sums, so the floats match exactly; the sums
    # run in place (at a million rows each array is 8 MB).
    base = _weighted_sum(
        [
            (W_IMAGE_NAT, ppl_term),
            (W_IMAGE_DIFF, diff),
            (W_IMAGE_ALIGN, align),
            (W_IMAGE_PRIOR, prior),
        ]
    )
    base_video = _weighted_sum(
        [
            (W_VIDEO_NAT, ppl_term),
            (W_VIDEO_DIFF, diff),
            (W_VIDEO_ALIGN, align),
            (W_VIDEO_TBONUS, tbonus),
            (W_VIDEO_PRIOR, prior),
        ]
    )
    np.copyto(base, base_video, where=is_video)
    del base_video
    uniq, inverse = np.unique(base, return_inverse=True)
    # math.tanh once per distinct base (numpy's tanh may differ in the last bit).
    squashed = (uniq / BASE_SQUASH).tolist()
    base_norm = np.fromiter(map(math.tanh, squashed), dtype=np.float64, count=len(squashed))[
        inverse.reshape(-1)
    ]
    del uniq, inverse, squashed
    vds3_norm = np.clip(qa_vds3, -Z_CAP, Z_CAP)
    vds3_norm /= max(Z_CAP, 1e-6)
    quality_norm = np.clip(qa_quality, -Z_CAP, Z_CAP)
    quality_norm /= max(Z_CAP, 1e-6)
    zero = np.zeros_like(base)
    score = W_IMAGE_BASE * base_norm  # the image score, then the video rows' in their place
    score += np.where(has_metrics & (not ablations.no_sc), W_IMAGE_QUALITY * quality_norm, zero)
    video = W_VIDEO_BASE * base_norm
    video += np.where(has_metrics & (not ablations.no_vds), W_VIDEO_VDS3 * vds3_norm, zero)
    video += np.where(has_metrics & (not ablations.no_sc), W_VIDEO_QUALITY * quality_norm, zero)
    video -= np.where(has_metrics, zero, MISSING_METRICS_PENALTY)
    np.copyto(score, video, where=is_video)
    del video, vds3_norm, quality_norm, zero
    return pl.DataFrame(
        {
            "naturalness": nat,
            "difficulty": diff,
            "alignment": align,
            "temporal_bonus": np.where(is_video, tbonus, 0.0),
            "source_prior": prior,
            "base_score": base,
            "base_norm": base_norm,
            "vds3": qa_vds3,
            "quality_z": qa_quality,
            "has_metrics": has_metrics,
            "score": score,
        }
    )
