"""The vectorised selection paths against the plain loops they replace: same rows, same order, same bits."""

import heapq
import random
import re

import numpy as np
import polars as pl
import pytest
from test_select import make_metrics, make_qa, small_profile

from gdo_core import acceptance
from gdo_core import candidate_score as C
from gdo_core import draws as draw_module
from gdo_core import select as S

# ---- seeded draws -------------------------------------------------------------------------------


def _published_draws_loop(n_rows, reservoir_cap, seed):
    """The published scan: random() per row, randint(1, seen) once the reservoir is full, then shuffle."""
    rng = random.Random(seed)
    fill = min(reservoir_cap, n_rows)
    tie = [rng.random() for _ in range(fill)]
    reservoir = list(range(fill))
    for i in range(fill, n_rows):
        tie.append(rng.random())
        if reservoir_cap <= 0:
            continue
        r = rng.randint(1, i + 1) - 1
        if r < reservoir_cap:
            reservoir[r] = i
    uni_order = list(reservoir)
    rng.shuffle(uni_order)
    return tie, reservoir, uni_order


@pytest.mark.parametrize(
    ("n", "cap"),
    [(0, 5), (5, 0), (10, -3), (1, 1), (2, 1), (10, 3), (3, 10), (2000, 1), (2000, 1999)]
    + [(4100, 1023), (4100, 1024), (70000, 300), (30000, 16384)],
)
def test_published_draws_equal_the_scan(n, cap):
    draws = S.published_draws(n, cap, 42)
    tie, reservoir, uni_order = _published_draws_loop(n, cap, 42)
    assert draws.tie.tolist() == tie and draws.tie.dtype == np.float64
    assert draws.reservoir.tolist() == reservoir
    assert draws.uni_order.tolist() == uni_order


def test_published_draws_draw_a_longer_stream_when_short(monkeypatch):
    monkeypatch.setattr(draw_module, "_expected_words", lambda n_rows, fill: 8)
    draws = S.published_draws(3000, 100, 7)
    tie, reservoir, uni_order = _published_draws_loop(3000, 100, 7)
    assert draws.tie.tolist() == tie
    assert draws.reservoir.tolist() == reservoir and draws.uni_order.tolist() == uni_order


# ---- candidate pools ----------------------------------------------------------------------------


def _pools_full_sort(codes, score, tie, caps, published_heap):
    return S._candidate_pools_sorted(
        np.asarray(codes, dtype=np.int64), score, tie, caps, published_heap=published_heap
    )


@pytest.mark.parametrize("levels", [2, 5, 1000, 0])
@pytest.mark.parametrize("published_heap", [False, True])
def test_candidate_pools_equal_the_full_sort(levels, published_heap):
    rng = np.random.default_rng(levels)
    n, strata = 6000, 40
    codes = rng.integers(0, strata, n)
    score = rng.integers(0, levels, n) / 7 if levels else rng.random(n)
    tie = rng.random(n)
    tie[rng.integers(0, n, 50)] = 0.5  # equal (score, tie) keys: row order decides
    caps = rng.integers(0, 200, strata)
    caps[3] = 0
    pools, replayed = S.candidate_pools(codes, score, tie, caps, published_heap=published_heap)
    expected, expected_replayed = _pools_full_sort(codes, score, tie, caps, published_heap)
    assert pools.tolist() == expected.tolist() and replayed == expected_replayed


@pytest.mark.parametrize("published_heap", [False, True])
def test_nan_scores_rank_below_every_number(published_heap):
    # Hand-worked: stratum 0 holds rows 0-2, stratum 1 rows 3-4; a NaN score ranks last.
    codes = np.array([0, 0, 0, 1, 1])
    score = np.array([np.nan, 0.5, 0.9, np.nan, 0.1])
    tie = np.array([0.3, 0.2, 0.1, 0.9, 0.4])
    pools, replayed = S.candidate_pools(codes, score, tie, np.array([2, 1]), published_heap=published_heap)
    # Stratum 0 keeps 0.9 (row 2) then 0.5 (row 1); stratum 1 keeps 0.1 (row 4) over NaN (row 3).
    # No number ties the score just past a cap (0.5 vs NaN, 0.1 vs NaN), so nothing is replayed.
    assert pools.tolist() == [2, 1, 4] and replayed == 0


