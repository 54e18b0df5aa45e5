"""`gdo build`: the published-build oracle (all four presets), default mode on the same pool,
byte-identical outputs across runs and hash seeds, metrics inputs, and `gdo resample`."""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from gdo_core import build as BLD
from gdo_core.pool_read import read_pool
from gdo_core.profiles import PRESETS

REPO = Path(__file__).resolve().parents[1]
# The published build step's outputs for the four presets (see the fixture's README).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_build"


# ---- the published oracle -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_pool():
    """The fixture pool parsed once as the published reader saw it, and its metrics (lenient)."""
    pool = read_pool(FIXTURE / "onevision.jsonl.gz", FIXTURE / "video.jsonl.gz", mcq_on_raw=False)
    assert pool.rejects.height == 0
    return pool.qa, BLD.load_metrics(FIXTURE / "metrics.jsonl.gz", strict=False)


def _uids(path: Path) -> list[str]:
    return [json.loads(line)["qa_uid"] for line in path.open()]


@pytest.mark.parametrize("preset", PRESETS)
def test_compat_published_reproduces_the_fixture(fixture_pool, preset, tmp_path):
    qa, metrics = fixture_pool
    expected = json.loads((FIXTURE / f"{preset}.expected.json").read_text())
    result = BLD.build_from_pool(qa, preset, tmp_path, metrics=metrics, compat="published")
    report = result.report
    for key in (
        "total_pairs",
        "target_count",
        "random_target_count",
        "budget_info",
        "bucket_quotas",
        "num_strata",
        "overlap_ratio",
    ):
        assert report[key] == expected[key], key
    for key, value in expected["hard_constraints"].items():
        assert report["hard_constraints"][key] == value, key
    for summary in ("filtered_summary", "random_summary"):
        got, want = report[summary], expected[summary]
        assert (got["count"], got["bucket"]) == (want["count"], want["bucket"])
        # the published JS sums over a set, so only the last bits can differ
        assert got["js_to_full_profile"] == pytest.approx(
            want["js_to_full_profile"], rel=1e-9, abs=1e-15
        )
    gdo, uni = _uids(result.gdo_path), _uids(result.uni_path)
    matched_gdo = sum(a == b for a, b in zip(gdo, expected["gdo_1x_qa_uids"])) / len(
        expected["gdo_1x_qa_uids"]
    )
    matched_uni = sum(a == b for a, b in zip(uni, expected["uni_10x_qa_uids"])) / len(
        expected["uni_10x_qa_uids"]
    )
    assert (matched_gdo, matched_uni) == (1.0, 1.0), (
        f"{preset}: GDO {matched_gdo:.2%}, Uni {matched_uni:.2%} in order"
    )
    assert gdo == expected["gdo_1x_qa_uids"] and uni == expected["uni_10x_qa_uids"]
    if preset == "temp_plus":
        rows = {r["qa_uid"]: r for r in map(json.loads, result.gdo_path.open())}
        for line in (FIXTURE / "temp_plus.sample_rows.jsonl").open():
            sample = json.loads(line)
            assert rows[sample["qa_uid"]] == sample
            assert list(rows[sample["qa_uid"]]) == list(sample)


def test_default_mode_on_the_fixture(fixture_pool, tmp_path):
    qa_published, _ = fixture_pool
    result = BLD.build_subsets(
        "temp_plus",
        FIXTURE / "onevision.jsonl.gz",
        FIXTURE / "video.jsonl.gz",
        tmp_path,
        metrics=FIXTURE / "metrics.jsonl.gz",
        progress=False,
    )
    hc = result.report["hard_constraints"]
    assert hc["all_constraints_met"] and hc["unmet_constraints"] == {}
    assert result.report["full_profile_fields"]["question_form"].get("MCQ", 0) > 10_000
    assert qa_published["question_form"].unique().to_list() == ["Open"]  # the published quirk
    rows = [json.loads(line) for line in result.gdo_path.open()]
    assert any(r["question_type"] == "MCQ" for r in rows)
    assert {r["meta"]["stage"] for r in rows} >= {
        "hard_temporal_video",
        "hard_video",
        "stratum_quota",
    }
    assert {
        "gdo_1x_32f.jsonl",
        "uni_10x_32f.jsonl",
        "report.json",
        "profile.json",
        "subset_members.parquet",
    } <= {p.name for p in tmp_path.iterdir()}
    members = pl.read_parquet(result.members_path)
    assert members.filter(pl.col("arm") == "gdo").height == result.report["target_count"]


# ---- a small synthetic pool on disk ----------------------------------------------------------


