"""The resources read from GDO_* environment variables: defaults, parsed values, and bad values
failing with the variable named."""

import os

import pytest

from dagster_project.definitions import build_definitions
from gdo_assets.descriptors import descriptor_model_from_env
from gdo_assets.project import EnvError, project_from_env
from gdo_assets.training import training_from_env
from gdo_core.profiles import profiles_dir_from_env

VARIABLES = (
    "GDO_DATA_DIR", "GDO_ONEVISION", "GDO_VIDEO", "GDO_CHUNK_LINES", "GDO_TARGET_FRAMES",
    "GDO_MEDIA_ROOT", "GDO_MODEL", "GDO_DEVICE", "GDO_DTYPE", "GDO_TNC_MODE", "GDO_SC_SAMPLES",
    "GDO_BATCH_SIZE", "GDO_MOTION_ONLY", "GDO_TORCH_THREADS", "GDO_DESCRIPTOR_CACHE",
    "GDO_RECIPE", "GDO_GPUS", "GDO_CPU_THREADS", "GDO_PROFILES_DIR",
    # the deployment profile's settings (tests/test_execution_profiles.py)
    "GDO_DEPLOYMENT", "GDO_GPU_LOCK_DIR", "GDO_GPU_WAIT_S", "GDO_GPUS_PER_TRAIN_STEP", "GDO_K8S_PVC",
    "GDO_K8S_MOUNT_PATH", "GDO_K8S_GPU_NODE_SELECTOR", "GDO_K8S_TOLERATIONS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---- project_from_env -------------------------------------------------------------------------


def test_project_defaults() -> None:
    project = project_from_env()
    assert (project.data_dir, project.onevision, project.video) == (".gdo", [], [])
    assert (project.chunk_lines, project.target_frames, project.media_root) == (20_000, 32, None)


def test_project_values(clean_env: pytest.MonkeyPatch) -> None:
    sep = os.pathsep
    clean_env.setenv("GDO_DATA_DIR", "/data/gdo")
    clean_env.setenv("GDO_ONEVISION", f"/p/ov1.jsonl{sep}{sep}/p/ov2.jsonl{sep}")  # empty parts dropped
    clean_env.setenv("GDO_VIDEO", "/p/vv.jsonl")
    clean_env.setenv("GDO_CHUNK_LINES", " 500 ")
    clean_env.setenv("GDO_TARGET_FRAMES", "8")
    clean_env.setenv("GDO_MEDIA_ROOT", "/media")
    project = project_from_env()
    assert project.data_dir == "/data/gdo" and project.video == ["/p/vv.jsonl"]
    assert project.onevision == ["/p/ov1.jsonl", "/p/ov2.jsonl"]
    assert (project.chunk_lines, project.target_frames, project.media_root) == (500, 8, "/media")


def test_blank_values_mean_the_default(clean_env: pytest.MonkeyPatch) -> None:
    for name in ("GDO_DATA_DIR", "GDO_CHUNK_LINES", "GDO_MEDIA_ROOT", "GDO_ONEVISION"):
        clean_env.setenv(name, "")
    project = project_from_env()
    assert (project.data_dir, project.chunk_lines, project.media_root) == (".gdo", 20_000, None)
    assert project.onevision == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GDO_CHUNK_LINES", "20k", "GDO_CHUNK_LINES='20k': expected a whole number"),
        ("GDO_CHUNK_LINES", "2.5", "GDO_CHUNK_LINES='2.5': expected a whole number"),
        ("GDO_CHUNK_LINES", "0", "GDO_CHUNK_LINES='0': must be at least 1"),
        ("GDO_TARGET_FRAMES", "-4", "GDO_TARGET_FRAMES='-4': must be at least 1"),
    ],
)
def test_project_bad_values_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(EnvError) as info:
        project_from_env()
    assert str(info.value) == message


# ---- descriptor_model_from_env ----------------------------------------------------------------


def test_descriptor_model_defaults() -> None:
    model = descriptor_model_from_env()
    assert (model.model_dir, model.device, model.dtype, model.tnc_mode) == (None, "cpu", None, "llm")
    assert (model.sc_samples, model.batch_size, model.motion_only) == (5, 8, False)
    assert (model.torch_threads, model.cache_dir) == (None, None)


