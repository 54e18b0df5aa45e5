"""The parsed-pool cache of `gdo build`: hits give the same files, any change of input misses."""

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gdo_core import build as BLD
from gdo_core import pool_cache as C


def _pool(folder: Path, n: int = 120, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["cat", "dog", "ball", "after", "then", "red", "blue", "jump"]
    with open(folder / "ov.jsonl", "w") as fh:
        for i in range(n):
            msgs = []
            for t in range(rng.randint(1, 3)):
                question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
                msgs += [
                    {"role": "user", "content": ("<image>\n" if t == 0 else "") + question + "?"},
                    {
                        "role": "assistant",
                        "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 9))),
                    },
                ]
            source = rng.choice(["ai2d(cauldron)", "chartqa(cauldron)", "ureader_cap"])
            fh.write(
                json.dumps(
                    {
                        "id": f"o{i}",
                        "images": [f"i/{i}.jpg"],
                        "data_source": source,
                        "messages": msgs,
                    }
                )
                + "\n"
            )
        fh.write("{broken\n")
    with open(folder / "vv.jsonl", "w") as fh:
        for i in range(n // 2):
            msgs = [
                {
                    "role": "user",
                    "content": "<video>\nWhat happens after the " + rng.choice(words) + "?",
                },
                {"role": "assistant", "content": "It " + rng.choice(words) + "s."},
            ]
            frames = [f"f/{i}/{k}.jpg" for k in range(rng.choice([8, 40, 90]))]
            fh.write(
                json.dumps(
                    {
                        "id": f"v{i}",
                        "video_id": f"c{i // 2}",
                        "images": frames,
                        "data_source": "0_30_s_academic_v0_1",
                        "messages": msgs,
                    }
                )
                + "\n"
            )
    return folder / "ov.jsonl", folder / "vv.jsonl"


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".parquet")}


def test_second_build_hits_and_writes_the_same_files(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    first = BLD.build_subsets(
        "temp", ov, vv, tmp_path / "a", cache_dir=cache, progress=False, target_count=20
    )
    second = BLD.build_subsets(
        "temp", ov, vv, tmp_path / "b", cache_dir=cache, progress=False, target_count=20
    )
    off = BLD.build_subsets(
        "temp", ov, vv, tmp_path / "c", cache=False, progress=False, target_count=20
    )
    assert first.parse_cache["status"] == "miss"
    assert second.parse_cache["status"] == "hit"
    assert off.parse_cache["status"] == "off"
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "c")
    assert first.report["pool"]["rejects"] == second.report["pool"]["rejects"] == 1


