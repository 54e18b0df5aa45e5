"""How goal_subsets reads the ingested pool: answer token counts stored at ingestion, Categorical
low-cardinality columns, and one read shared by the profiles of a backfill."""

import json
import os
from pathlib import Path

import polars as pl
from dagster import DagsterInstance

from dagster_project.definitions import build_definitions
from gdo_assets.pool import QA_DIR, register_chunks
from gdo_assets.project import GdoProject
from gdo_assets.subsets import scan_ordered_qa, shared_reads
from gdo_core.pool_profile import ANSWER_DISTINCT, with_answer_distinct
from gdo_core.schema import LOW_CARD_COLUMNS, QA_SCHEMA


def test_with_answer_distinct_counts_lower_cased_word_tokens() -> None:
    qa = pl.DataFrame(
        {
            "answer": ["Red red BLUE", "a_b a-b", "yes", ""],
            "answer_len": [3, 3, 1, 0],
        }
    )
    # By hand: {red, blue}; {a_b, a, b}; {yes}; nothing.
    assert with_answer_distinct(qa)[ANSWER_DISTINCT].to_list() == [2, 3, 1, 0]
    assert with_answer_distinct(qa)[ANSWER_DISTINCT].dtype == pl.Int32


def _ingested(tmp_path: Path) -> GdoProject:
    rows = [
        json.dumps(
            {
                "id": f"i{i}",
                "images": [f"img/{i}.jpg"],
                "data_source": "GEOS(MathV360K)",
                "messages": [
                    {"role": "user", "content": f"<image>\nWhat colour is shape {i}?"},
                    {"role": "assistant", "content": ["Red and red.", "Blue", "A green one, green."][i % 3]},
                ],
            }
        )
        for i in range(6)
    ]
    pool = tmp_path / "ov.jsonl"
    pool.write_text("\n".join(rows) + "\n")
    project = GdoProject(data_dir=str(tmp_path / "data"), onevision=[str(pool)], video=[], chunk_lines=4)
    defs = build_definitions(project, in_process=True)
    with DagsterInstance.ephemeral() as instance:
        register_chunks(instance, pool, None, 4)
        for key in sorted(instance.get_dynamic_partitions("pool_chunks")):
            job = defs.resolve_job_def("ingest_pool")
            assert job.execute_in_process(instance=instance, partition_key=key).success
    return project


def test_ingested_chunks_carry_answer_token_counts_and_the_scan_reads_them(tmp_path: Path) -> None:
    project = _ingested(tmp_path)
    chunk = pl.read_parquet(project.path(*QA_DIR, "ov-00000.parquet"))
    # "Red and red." -> {red, and}; "Blue" -> {blue}; "A green one, green." -> {a, green, one}
    assert chunk[ANSWER_DISTINCT].to_list() == [2, 1, 3, 2]
    qa = scan_ordered_qa(project)
    assert qa.columns == [*QA_SCHEMA, ANSWER_DISTINCT]
    assert qa[ANSWER_DISTINCT].to_list() == [2, 1, 3, 2, 1, 3]
    assert qa["qa_uid"].to_list() == [f"ov::i{i}::t0" for i in range(6)]  # pool order, chunk by chunk
    assert qa["line"].to_list() == [1, 2, 3, 4, 5, 6]
    assert all(qa[name].dtype == pl.Categorical for name in LOW_CARD_COLUMNS)
    assert qa["data_source"].cast(pl.String).to_list() == ["GEOS(MathV360K)"] * 6


def test_a_chunk_without_counts_leaves_them_null_so_the_build_counts_them(tmp_path: Path) -> None:
    project = _ingested(tmp_path)
    path = project.path(*QA_DIR, "ov-00001.parquet")
    pl.read_parquet(path).drop(ANSWER_DISTINCT).write_parquet(path)  # as ingested before the column
    qa = scan_ordered_qa(project)
    assert qa[ANSWER_DISTINCT].to_list() == [2, 1, 3, 2, None, None]


def test_shared_reads_read_the_pool_once_while_its_files_are_unchanged(tmp_path: Path) -> None:
    project = _ingested(tmp_path)
    assert scan_ordered_qa(project) is not scan_ordered_qa(project)  # outside the block: a read each time
    with shared_reads():
        first = scan_ordered_qa(project)
        assert scan_ordered_qa(project) is first
        path = project.path(*QA_DIR, "ov-00001.parquet")
        edited = pl.read_parquet(path).with_columns(pl.lit("changed").alias("answer"))
        edited.write_parquet(path)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        again = scan_ordered_qa(project)
        assert again is not first
        assert again["answer"].to_list()[4:] == ["changed", "changed"]
    assert scan_ordered_qa(project) is not again