def test_nan_scores_fill_a_pool_after_the_numbers_by_tie_break():
    # Cap 2 over one number and two NaNs: the number, then the NaN row with the higher tie-break.
    codes = np.zeros(3, dtype=np.int64)
    score = np.array([np.nan, 0.3, np.nan])
    tie = np.array([0.2, 0.5, 0.7])
    pools, replayed = S.candidate_pools(codes, score, tie, np.array([2]), published_heap=False)
    assert pools.tolist() == [1, 2] and replayed == 0


@pytest.mark.parametrize(("published_heap", "expected", "replayed"), [(False, [1], 0), (True, [0], 1)])
def test_a_nan_tie_break_ranks_last_unless_the_published_heap_replays(published_heap, expected, replayed):
    # Equal scores, row 0 with a NaN tie-break: sorted, the NaN goes last (row 1 is kept); the
    # scores tie across the cap of 1, so published mode replays the heap in scan order, which
    # keeps the first row pushed (row 0: the next one only replaces it on a higher score).
    codes = np.zeros(2, dtype=np.int64)
    score, tie = np.array([0.5, 0.5]), np.array([np.nan, 0.1])
    pools, n = S.candidate_pools(codes, score, tie, np.array([1]), published_heap=published_heap)
    assert pools.tolist() == expected and n == replayed


def test_heap_replay_keeps_the_published_heap_order():
    rng = np.random.default_rng(9)
    codes, score, tie = (
        np.zeros(300, dtype=np.int64),
        rng.integers(0, 3, 300) / 1.0,
        rng.random(300),
    )
    pools, replayed = S.candidate_pools(codes, score, tie, np.array([40]), published_heap=True)
    heap: list = []
    for i in range(300):
        key = (score[i], tie[i], i)
        if len(heap) < 40:
            heapq.heappush(heap, key)
        elif key[0] > heap[0][0]:
            heapq.heapreplace(heap, key)
    assert replayed == 1 and pools.tolist() == [k[2] for k in heap]


# ---- acceptance ---------------------------------------------------------------------------------


def _fill_loop(state, pool, need, enforce_text, attrs, max_video, max_per_video, limit):
    """The acceptance rule row by row over Python containers (the published fill)."""
    used_uid, used_text, per_video, rows = state
    remain = max(0, need)
    if remain <= 0:
        return 0
    n_video = sum(1 for i in rows if attrs["is_video"][i])
    for i in pool:
        if remain <= 0 or len(rows) >= limit:
            break
        if attrs["uid"][i] in used_uid:
            continue
        if enforce_text and attrs["text"][i] in used_text:
            continue
        if attrs["is_video"][i]:
            if max_video is not None and n_video >= max_video:
                continue
            v = attrs["video"][i]
            if v and per_video.get(v, 0) >= max_per_video:
                continue
            n_video += 1
            if v:
                per_video[v] = per_video.get(v, 0) + 1
        rows.append(i)
        used_uid.add(attrs["uid"][i])
        if enforce_text:
            used_text.add(attrs["text"][i])
        remain -= 1
    return remain


