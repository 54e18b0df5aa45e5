"""The project settings file (gdo.toml, $GDO_SETTINGS): its keys and types, paths relative to the
file, errors naming the file and the key, the environment over the file, definitions and the CLI
built from it, and the file `gdo demo` writes reading back as the settings the demo ran with."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from dagster import DagsterInstance
from typer.testing import CliRunner

from dagster_project.cli import app
from dagster_project.definitions import build_definitions
from dagster_project.demo import (
    SETTINGS_MARK,
    demo_may_write_settings,
    demo_resources,
    demo_settings_path,
    write_demo_settings,
)
from gdo_assets.project import EnvError, project_from_env
from gdo_assets.settings_file import (
    KEYS,
    SettingsError,
    load_settings,
    read_settings_file,
    settings_path,
    variable,
)
from gdo_core.demo import make_demo_pool
from gdo_core.demo_settings import DEMO
from gdo_core.pool import chunk_key

# The smallest demo of the tests (tests/test_demo_job.py).
SMALL = dataclasses.replace(
    DEMO, n_image_rows=40, n_videos=20, chunk_lines=1000, target_count=8, benchmark_questions=5, tnc_mode="regex",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GDO_* setting from the caller's environment (conftest names an empty settings file)."""
    for name in [*(variable(k) for k in KEYS), "GDO_SETTINGS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GDO_SETTINGS", os.devnull)
    return monkeypatch


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- parsing ----------------------------------------------------------------------------------


def test_keys_mirror_the_variables_and_paths_resolve_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    path = write(folder / "gdo.toml", """
onevision = ["pool/ov1.jsonl", "/abs/ov2.jsonl"]
video = "pool/video.jsonl"              # one path is a list of one
data_dir = ".gdo"
model = "../models/tiny"
media_root = "media"
chunk_lines = 250
target_frames = 8
sc_samples = 0
motion_only = true
tnc_mode = "regex"
recipe = "demo"                         # a packaged recipe's name stays a name
gpus = [0, 3]
automation = false
k8s_mount_path = "/data"                # a path inside the pods: kept as written
k8s_gpu_node_selector = {"nvidia.com/gpu.present" = "true"}
k8s_tolerations = [{key = "nvidia.com/gpu", operator = "Exists"}]
""")
    values = read_settings_file(path)
    assert values == {
        "GDO_ONEVISION": f"{folder}/pool/ov1.jsonl{os.pathsep}/abs/ov2.jsonl",
        "GDO_VIDEO": f"{folder}/pool/video.jsonl",
        "GDO_DATA_DIR": f"{folder}/.gdo",
        "GDO_MODEL": f"{tmp_path}/models/tiny",
        "GDO_MEDIA_ROOT": f"{folder}/media",
        "GDO_CHUNK_LINES": "250",
        "GDO_TARGET_FRAMES": "8",
        "GDO_SC_SAMPLES": "0",
        "GDO_MOTION_ONLY": "1",
        "GDO_TNC_MODE": "regex",
        "GDO_RECIPE": "demo",
        "GDO_GPUS": "0,3",
        "GDO_AUTOMATION": "0",
        "GDO_K8S_MOUNT_PATH": "/data",
        "GDO_K8S_GPU_NODE_SELECTOR": json.dumps({"nvidia.com/gpu.present": "true"}),
        "GDO_K8S_TOLERATIONS": json.dumps([{"key": "nvidia.com/gpu", "operator": "Exists"}]),
    }
    write(folder / "gdo.toml", 'recipe = "recipes/mine.yaml"\n')
    assert read_settings_file(path) == {"GDO_RECIPE": f"{folder}/recipes/mine.yaml"}  # a path: resolved