def write_pool(
    folder: Path, n_image: int = 240, n_video: int = 80, seed: int = 3
) -> tuple[Path, Path, Path]:
    """Image and video JSONL files (video rows share video ids) plus a published-style metrics file."""
    rng = random.Random(seed)
    words = [
        "the",
        "dog",
        "cup",
        "robot",
        "walk",
        "turn",
        "bar",
        "open",
        "river",
        "chart",
        "ball",
        "door",
        "child",
        "train",
    ]
    sources = [
        "CLEVR-Math(MathV360K)",
        "ai2d(cauldron,llava_format)",
        "chartqa(cauldron)",
        "GEOS(MathV360K)",
    ]
    uids = []
    with open(folder / "ov.jsonl", "w") as fh:
        for i in range(n_image):
            turns = []
            for t in range(rng.randint(1, 3)):
                if rng.random() < 0.3:
                    q = f"Which is nearest the {rng.choice(words)}?\nA. {rng.choice(words)}\nB. {rng.choice(words)}"
                    a = rng.choice("AB")
                else:
                    q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 25)))
                    a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
                turns += [
                    {"role": "user", "content": ("<image>\n" if t == 0 else "") + q},
                    {"role": "assistant", "content": a},
                ]
                uids.append(f"ov::ov-{i}::t{t}")
            fh.write(
                json.dumps(
                    {
                        "id": f"ov-{i}",
                        "data_source": sources[i % 4],
                        "images": [f"img/{i}.jpg"],
                        "messages": turns,
                    }
                )
                + "\n"
            )
    with open(folder / "vv.jsonl", "w") as fh:
        for i in range(n_video):
            vid = f"v{i // 3}"
            q = (
                rng.choice(["What happens after the dog runs?", "How many cups?", "Describe it."])
                + " "
                + rng.choice(words)
            )
            a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
            frames = [f"fr/{vid}/{k}.jpg" for k in range(rng.choice([8, 24, 48]))]
            msgs = [{"from": "human", "value": "<video>\n" + q}, {"from": "gpt", "value": a}]
            fh.write(
                json.dumps(
                    {
                        "id": f"vv-{i}",
                        "video_id": vid,
                        "data_source": "0_30_s_academic_v0_1",
                        "images": frames,
                        "conversations": msgs,
                    }
                )
                + "\n"
            )
            uids.append(f"vv::vv-{i}::t0")
    with open(folder / "metrics.jsonl", "w") as fh:
        for uid in uids:
            if rng.random() < 0.9:
                lv, lb = rng.random() * 3, rng.random() * 3
                fh.write(
                    json.dumps(
                        {
                            "qa_uid": uid,
                            "loss_video": lv,
                            "loss_blind": lb,
                            "frame_diversity": rng.random() / 5,
                            "vds": lb - lv,
                            "quality_score": rng.random(),
                        }
                    )
                    + "\n"
                )
    return folder / "ov.jsonl", folder / "vv.jsonl", folder / "metrics.jsonl"


SMALL = 'extends = "temp_plus"\nmin_count = 40\nmax_count = 400\nmax_ratio = 0.5\nsource_group_floor_topk = 4\n'

BUILD_SCRIPT = """
import sys
from gdo_core.build import build_subsets
ov, vv, metrics, out, profile, compat = sys.argv[1:]
build_subsets(profile, ov, vv, out, metrics=metrics, compat=(compat or None), progress=False, target_frames=16)
"""


@pytest.mark.parametrize("compat", ["", "published"])
def test_outputs_are_byte_identical_across_runs_and_hash_seeds(tmp_path, compat):
    ov, vv, metrics = write_pool(tmp_path)
    profile = tmp_path / "small.toml"
    profile.write_text(SMALL)
    outs = []
    for hash_seed in ("0", "12345"):
        out = tmp_path / f"out_{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(
            [
                sys.executable,
                "-c",
                BUILD_SCRIPT,
                str(ov),
                str(vv),
                str(metrics),
                str(out),
                str(profile),
                compat,
            ],
            check=True,
            cwd=REPO,
            env=env,
            timeout=300,
        )
        outs.append(out)
    names = ["gdo_1x_16f.jsonl", "uni_10x_16f.jsonl", "report.json", "profile.json"]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    again = BLD.build_subsets(
        profile,
        ov,
        vv,
        tmp_path / "in_process",
        metrics=metrics,
        compat=(compat or None),
        progress=False,
        target_frames=16,
    )
    for name in names:
        assert (outs[0] / name).read_bytes() == (again.out_dir / name).read_bytes(), name
    rows = [json.loads(line) for line in again.gdo_path.open()]
    assert rows and all(len(r["images"]) <= 16 for r in rows)