def _random_attrs(rng, n):
    return {
        "uid": [f"u{x}" for x in rng.integers(0, int(n * 0.9), n)],
        "text": [f"t{x}" for x in rng.integers(0, int(n * 0.7), n)],
        "is_video": (rng.random(n) < 0.6).tolist(),
        "video": ["" if x == 0 else f"v{x}" for x in rng.integers(0, n // 12 + 2, n)],
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("loop_max", [0, 10**9])  # all vectorised / all walked
def test_fill_equals_the_row_by_row_rule(seed, loop_max, monkeypatch):
    monkeypatch.setattr(acceptance, "GREEDY_LOOP_MAX", loop_max)
    rng = np.random.default_rng(seed)
    n = 3000
    attrs = _random_attrs(rng, n)
    max_video = [None, 700, 0][seed % 3]
    max_per_video, limit = int(rng.integers(1, 6)), int(rng.integers(500, 2500))
    acc = S._Acceptor(
        attrs["uid"],
        attrs["text"],
        attrs["is_video"],
        attrs["video"],
        max_video=max_video,
        max_per_video=max_per_video,
        limit=limit,
    )
    state = (set(), set(), {}, [])
    for step in range(5):
        pool = rng.permutation(n)[: int(rng.integers(0, n))]
        need, enforce = int(rng.integers(-5, 900)), bool(step % 3)
        expected = _fill_loop(
            state, pool.tolist(), need, enforce, attrs, max_video, max_per_video, limit
        )
        assert acc.fill(pool, need, "s", enforce_text=enforce) == expected
        assert acc.rows == state[3]


def test_fill_falls_back_to_the_walk_when_rounds_run_out(monkeypatch):
    rng = np.random.default_rng(11)
    attrs = _random_attrs(rng, 2000)
    outcomes = []
    for rounds in (0, 1, 64):
        monkeypatch.setattr(acceptance, "GREEDY_MAX_ROUNDS", rounds)
        monkeypatch.setattr(acceptance, "GREEDY_LOOP_MAX", 0)
        acc = S._Acceptor(
            attrs["uid"],
            attrs["text"],
            attrs["is_video"],
            attrs["video"],
            max_video=500,
            max_per_video=2,
            limit=1500,
        )
        acc.fill(np.arange(2000), 1400, "s")
        outcomes.append(acc.rows)
    assert outcomes[0] == outcomes[1] == outcomes[2]


@pytest.mark.parametrize("mode", ["default", "published"])
def test_selection_is_the_same_walked_or_vectorised(mode, monkeypatch):
    qa = make_qa(600, 400, seed=3)
    qa = qa.with_columns(  # repeated texts and uids so that every acceptance key binds
        answer=pl.when(pl.int_range(pl.len()) % 9 == 0).then(pl.lit("dog")).otherwise("answer"),
        qa_uid=pl.when(pl.int_range(pl.len()) % 31 == 0).then(pl.lit("dup")).otherwise("qa_uid"),
    )
    metrics = make_metrics(qa)
    options = S.SelectOptions(mode=mode)
    results = []
    for loop_max in (0, 10**9):
        monkeypatch.setattr(acceptance, "GREEDY_LOOP_MAX", loop_max)
        results.append(S.select_subsets(qa, small_profile(), metrics=metrics, options=options))
    a, b = results
    assert a.gdo.rows == b.gdo.rows and a.gdo.stages == b.gdo.stages
    assert a.uni_rows == b.uni_rows and a.report == b.report


# ---- codes, gathers, summaries --------------------------------------------------------------------


def _first_seen_codes_by_dict(values: list) -> tuple[list[int], list[int], list[int]]:
    """(code per row, first row per code, count per code) by one dict walk (None is one value)."""
    code_of: dict = {}
    codes, first, counts = [], [], []
    for i, v in enumerate(values):
        if v not in code_of:
            code_of[v] = len(first)
            first.append(i)
            counts.append(0)
        codes.append(code_of[v])
        counts[code_of[v]] += 1
    return codes, first, counts


def test_first_seen_codes_equal_a_dict_walk():
    values = [random.Random(i).choice("abcde") for i in range(500)]
    fast = S.first_seen_codes(pl.Series(values))
    assert [x.tolist() for x in fast] == list(_first_seen_codes_by_dict(values))


def test_first_seen_codes_with_nulls_by_hand():
    # b first (code 0), null next (code 1, all nulls one value), then a (2) and c (3).
    values = pl.Series(["b", None, "a", "b", None, "c"])
    code, first, counts = S.first_seen_codes(values)
    assert code.tolist() == [0, 1, 2, 0, 1, 3]
    assert first.tolist() == [0, 1, 2, 5] and counts.tolist() == [2, 2, 1, 1]


def test_first_seen_codes_with_nulls_equal_a_dict_walk():
    values = [random.Random(i).choice(["a", "b", None, "c"]) for i in range(300)]
    got = S.first_seen_codes(pl.Series(values, dtype=pl.String))
    assert [x.tolist() for x in got] == list(_first_seen_codes_by_dict(values))


def test_series_codes_are_equal_exactly_for_equal_values():
    rng = random.Random(4)
    values = pl.Series([rng.choice(["a", "b", "", None, "a|||b"]) for _ in range(400)])
    codes = S._series_codes(values)
    listed = values.to_list()
    for i in range(0, 400, 7):
        for j in range(400):
            assert (codes[i] == codes[j]) == (listed[i] == listed[j])
    assert S._series_codes(pl.Series(["x", "y"])).tolist() == [0, 1]


def _subset_summary_by_groups(qa, rows, field_probs):
    """The summary by one maintain_order group_by per field over the gathered rows."""
    sub = qa.select(list(field_probs))[np.asarray(rows, dtype=np.int64)]
    js = {}
    for name, target in field_probs.items():
        counts = dict(sub.group_by(name, maintain_order=True).len().iter_rows())
        total = sum(counts.values())
        js[name] = S.js_divergence({k: v / total for k, v in counts.items()}, target)
    bucket = dict(sub.group_by("bucket", maintain_order=True).len().iter_rows())
    return {"count": len(rows), "bucket": bucket, "js_to_full_profile": js}


def test_subset_summary_equals_the_per_field_group_bys():
    qa = make_qa(500, 300)
    probs = S.pool_profile(qa).field_probs()
    rows = np.random.default_rng(1).integers(0, qa.height, 700).tolist()
    got, expected = S.subset_summary(qa, rows, probs), _subset_summary_by_groups(qa, rows, probs)
    assert got == expected and list(got["bucket"]) == list(expected["bucket"])


# ---- candidate score ------------------------------------------------------------------------------


def test_naturalness_many_equals_naturalness():
    q, a, d = np.meshgrid(np.arange(0, 40), np.arange(0, 30), np.arange(0, 31), indexing="ij")
    q, a, d = q.ravel(), a.ravel(), d.ravel()
    many = C.naturalness_many(q, a, d)
    single = [C.naturalness(*key) for key in zip(q.tolist(), a.tolist(), d.tolist())]
    assert many.tobytes() == np.array(single).tobytes()


@pytest.mark.parametrize("dense_max", [0, 1 << 22])  # sorted keys / flat table
def test_per_key_paths_agree(dense_max, monkeypatch):
    monkeypatch.setattr(C, "DENSE_KEYS_MAX", dense_max)
    rng = np.random.default_rng(0)
    q, a = rng.integers(0, 50, 5000), rng.integers(0, 80, 5000)
    d = np.minimum(rng.integers(0, 40, 5000), a)
    expected = np.array([C.naturalness(*k) for k in zip(q.tolist(), a.tolist(), d.tolist())])
    assert C._per_key([q, a, d], C.naturalness).tobytes() == expected.tobytes()
    assert C._per_key([q, a, d], C.naturalness_many, many=True).tobytes() == expected.tobytes()
    diff = np.array([C.difficulty(*k) for k in zip(q.tolist(), a.tolist())])
    assert C._per_key([q, a], C.difficulty).tobytes() == diff.tobytes()


def test_distinct_tokens_across_chunks_and_text_kinds(monkeypatch):
    monkeypatch.setattr(C, "TOKENIZE_CHUNK_ROWS", 3)
    texts = [
        "a b a",
        "dog cat dog",
        "Dog dog",
        "x_1 x_1, y",
        " lead space",
        "double  space",
        "trail ",
        "é a",
        None,
        "",
        "K \u212a k",
        "one two three one",
    ] * 3
    expected = [len(set(re.findall(r"[A-Za-z0-9_]+", t.lower()))) if t else 0 for t in texts]
    assert C.distinct_answer_tokens(pl.Series(texts, dtype=pl.String)).tolist() == expected
    assert C._distinct_tokens(pl.Series([], dtype=pl.String)).tolist() == []


def test_duplicate_check_by_hash_agrees():
    assert not S._has_duplicates(pl.Series(["a", "b", None]))
    assert S._has_duplicates(pl.Series(["a", "b", "a"]))
    assert S._has_duplicates(pl.Series([None, "b", None]))