def test_changed_file_or_options_miss(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    run = lambda **kw: BLD.build_subsets(
        "temp", ov, vv, tmp_path / "out", cache_dir=cache, progress=False, target_count=20, **kw
    ).parse_cache["status"]
    assert run() == "miss" and run() == "hit"
    assert run(target_frames=8) == "miss" and run(compat="published") == "miss"
    with open(vv, "a") as fh:
        fh.write("\n")
    os.utime(vv, ns=(1, 2))
    assert run() == "miss" and run() == "hit"


def test_hit_gives_the_parsed_tables_column_for_column(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    missed = C.cached_read_pool(ov, vv, cache_dir=cache, target_frames=8)
    hit = C.cached_read_pool(ov, vv, cache_dir=cache, target_frames=8)
    assert (missed.status, hit.status) == ("miss", "hit")
    assert hit.result.qa.schema == missed.result.qa.schema  # same columns, same order
    assert hit.result.qa.equals(missed.result.qa)
    assert hit.result.frames.schema == missed.result.frames.schema
    assert hit.result.frames.equals(missed.result.frames)
    assert hit.result.rejects.equals(missed.result.rejects)
    entry = cache / hit.key
    assert pl.read_ipc_schema(entry / "text.arrow") == {"question": pl.String, "answer": pl.String}
    assert "question" not in pl.read_parquet_schema(entry / "qa.parquet")
    assert pl.read_ipc_schema(entry / "frames.arrow") == dict(missed.result.frames.schema)


@pytest.mark.parametrize("part", ["qa.parquet", "text.arrow", "frames.arrow", "columns.json"])
def test_damaged_entry_is_parsed_again_and_old_entries_are_dropped(tmp_path, part):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    BLD.build_subsets(
        "temp", ov, vv, tmp_path / "out", cache_dir=cache, progress=False, target_count=20
    )
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / part).write_bytes(b"not parquet")
    again = BLD.build_subsets(
        "temp", ov, vv, tmp_path / "out", cache_dir=cache, progress=False, target_count=20
    )
    assert again.parse_cache["status"] == "miss"
    for frames in range(1, C.KEEP_ENTRIES + 3):
        BLD.build_subsets(
            "temp",
            ov,
            vv,
            tmp_path / "out",
            cache_dir=cache,
            progress=False,
            target_count=20,
            target_frames=frames,
        )
    assert (
        len([p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")])
        == C.KEEP_ENTRIES
    )


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GDO_CACHE_DIR", str(tmp_path / "x"))
    assert C.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("GDO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.default_cache_dir() == tmp_path / "xdg" / "gdo" / "pools"


def test_stale_temporary_folders_are_removed(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    stale, fresh = cache / ".killed.abc", cache / ".running.def"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "qa.parquet").write_bytes(b"partial")
    old = time.time() - C.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    BLD.build_subsets("temp", ov, vv, tmp_path / "out", cache_dir=cache, progress=False)
    assert not stale.exists() and fresh.exists()


def _metrics(folder: Path, ov: Path, vv: Path, bad_line: bool = False) -> Path:
    """Merged-metrics JSONL for the pool's QAs (one missing, one repeated), optionally a bad line."""
    uids = C.cached_read_pool(ov, vv, cache_dir=None, target_frames=8).result.qa["qa_uid"].to_list()
    rng = random.Random(1)
    lines = [
        json.dumps({"qa_uid": u, "vds": rng.gauss(0, 1), "quality_score": rng.random()})
        for u in uids[1:] + uids[:3]
    ]
    if bad_line:
        lines.insert(5, '{"qa_uid": "x", "vds": 0.1')  # not valid JSON
    path = folder / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("compat", [None, "published"])
def test_prepared_metrics_are_cached_and_give_the_same_files(tmp_path, compat):
    ov, vv = _pool(tmp_path / "pool")
    metrics = _metrics(tmp_path, ov, vv, bad_line=(compat == "published"))  # lenient: counted
    cache = tmp_path / "cache"
    settings = {"compat": compat, "progress": False, "target_count": 20, "metrics": metrics}
    runs = {
        "a": BLD.build_subsets("temp", ov, vv, tmp_path / "a", cache_dir=cache, **settings),
        "b": BLD.build_subsets("temp", ov, vv, tmp_path / "b", cache_dir=cache, **settings),
        "c": BLD.build_subsets("temp", ov, vv, tmp_path / "c", cache=False, **settings),
    }
    assert [r.parse_cache["metrics"] for r in runs.values()] == ["miss", "hit", "off"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "c")
    reports = [(tmp_path / x / "report.json").read_text() for x in "abc"]
    assert reports[0] == reports[1] == reports[2]
    report = runs["b"].report["metrics"]
    assert report["bad_rows"] == (1 if compat == "published" else 0)
    assert report["rows"] == runs["c"].report["metrics"]["rows"] > 100
    (entry,) = cache.glob(f"{BLD.METRICS_ENTRY_PREFIX}*")
    assert sorted(p.name for p in entry.iterdir()) == [  # prepared terms, not the rows
        "info.json",
        "quality.npy",
        "uids.parquet",
        "vds3.npy",
    ]


def test_metrics_entry_misses_when_the_file_changes_and_reloads_when_damaged(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    metrics = _metrics(tmp_path, ov, vv)
    cache = tmp_path / "cache"
    load = lambda: BLD.cached_metrics(metrics, strict=True, mode="default", cache_dir=cache)
    first, status = load()
    assert status == "miss" and load()[1] == "hit"
    assert load()[0].prepared.vds3.tolist() == first.prepared.vds3.tolist()
    (entry,) = cache.glob(f"{BLD.METRICS_ENTRY_PREFIX}*")
    (entry / "info.json").write_text("{broken")
    assert load()[1] == "miss" and load()[1] == "hit"
    with open(metrics, "a") as fh:
        fh.write(json.dumps({"qa_uid": "new::uid", "vds": 0.5}) + "\n")
    os.utime(metrics, ns=(1, 2))
    changed, status = load()
    assert status == "miss" and changed.row_count == first.row_count + 1
    assert BLD.cached_metrics(metrics, strict=True, mode="published", cache_dir=cache)[1] == "miss"
    with pytest.raises(BLD.MetricsError, match="not found"):
        BLD.cached_metrics(tmp_path / "none.jsonl", strict=True, mode="default", cache_dir=cache)


def test_pool_and_metrics_entries_are_kept_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "KEEP_ENTRIES", 2)  # for pool and metrics entries alike
    ov, vv = _pool(tmp_path / "pool")
    metrics = _metrics(tmp_path, ov, vv)
    cache = tmp_path / "cache"
    for frames in (1, 2, 3):  # three pool entries, one metrics entry
        BLD.build_subsets(
            "temp", ov, vv, tmp_path / "out", cache_dir=cache, metrics=metrics, target_frames=frames
        )
    assert len(list(cache.glob(f"{BLD.METRICS_ENTRY_PREFIX}*"))) == 1
    assert len([p for p in cache.iterdir() if C._ENTRY_NAME.fullmatch(p.name)]) == 2
    for i in range(3):  # three metrics files, three more metrics entries
        os.utime(metrics, ns=(i, 10 + i))
        BLD.cached_metrics(metrics, strict=True, mode="default", cache_dir=cache)
    assert len(list(cache.glob(f"{BLD.METRICS_ENTRY_PREFIX}*"))) == 2
    assert len([p for p in cache.iterdir() if C._ENTRY_NAME.fullmatch(p.name)]) == 2


def test_a_build_keeps_only_the_prepared_metrics(tmp_path):
    """cached_metrics drops the rows once the terms are prepared; asking for another mode then says so."""
    ov, vv = _pool(tmp_path)
    metrics = _metrics(tmp_path, ov, vv)
    full = BLD.load_metrics(metrics, strict=True)
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # off, miss, hit
        table, status = BLD.cached_metrics(metrics, strict=True, mode="default", cache_dir=cache)
        assert table.rows is None and table.row_count == full.row_count > 0
        assert table.info()["rows"] == full.rows.height
        assert table.for_selection("default") is table.prepared
        with pytest.raises(ValueError, match="only the terms prepared for mode 'default'"):
            table.for_selection("published")
    assert status == "hit"


def test_stored_texts_take_rows_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "TEXT_BATCH_ROWS", 4)
    parts = [  # chunk boundaries that are not batch boundaries
        pl.DataFrame({"question": [f"q{i}" * (i % 5) for i in r], "answer": [f"a{i}" for i in r]})
        for r in (range(3), range(3, 9), range(9, 23))
    ]
    texts = pl.concat(parts, rechunk=False)
    assert texts.n_chunks() == 3
    path = tmp_path / "text.arrow"
    C._write_texts(texts, path)
    stored = C._stored_texts(path, 23)
    assert stored.read().equals(texts)
    rng = np.random.default_rng(3)
    for size in (1, 5, 40):
        rows = rng.integers(0, 23, size)  # any order, repeats
        assert stored.take(rows).equals(texts[rows.tolist()])
    assert stored.take(np.array([], dtype=np.int64)).equals(texts.clear())
    with pytest.raises(IndexError, match="rows outside 0..22"):
        stored.take(np.array([3, 23]))
    with pytest.raises(ValueError, match="not 25 rows"):
        C._stored_texts(path, 25)  # 7 batches of 4, not 6


def test_text_codes_tell_joined_texts_apart_exactly(monkeypatch):
    """Equal codes exactly for equal question|||answer joins, whatever the chunking (quirk kept:
    ("a|||b", "x") and ("a", "b|||x") are the same pair)."""
    from gdo_core import row_codes
    from gdo_core import select as S

    rng = random.Random(0)
    for chunk in (1, 7, 65_536):
        monkeypatch.setattr(row_codes, "TEXT_CODE_CHUNK_ROWS", chunk)
        for n in (0, 1, 50, 300):
            qs = [rng.choice(["a", "b", "a|||b", "", "c"]) for _ in range(n)]
            ans = [rng.choice(["x", "b|||x", ""]) for _ in range(n)]
            first: dict[str, int] = {}
            expected = [first.setdefault(q + "|||" + a, i) for i, (q, a) in enumerate(zip(qs, ans))]
            codes = S.text_codes(
                pl.DataFrame(
                    {"question": qs, "answer": ans},
                    schema=dict.fromkeys(("question", "answer"), pl.String),
                )
            )
            assert codes.tolist() == expected


def test_a_hit_leaves_the_texts_on_disk_and_writes_the_same_files(tmp_path):
    """A build's cache hit reads question and answer only for the rows it writes (and all of them
    for an exclusion list); files equal a build without the cache."""
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    reference = tmp_path / "bench.jsonl"
    rows = [json.loads(line) for line in vv.read_text().splitlines()[:5]]
    reference.write_text(
        "".join(
            json.dumps({"question": r["messages"][0]["content"].removeprefix("<video>\n")}) + "\n"
            for r in rows
        )
    )
    settings = {"progress": False, "target_count": 20, "target_frames": 8}
    statuses = []
    for exclude in ((), (reference,)):
        for name, kwargs in (("first", {}), ("second", {}), ("off", {"cache": False})):
            result = BLD.build_subsets(
                "temp",
                ov,
                vv,
                tmp_path / f"{name}{len(exclude)}",
                cache_dir=cache,
                exclude_reference=exclude,
                **settings,
                **kwargs,
            )
            statuses.append(result.parse_cache["status"])
        assert _files(tmp_path / f"first{len(exclude)}") == _files(tmp_path / f"off{len(exclude)}")
        assert _files(tmp_path / f"second{len(exclude)}") == _files(tmp_path / f"off{len(exclude)}")
    assert statuses == ["miss", "hit", "off", "hit", "hit", "off"]
    assert _files(tmp_path / "off0") != _files(tmp_path / "off1")  # the exclusion list excludes
    lean = C.cached_read_pool(
        ov,
        vv,
        cache_dir=cache,
        texts_on_disk=True,
        target_frames=8,
        mcq_on_raw=True,
        media_root=None,
        categorical=True,
    )  # the options build_subsets reads the pool with
    assert (
        lean.status == "hit" and lean.texts is not None and lean.texts.rows == lean.result.qa.height
    )
    assert "question" not in lean.result.qa.columns and "text_code" in lean.result.qa.columns
    codes = lean.result.qa["text_code"].to_numpy()
    assert (codes < np.arange(codes.size)).any()  # the pool repeats (question, answer) pairs


def test_an_entry_without_text_codes_is_read_with_its_texts(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"
    stored = C.cached_read_pool(ov, vv, cache_dir=cache, target_frames=8)  # stored as parsed
    assert stored.status == "miss" and "text_code" not in stored.result.qa.columns
    hit = C.cached_read_pool(ov, vv, cache_dir=cache, texts_on_disk=True, target_frames=8)
    assert hit.status == "hit" and hit.texts is None
    assert hit.result.qa.equals(stored.result.qa)


def _leftovers(cache: Path) -> list[str]:
    """Temporary folders left in the cache folder."""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_a_low_memory_build_writes_the_same_files(tmp_path, monkeypatch):
    """low_memory: the pool files parsed one at a time with their texts written into the new entry
    as they are parsed; the files equal a default build's, cold and warm, in either order."""
    monkeypatch.setattr(C, "TEXT_BATCH_ROWS", 16)  # texts in many record batches
    ov, vv = _pool(tmp_path / "pool")
    qa = {"images": ["i/odd.jpg"], "messages": [{"role": "user", "content": "<image>\nWhy?"}]}
    qa["messages"].append({"role": "assistant", "content": "red"})
    odd = '{"id": "o", "id": "odd", ' + json.dumps(qa)[1:]  # a repeated key: the exact path
    ov.write_text(odd + "\n" + ov.read_text())  # whose rows are read after the others
    metrics = _metrics(tmp_path, ov, vv)
    settings = {"progress": False, "target_count": 20, "metrics": metrics}
    run = lambda name, folder, **kw: BLD.build_subsets(
        "temp", ov, vv, tmp_path / name, cache_dir=folder, **settings, **kw
    ).parse_cache["status"]
    assert run("off", None, cache=False) == "off"
    lean, plain = tmp_path / "lean", tmp_path / "plain"
    assert [run("lean_cold", lean, low_memory=True), run("lean_warm", lean, low_memory=True)] == [
        "miss",
        "hit",
    ]
    assert run("plain_hit", lean) == "hit"  # a default build on the low-memory build's entry
    assert [run("plain_cold", plain), run("lean_hit", plain, low_memory=True)] == ["miss", "hit"]
    expected = _files(tmp_path / "off")
    for name in ("lean_cold", "lean_warm", "plain_hit", "plain_cold", "lean_hit"):
        assert _files(tmp_path / name) == expected, name
    assert _leftovers(lean) == _leftovers(plain) == []
    # the entry keeps where each QA's texts are, and the columns a parse in memory gives
    (entry,) = [p for p in lean.iterdir() if p.is_dir() and not p.name.startswith("metrics-")]
    order = pl.read_parquet(entry / "qa.parquet")[C.TEXT_ROW].to_numpy()
    assert (order != np.arange(order.size)).any()  # the odd row's texts came last
    kept = C._load(entry, texts_on_disk=False)[0].qa
    (other,) = [p for p in plain.iterdir() if p.is_dir() and not p.name.startswith("metrics-")]
    assert kept.equals(C._load(other, texts_on_disk=False)[0].qa)


def test_texts_written_while_parsing_outlive_their_temporary_folder(tmp_path):
    """A miss's texts are read through the open file: after the store moved the folder into place,
    and after a miss that was never stored removed it on close."""
    ov, vv = _pool(tmp_path / "pool")
    plain = C.cached_read_pool(ov, vv, cache_dir=None).result.qa.select("question", "answer")
    rows = np.array([7, 0, 7, len(plain) - 1])
    cache = tmp_path / "stored"
    stored = C.cached_read_pool(ov, vv, cache_dir=cache, texts_on_disk=True, parse_to_disk=True)
    assert stored.status == "miss" and _leftovers(cache) == []  # stored: moved into place
    assert stored.texts.take(rows).equals(plain[rows.tolist()])
    stored.close()
    cache, stores = tmp_path / "unstored", []
    unstored = C.cached_read_pool(
        ov, vv, cache_dir=cache, defer_store=stores.append, texts_on_disk=True, parse_to_disk=True
    )
    assert len(stores) == 1 and len(_leftovers(cache)) == 1
    unstored.close()  # a build that failed before its store ran
    assert list(cache.iterdir()) == []


def test_a_cache_folder_that_fills_while_parsing_falls_back_to_texts_in_memory(
    tmp_path, monkeypatch
):
    ov, vv = _pool(tmp_path / "pool")
    cache = tmp_path / "cache"

    def full(self, final):
        self.error = OSError(28, "No space left on device")
        raise self.error

    monkeypatch.setattr(C.TextSpill, "_write", full)
    monkeypatch.setattr(C, "TEXT_BATCH_ROWS", 4)  # the first part fills a batch
    spilled = C.cached_read_pool(ov, vv, cache_dir=cache, texts_on_disk=True, parse_to_disk=True)
    plain = C.cached_read_pool(ov, vv, cache_dir=None)
    assert spilled.texts is None and spilled.result.qa.equals(plain.result.qa)
    assert _leftovers(cache) == []