def test_build_subsets_ablations_and_fixed_budget(tmp_path):
    ov, vv, metrics = write_pool(tmp_path)
    profile = tmp_path / "small.toml"
    profile.write_text(SMALL)
    base = BLD.build_subsets(
        profile, ov, vv, tmp_path / "a", metrics=metrics, progress=False, target_count=60
    )
    assert base.report["target_count"] == 60 and base.report["budget_info"]["mode"] == "fixed_count"
    no_vds = BLD.build_subsets(
        profile,
        ov,
        vv,
        tmp_path / "b",
        metrics=metrics,
        progress=False,
        target_count=60,
        no_vds=True,
    )
    assert no_vds.report["ablations"] == ["no_vds"]
    assert json.loads(no_vds.profile_path.read_text())["ablations"] == ["no_vds"]
    with pytest.raises(BLD.BuildError, match="either a target count or a target ratio"):
        BLD.build_subsets(
            profile, ov, vv, tmp_path / "c", target_count=10, target_ratio=0.1, progress=False
        )


# ---- metrics inputs ---------------------------------------------------------------------------


def test_metrics_formats_agree(tmp_path):
    _, _, jsonl = write_pool(tmp_path)
    reference = BLD.load_metrics(jsonl).rows
    assert reference.columns == [
        "qa_uid",
        "loss_video",
        "loss_blind",
        "frame_diversity",
        "vds",
        "quality",
    ]
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert BLD.load_metrics(gz).rows.equals(reference)
    parquet = tmp_path / "m.parquet"
    reference.write_parquet(parquet)
    assert BLD.load_metrics(parquet).rows.equals(reference)
    import duckdb

    db = tmp_path / "gdo.duckdb"
    con = duckdb.connect(str(db))
    con.register("ref", reference.with_columns(amm=pl.lit(0.0)).to_arrow())
    con.execute("create table descriptors as select * from ref")
    con.close()
    assert BLD.load_metrics(db).rows.equals(reference)
    nested = tmp_path / "nested.jsonl"
    nested.write_text(
        json.dumps({"qa_uid": "a", "data_quality_metrics": {"vds": 1.5, "quality_score": 0.2}})
        + "\n"
    )
    rows = BLD.load_metrics(nested).rows
    assert rows.row(0, named=True) | {} == {
        "qa_uid": "a",
        "loss_video": None,
        "loss_blind": None,
        "frame_diversity": None,
        "vds": 1.5,
        "quality": 0.2,
    }


