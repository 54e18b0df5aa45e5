"""The code location loads, and its asset graph and jobs match the reviewed snapshot."""

import ast
from pathlib import Path

from dagster_project.definitions import build_definitions, defs

REPO = Path(__file__).resolve().parents[1]

# Update on purpose when the graph changes, so the change shows up in review.
EXPECTED_ASSET_KEYS = [
    "benchmark_scores", "candidate_pool", "checkpoints", "convergence_report", "descriptor_shards",
    "descriptors", "goal_subsets", "pool_files", "pool_profile",
]
EXPECTED_JOBS = [
    "__ASSET_JOB", "build_subsets", "describe_chunks", "ingest_pool", "merge_descriptors",
    "observe_pool", "profile_pool", "report_convergence", "score_arm", "train_arm",
]


def test_definitions_snapshot(monkeypatch):
    # `defs` is lazy (@dagster.definitions): Dagster calls it to build the code location, under
    # the profile GDO_DEPLOYMENT names (local here; the others: tests/test_execution_profiles.py).
    monkeypatch.delenv("GDO_DEPLOYMENT", raising=False)
    repo = defs().get_repository_def()
    keys = sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys())
    assert keys == EXPECTED_ASSET_KEYS
    assert sorted(job.name for job in repo.get_all_jobs()) == EXPECTED_JOBS
    assert sorted(s.name for s in repo.sensor_defs) == ["default_automation_condition_sensor", "pool_chunk_sensor"]


def test_definitions_build_for_a_given_project(tmp_path):
    from gdo_assets.project import GdoProject

    built = build_definitions(GdoProject(data_dir=str(tmp_path)), in_process=True)
    graph = built.get_repository_def().asset_graph
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == EXPECTED_ASSET_KEYS
    assert built.resources["gdo"].data_dir == str(tmp_path)


ORCHESTRATION = ("dagster", "dagster_project", "gdo_assets")  # gdo_assets imports dagster


def _orchestration_imports(source: str) -> list[int]:
    """Lines of `source` that import dagster, a dagster_* package, dagster_project or gdo_assets."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        tops = [name.split(".")[0] for name in names]
        if any(top in ORCHESTRATION or top.startswith("dagster_") for top in tops):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_import_check_flags_every_orchestration_import():
    # Lines 1-6 import orchestration, and line 11 inside a function; 7-9 do not ("dagsterish"
    # only starts with the name, gdo_core is the method, a relative import stays in its package).
    source = """\
import dagster
import dagster.components
from dagster import asset
import dagster_pipes
from gdo_assets.pool import candidate_pool
import os, dagster_project.cli
import dagsterish
from gdo_core import score
from . import merge
def f():
    import dagster
"""
    assert _orchestration_imports(source) == [1, 2, 3, 4, 5, 6, 11]


def test_gdo_core_imports_no_dagster():
    """The method stays free of orchestration: no module in gdo_core imports dagster or the
    packages built on it."""
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "gdo_core").rglob("*.py"))
        for line in _orchestration_imports(path.read_text())
    ]
    assert offenders == []