def test_the_resources_read_the_file_through_the_existing_parsers(tmp_path: Path) -> None:
    path = write(tmp_path / "gdo.toml", """
onevision = ["a.jsonl", "b.jsonl"]
data_dir = "data"
chunk_lines = 250
model = "model"
batch_size = 4
recipe = "demo"
cpu_threads = 2
""")
    built = build_definitions(in_process=True, env={"GDO_SETTINGS": str(path)})
    project, model, training = (built.resources[k] for k in ("gdo", "descriptor_model", "training"))
    assert project.onevision == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")] and project.video == []
    assert (project.data_dir, project.chunk_lines, project.target_frames) == (str(tmp_path / "data"), 250, 32)
    assert (model.model_dir, model.batch_size, model.tnc_mode) == (str(tmp_path / "model"), 4, "llm")
    assert (training.model_dir, training.recipe, training.cpu_threads) == (str(tmp_path / "model"), "demo", 2)
    assert project.settings.startswith(f"settings: {path} (from GDO_SETTINGS; from the file: onevision, data_dir")
    assert built.metadata["gdo/settings"].value == project.settings


def test_an_unknown_key_is_an_error_naming_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "gdo.toml", 'onevision = ["a.jsonl"]\nchunk_line = 250\n')
    with pytest.raises(SettingsError) as info:
        read_settings_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown key 'chunk_line' (did you mean 'chunk_lines'?); known keys: data_dir,")
    with pytest.raises(EnvError, match="unknown key 'chunk_line'"):  # the definitions fail with it too
        build_definitions(env={"GDO_SETTINGS": str(path)})
    write(path, '[gdo]\nonevision = ["a.jsonl"]\n')  # no sections: the keys are top-level
    with pytest.raises(SettingsError, match=f"{path}: unknown key 'gdo'"):
        read_settings_file(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('chunk_lines = "250"', "chunk_lines = '250': expected a whole number"),
        ("chunk_lines = 2.5", "chunk_lines = 2.5: expected a whole number"),
        ("chunk_lines = true", "chunk_lines = true: expected a whole number"),
        ("motion_only = 1", "motion_only = 1: expected true or false"),
        ("onevision = [1]", "onevision = [1]: expected a list of paths, or one path (strings)"),
        ('data_dir = ""', "data_dir = '': expected a path (string)"),
        ("model = 3", "model = 3: expected a path (string)"),
        ("gpus = [true]", "gpus = [true]: expected GPU indices"),
        ('k8s_gpu_node_selector = {a = 1}', 'k8s_gpu_node_selector = {"a": 1}: expected a table of strings'),
        ('k8s_tolerations = {key = "x"}', 'k8s_tolerations = {"key": "x"}: expected a list of tables'),
    ],
)
def test_a_wrong_type_is_an_error_naming_the_file_and_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "gdo.toml", line + "\n")
    with pytest.raises(SettingsError) as info:
        read_settings_file(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_unusable_values_name_the_file_and_the_key_too(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """A value of the right type that the parser refuses (range, choices) names the file and key."""
    path = write(tmp_path / "gdo.toml", "chunk_lines = 0\n")
    with pytest.raises(SettingsError) as info:
        build_definitions(env={"GDO_SETTINGS": str(path)})
    assert str(info.value) == f"{path}: chunk_lines: GDO_CHUNK_LINES='0': must be at least 1"
    write(path, 'tnc_mode = "gpt"\n')
    with pytest.raises(SettingsError, match=f"^{path}: tnc_mode: GDO_TNC_MODE='gpt': expected one of llm, regex$"):
        build_definitions(env={"GDO_SETTINGS": str(path)})
    # the environment's own bad value stays the environment's
    clean_env.setenv("GDO_SETTINGS", str(path))
    clean_env.setenv("GDO_TNC_MODE", "fast")
    with pytest.raises(EnvError) as env_info:
        build_definitions()
    assert str(env_info.value) == "GDO_TNC_MODE='fast': expected one of llm, regex"


def test_bad_files_and_environment_only_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "gdo.toml", "onevision = [\n")
    with pytest.raises(SettingsError, match=f"^{path}: not valid TOML"):
        read_settings_file(path)
    write(path, 'profiles_dir = "profiles"\n')
    with pytest.raises(SettingsError, match=f"^{path}: key 'profiles_dir': GDO_PROFILES_DIR can only be set in the environment"):
        read_settings_file(path)
    with pytest.raises(SettingsError, match=f"^{tmp_path / 'absent.toml'}: no such settings file$"):
        load_settings({"GDO_SETTINGS": str(tmp_path / "absent.toml")})
    with pytest.raises(SettingsError, match="a folder, not a settings file"):
        load_settings({"GDO_SETTINGS": str(tmp_path)})
    assert read_settings_file(os.devnull) == {}  # GDO_SETTINGS=/dev/null: no settings from a file


# ---- which file, and the environment over it ---------------------------------------------------


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "gdo.toml", 'video = ["file.jsonl"]\nonevision = ["ov.jsonl"]\nchunk_lines = 250\n')
    env = {"GDO_SETTINGS": str(path), "GDO_VIDEO": "/env/video.jsonl", "GDO_CHUNK_LINES": " ", "GDO_TARGET_FRAMES": "4"}
    settings = load_settings(env)
    project = project_from_env(settings.env)
    assert project.video == ["/env/video.jsonl"]  # set in the environment: wins
    assert project.chunk_lines == 250  # blank in the environment: unset, the file's value
    assert project.onevision == [str(tmp_path / "ov.jsonl")] and project.target_frames == 4
    assert [settings.origin(n) for n in ("GDO_VIDEO", "GDO_ONEVISION", "GDO_TARGET_FRAMES", "GDO_MODEL")] == [
        "environment", "file", "environment", "default",
    ]
    assert settings.describe() == (
        f"settings: {path} (from GDO_SETTINGS; from the file: onevision, chunk_lines); "
        "GDO_VIDEO from environment (over the file's video); GDO_TARGET_FRAMES from environment"
    )
    built = build_definitions(in_process=True, env=env)
    assert built.resources["gdo"].video == ["/env/video.jsonl"]
    assert built.resources["gdo"].settings == settings.describe()