def test_metrics_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qa_uid": "a", "vds": 1.0}\n{"qa_uid": "b", "vds": "high"}\n')
    with pytest.raises(BLD.MetricsError, match=r"bad.jsonl:2: key 'vds' must be a number"):
        BLD.load_metrics(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"qa_uid": "a", "vds": 1.0}\n{oops\n')
    with pytest.raises(BLD.MetricsError, match=r"broken.jsonl:2: not valid JSON"):
        BLD.load_metrics(broken)
    lenient = BLD.load_metrics(
        broken, strict=False
    )  # compat: the published reader skips and counts
    assert lenient.rows.height == 1 and lenient.bad_rows == 1
    no_uid = tmp_path / "no_uid.parquet"
    pl.DataFrame({"id": ["a"], "vds": [1.0]}).write_parquet(no_uid)
    with pytest.raises(BLD.MetricsError, match="no_uid.parquet: missing key 'qa_uid'"):
        BLD.load_metrics(no_uid)
    import duckdb

    db = tmp_path / "empty.duckdb"
    duckdb.connect(str(db)).close()
    with pytest.raises(BLD.MetricsError, match="no table 'descriptors'"):
        BLD.load_metrics(db)
    with pytest.raises(BLD.MetricsError, match="missing.jsonl: metrics file not found"):
        BLD.load_metrics(tmp_path / "missing.jsonl")


# ---- gdo resample -----------------------------------------------------------------------------


def test_resample_jsonl(tmp_path):
    src = tmp_path / "in.jsonl"
    frames = [f"f/{i}.jpg" for i in range(32)]
    rows = [
        {
            "qa_uid": "v",
            "messages": [
                {"role": "user", "content": "<image>" * 32 + "\nWhat?"},
                {"role": "assistant", "content": "x"},
            ],
            "images": frames,
            "data_quality_metrics": {"n_frames": 32, "temporal_category": "Mixed"},
        },
        {
            "qa_uid": "i",
            "messages": [
                {"role": "user", "content": "<image>\nQ"},
                {"role": "assistant", "content": "y"},
            ],
            "images": ["a.jpg"],
        },
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert BLD.resample_jsonl(src, tmp_path / "out.jsonl", 8) == 2
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert out[0]["images"] == [frames[round(i * 31 / 7)] for i in range(8)]
    assert out[0]["messages"][0]["content"] == "<image>" * 8 + "\nWhat?"
    assert out[0]["data_quality_metrics"]["n_frames"] == 8
    assert out[1] == rows[1]
    src.write_text(json.dumps(rows[0]) + "\n{bad\n")
    with pytest.raises(BLD.BuildError, match=r"in.jsonl:2: not valid JSON"):
        BLD.resample_jsonl(src, tmp_path / "o2.jsonl", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no partial file


# ---- the goal_subsets asset (gdo_assets/subsets.py) -----------------------------------------


def test_goal_subsets_asset_materializes_with_passing_checks(tmp_path):
    import duckdb
    from dagster import materialize

    from gdo_assets.pool import QA_DIR
    from gdo_assets.project import GdoProject
    from gdo_assets.subsets import goal_subsets, member_files, scan_ordered_qa, subsets_dir
    from gdo_core.pool import PoolFile, chunk_key, iter_pool_chunks

    ov, vv, metrics = write_pool(tmp_path)
    project = GdoProject(
        data_dir=str(tmp_path / "data"), onevision=[str(ov)], video=[str(vv)], chunk_lines=50
    )
    for pool in project.pool_files():  # what candidate_pool writes, chunk by chunk
        for key, chunk in iter_pool_chunks(PoolFile(pool.path, pool.kind), 50):
            path = project.path(*QA_DIR, f"{key}.parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            chunk.qa.write_parquet(path)
    rows = BLD.load_metrics(metrics).rows
    con = duckdb.connect(str(project.path("gdo.duckdb")))
    con.register("m", rows.to_arrow())
    con.execute("create table descriptors as select * from m")
    con.close()
    qa = scan_ordered_qa(project)
    assert qa["qa_uid"][0].startswith("ov::") and qa["qa_uid"][-1].startswith("vv::")
    assert chunk_key("ov", 0) == "ov-00000"

    reference = tmp_path / "bench.jsonl"
    reference.write_text(
        json.dumps({"question": qa["question"][0], "answer": qa["answer"][0]}) + "\n"
    )
    result = materialize(
        [goal_subsets],
        partition_key="temp_plus",
        resources={"gdo": project},
        run_config={
            "ops": {
                "goal_subsets": {
                    "config": {"target_count": 60, "exclude_reference": [str(reference)]}
                }
            }
        },
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "hard_constraints_met": True,
        "no_duplicate_qa": True,
        "per_video_cap_held": True,
        "no_excluded_qa": True,
    }
    # The constraint check passed because the constraints hold, not by a waiver.
    constraint_meta = evaluations["hard_constraints_met"].metadata
    assert constraint_meta["all_met"].value is True and constraint_meta["waived"].value is False
    meta = result.asset_materializations_for_node("goal_subsets")[0].metadata
    assert meta["target_count"].value == 60 and "composition" in meta
    members = pl.concat([pl.read_parquet(p) for p in member_files(project)])
    assert set(members["arm"].unique()) == {"gdo", "uni10x"} and members[
        "profile"
    ].unique().to_list() == ["temp_plus"]
    assert qa["qa_uid"][0] not in members["qa_uid"].to_list()
    # The constraints counted again from the selected rows themselves.
    hc = json.loads((subsets_dir(project, "temp_plus") / "report.json").read_text())[
        "hard_constraints"
    ]
    assert hc["unmet_constraints"] == {}
    gdo_uids = members.filter(pl.col("arm") == "gdo")["qa_uid"]
    selected = qa.filter(pl.col("qa_uid").is_in(gdo_uids.implode()))
    assert selected.height == gdo_uids.len() == 60
    video = selected.filter(pl.col("bucket") == "short_video")
    assert hc["min_video_count"] <= video.height <= hc["max_video_count"]
    temporal = video.filter(pl.col("temporal_category").is_in(hc["temporal_categories"]))
    assert temporal.height >= hc["min_temporal_video_count"] > 0
    groups = selected["source_group"].value_counts()
    assert len(hc["source_group_floor_requirements"]) == 5  # 4 image sources + the video one
    for group, required in hc["source_group_floor_requirements"].items():
        assert groups.filter(pl.col("source_group") == group)["count"].sum() >= required, group


def test_metrics_jsonl_takes_nan_and_infinity_as_missing(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"qa_uid": " a ", "vds": NaN, "quality_score": 1.0}\n{"qa_uid": "b", "vds": Infinity}\n')
    rows = BLD.load_metrics(path).rows
    assert rows["qa_uid"].to_list() == ["a", "b"]
    assert rows["vds"].to_list() == [None, None] and rows["quality"].to_list() == [1.0, None]
    flat = tmp_path / "flat.parquet"
    pl.DataFrame({"qa_uid": ["x"], "vds": [float("inf")]}).write_parquet(flat)
    assert BLD.load_metrics(flat).rows["vds"].to_list() == [None]
