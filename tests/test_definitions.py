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


def test_definitions_snapshot():
    repo = defs.get_repository_def()
    keys = sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys())
    assert keys == EXPECTED_ASSET_KEYS
    assert sorted(job.name for job in repo.get_all_jobs()) == EXPECTED_JOBS
    assert sorted(s.name for s in repo.sensor_defs) == ["default_automation_condition_sensor", "pool_chunk_sensor"]


def test_definitions_build_for_a_given_project(tmp_path):
    from gdo_assets.project import GdoProject

    built = build_definitions(GdoProject(data_dir=str(tmp_path)), in_process=True)
    assert built.get_repository_def().asset_graph.get_all_asset_keys()


def test_gdo_core_imports_no_dagster():
    """The method stays free of orchestration: no module in gdo_core imports dagster."""
    offenders = []
    for path in sorted((REPO / "gdo_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            names += [n for n in names if n.startswith(("gdo_assets", "dagster_project"))]
            if any(n == "dagster" or n.startswith(("dagster.", "dagster_")) for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