def test_gdo_toml_in_the_working_directory_is_the_default(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("GDO_SETTINGS")
    clean_env.chdir(tmp_path)
    assert settings_path() == (None, f"no gdo.toml in {tmp_path}")
    write(tmp_path / "gdo.toml", 'onevision = ["pool/ov.jsonl"]\n')
    assert settings_path() == (tmp_path / "gdo.toml", "in the working directory")
    assert build_definitions(in_process=True).resources["gdo"].onevision == [str(tmp_path / "pool" / "ov.jsonl")]
    # a mapping given as the environment is all of it: only its GDO_SETTINGS names a file
    assert build_definitions(in_process=True, env={}).resources["gdo"].onevision == []
    # GDO_SETTINGS (relative: to the working directory) wins over ./gdo.toml
    write(tmp_path / "elsewhere" / "other.toml", 'video = ["v.jsonl"]\n')
    clean_env.setenv("GDO_SETTINGS", "elsewhere/other.toml")
    project = build_definitions(in_process=True).resources["gdo"]
    assert (project.onevision, project.video) == ([], [str(tmp_path / "elsewhere" / "v.jsonl")])


# ---- definitions and commands built from a settings file --------------------------------------


def _pool_project(tmp_path: Path) -> tuple[Path, object]:
    """A small demo pool and a settings file for it (motion-only descriptors: cheap)."""
    demo = make_demo_pool(tmp_path / "project" / "pool", n_image_rows=6, n_videos=2)
    path = write(tmp_path / "project" / "gdo.toml", """
onevision = ["pool/onevision.jsonl"]
video = ["pool/video.jsonl"]
data_dir = "data"
chunk_lines = 4
target_frames = 8
motion_only = true
""")
    return path, demo


def test_definitions_from_a_settings_file_see_the_pool(tmp_path: Path) -> None:
    path, demo = _pool_project(tmp_path)
    built = build_definitions(in_process=True, env={"GDO_SETTINGS": str(path)})
    project = built.resources["gdo"]
    assert [f.path for f in project.pool_files()] == [demo.onevision, demo.video]
    index, _ = project.pool_index()
    expected = [chunk_key("onevision", i) for i in range(-(-demo.n_image_rows // 4))]
    assert index.chunk_keys()[: len(expected)] == expected
    assert any(k.startswith("video-") for k in index.chunk_keys())
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("pool_chunks", index.chunk_keys())
        assert built.resolve_job_def("observe_pool").execute_in_process(instance=instance).success
        ran = built.resolve_job_def("ingest_pool").execute_in_process(instance=instance, partition_key=expected[0])
        assert ran.success
    assert (tmp_path / "project" / "data" / "pool" / "qa" / f"{expected[0]}.parquet").is_file()


def test_the_cli_reads_the_settings_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path, _ = _pool_project(tmp_path)
    home = tmp_path / "home"
    write(home / "dagster.yaml", "telemetry:\n  enabled: false\n")
    clean_env.setenv("DAGSTER_HOME", str(home))
    clean_env.setenv("GDO_SETTINGS", str(path))
    runner = CliRunner()
    dry = runner.invoke(app, ["backfill", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith(f"settings: {path} (from GDO_SETTINGS; from the file: onevision, video, data_dir")
    assert "candidate_pool to run: onevision-00000 (missing)" in dry.output
    registered = runner.invoke(app, ["register-pool"])  # no options: the project's pool files and chunk size
    assert registered.exit_code == 0, registered.output
    with DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("pool_chunks")
    assert "onevision-00000" in keys and registered.output.startswith(f"settings: {path}")
    index, _ = build_definitions(in_process=True).resources["gdo"].pool_index(save=False)
    assert sorted(keys) == sorted(index.chunk_keys())
    assert f"registered {len(keys)} new chunk partitions ({len(keys)} in the pool)" in registered.output
    clean_env.setenv("GDO_SETTINGS", str(write(tmp_path / "empty.toml", "")))
    none = runner.invoke(app, ["register-pool"])
    assert none.exit_code == 2 and "give --onevision and/or --video, or configure the pool" in none.output


# ---- the settings file `gdo demo` writes -------------------------------------------------------


def _comparable(resource) -> dict:
    fields = resource.model_dump()
    fields.pop("settings", None)  # where the settings came from: information only
    return fields


def test_the_demo_settings_file_reads_back_as_the_demo_settings(tmp_path: Path) -> None:
    data_dir = tmp_path / "gdo"
    pool = data_dir / "demo" / "pool"
    demo = demo_resources(data_dir, SMALL, pool / "onevision.jsonl", pool / "video.jsonl", data_dir / "tiny-model")
    path = write_demo_settings(demo_settings_path(data_dir), *demo)
    assert path == data_dir / "gdo.toml"
    text = path.read_text()
    assert text.startswith(f"# {SETTINGS_MARK}")
    # paths relative to the file: the data folder can move with its settings
    for line in ('data_dir = "."', 'onevision = ["demo/pool/onevision.jsonl"]', 'video = ["demo/pool/video.jsonl"]',
                 'model = "tiny-model"', "chunk_lines = 1000", "target_frames = 8", 'tnc_mode = "regex"',
                 "sc_samples = 0", "batch_size = 16", "torch_threads = 1", 'recipe = "demo"', 'device = "cpu"'):
        assert line in text.splitlines(), line
    built = build_definitions(in_process=True, env={"GDO_SETTINGS": str(path)})
    again = [built.resources[k] for k in ("gdo", "descriptor_model", "training")]
    for ran, read in zip(demo, again):
        assert _comparable(read) == _comparable(ran)
    # so the code versions, and with them what is stale, are the demo's
    assert again[0].parse_version == demo[0].parse_version
    assert again[1].code_version() == demo[1].code_version()


def test_the_demo_rewrites_its_own_settings_file_only(tmp_path: Path) -> None:
    path = tmp_path / "gdo.toml"
    assert demo_may_write_settings(path)  # none yet
    pool = tmp_path / "demo" / "pool"
    write_demo_settings(path, *demo_resources(tmp_path, SMALL, pool / "ov.jsonl", pool / "v.jsonl", tmp_path / "m"))
    assert demo_may_write_settings(path)  # the demo's own
    write(path, 'onevision = ["mine.jsonl"]\n')
    assert not demo_may_write_settings(path)  # the user's: kept