def test_descriptor_model_values(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GDO_MODEL": "/models/tiny",
        "GDO_DEVICE": "cuda:1",
        "GDO_DTYPE": "bfloat16",
        "GDO_TNC_MODE": "regex",
        "GDO_SC_SAMPLES": "0",
        "GDO_BATCH_SIZE": "32",
        "GDO_MOTION_ONLY": "Yes",
        "GDO_TORCH_THREADS": "4",
        "GDO_DESCRIPTOR_CACHE": "/cache",
    }.items():
        clean_env.setenv(name, value)
    model = descriptor_model_from_env()
    assert (model.model_dir, model.device, model.dtype, model.tnc_mode) == (
        "/models/tiny", "cuda:1", "bfloat16", "regex",
    )
    assert (model.sc_samples, model.batch_size, model.motion_only) == (0, 32, True)
    assert (model.torch_threads, model.cache_dir) == (4, "/cache")


@pytest.mark.parametrize(("value", "on"), [("1", True), ("TRUE", True), ("0", False), ("no", False), ("", False)])
def test_motion_only_flag(clean_env: pytest.MonkeyPatch, value: str, on: bool) -> None:
    clean_env.setenv("GDO_MOTION_ONLY", value)
    assert descriptor_model_from_env().motion_only is on


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GDO_MOTION_ONLY", "maybe", "GDO_MOTION_ONLY='maybe': expected 1, true or yes (on), or 0, false or no (off)"),
        ("GDO_TNC_MODE", "gpt", "GDO_TNC_MODE='gpt': expected one of llm, regex"),
        ("GDO_DTYPE", "fp8", "GDO_DTYPE='fp8': expected one of float32, bfloat16, float16"),
        ("GDO_SC_SAMPLES", "-1", "GDO_SC_SAMPLES='-1': must be at least 0"),
        ("GDO_BATCH_SIZE", "eight", "GDO_BATCH_SIZE='eight': expected a whole number"),
        ("GDO_BATCH_SIZE", "0", "GDO_BATCH_SIZE='0': must be at least 1"),
        ("GDO_TORCH_THREADS", "all", "GDO_TORCH_THREADS='all': expected a whole number"),
    ],
)
def test_descriptor_model_bad_values_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(EnvError) as info:
        descriptor_model_from_env()
    assert str(info.value) == message


# ---- training_from_env ------------------------------------------------------------------------


def test_training_defaults() -> None:
    training = training_from_env()
    assert (training.model_dir, training.recipe, training.gpus, training.cpu_threads) == (
        None, "paper", None, 1,
    )
    assert training.gpu_list() == ()


def test_training_values(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GDO_MODEL", "/models/base")
    clean_env.setenv("GDO_RECIPE", "demo")
    clean_env.setenv("GDO_GPUS", "0, 3")
    clean_env.setenv("GDO_CPU_THREADS", "6")
    training = training_from_env()
    assert (training.model_dir, training.recipe, training.cpu_threads) == ("/models/base", "demo", 6)
    assert training.gpu_list() == (0, 3) and training.eval_launch().gpu == 0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GDO_GPUS", "a,b", "GDO_GPUS='a,b': expected GPU indices separated by commas, e.g. 0,1"),
        ("GDO_GPUS", "0,,1", "GDO_GPUS='0,,1': expected GPU indices separated by commas, e.g. 0,1"),
        ("GDO_CPU_THREADS", "0", "GDO_CPU_THREADS='0': must be at least 1"),
        ("GDO_CPU_THREADS", "1.5", "GDO_CPU_THREADS='1.5': expected a whole number"),
    ],
)
def test_training_bad_values_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(EnvError) as info:
        training_from_env()
    assert str(info.value) == message


# ---- profiles_dir_from_env and the definitions ------------------------------------------------


def test_profiles_dir(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    assert profiles_dir_from_env() is None
    clean_env.setenv("GDO_PROFILES_DIR", "")
    assert profiles_dir_from_env() is None
    clean_env.setenv("GDO_PROFILES_DIR", str(tmp_path))
    assert profiles_dir_from_env() == tmp_path
    assert profiles_dir_from_env(tmp_path / "given") == tmp_path / "given"  # the argument wins


def test_definitions_fail_on_a_bad_variable_with_its_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GDO_BATCH_SIZE", "lots")
    with pytest.raises(EnvError, match="GDO_BATCH_SIZE='lots': expected a whole number"):
        build_definitions()
