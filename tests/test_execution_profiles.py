"""Execution profiles (GDO_DEPLOYMENT=local|gpu|k8s): parsing, the executor each profile builds,
distinct GPUs for concurrent GPU steps under `gpu` (simulated device list, no GPU needed), and
the step pods `k8s` asks for, built with dagster-k8s's own job constructor (no cluster)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    Failure,
    build_init_resource_context,
    build_sensor_context,
    in_process_executor,
    instance_for_test,
    multiprocess_executor,
)

from dagster_project.definitions import build_definitions, defs
from gdo_assets.deployment import (
    DATA_VOLUME,
    GPU_RESOURCE,
    deployment_from_env,
    deployment_name,
)
from gdo_assets.descriptors import GPU_POOL, K8S_CONFIG_TAG
from gdo_assets.devices import GpuAllocator, NoFreeGpu
from gdo_assets.project import EnvError, GdoProject

REPO = Path(__file__).resolve().parents[1]
GPU_ASSETS = ("descriptor_shards", "checkpoints", "benchmark_scores")
NODE_SELECTOR = {"nvidia.com/gpu.present": "true", "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def gpu_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The gpu profile on a simulated two-GPU machine: CUDA_VISIBLE_DEVICES lists the devices."""
    return {"GDO_DEPLOYMENT": "gpu", "CUDA_VISIBLE_DEVICES": "0,1", "GDO_GPU_LOCK_DIR": str(tmp_path / "locks"),
            "GDO_GPU_WAIT_S": "0", "GDO_MODEL": str(tmp_path / "model"), **extra}


def k8s_env(**extra: str) -> dict[str, str]:
    return {"GDO_DEPLOYMENT": "k8s", "GDO_K8S_PVC": "gdo-data", "GDO_K8S_GPU_NODE_SELECTOR": json.dumps(NODE_SELECTOR),
            "GDO_K8S_TOLERATIONS": json.dumps(TOLERATIONS), **extra}


def op_tags(built, asset: str) -> dict[str, str]:
    return dict(built.get_assets_def(AssetKey(asset)).op.tags)


# ---- GDO_DEPLOYMENT parsing and the executor of each profile ----------------------------------


def test_the_profile_defaults_to_local_with_the_multiprocess_executor() -> None:
    assert deployment_name({}) == "local" and deployment_name({"GDO_DEPLOYMENT": " "}) == "local"
    built = build_definitions(env={})
    assert built.executor is multiprocess_executor
    assert built.resources["descriptor_model"].device == "cpu"
    assert built.resources["descriptor_model"].gpu_slots.devices == []
    assert "gpu_pool_sensor" not in {s.name for s in built.sensors}
    assert build_definitions(env={}, in_process=True).executor is in_process_executor


@pytest.mark.parametrize("value", ["cluster", "GPU", "kubernetes"])
def test_a_bad_profile_names_the_variable(value: str) -> None:
    message = f"GDO_DEPLOYMENT='{value}': expected one of local, gpu, k8s"
    with pytest.raises(EnvError) as info:
        deployment_from_env({"GDO_DEPLOYMENT": value})
    assert str(info.value) == message
    with pytest.raises(EnvError, match="GDO_DEPLOYMENT="):
        build_definitions(env={"GDO_DEPLOYMENT": value})


def test_the_profile_is_read_when_dagster_builds_the_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    # `defs` is lazy: the module was imported long before; the variable counts when Dagster calls it.
    monkeypatch.setenv("GDO_DEPLOYMENT", "nonsense")
    with pytest.raises(EnvError, match="GDO_DEPLOYMENT='nonsense'"):
        defs()
    monkeypatch.setenv("GDO_DEPLOYMENT", "local")
    assert defs().executor is multiprocess_executor


def test_gpu_profile_uses_the_multiprocess_executor_and_claims_per_step(tmp_path: Path) -> None:
    built = build_definitions(env=gpu_env(tmp_path, GDO_GPUS_PER_TRAIN_STEP="2"))
    assert built.executor is multiprocess_executor
    model, training = built.resources["descriptor_model"], built.resources["training"]
    assert model.gpu_slots.devices == ["0", "1"] and training.gpu_slots.devices == ["0", "1"]
    assert model.gpu_slots.lock_dir == str(tmp_path / "locks") and training.gpus_per_train_step == 2
    for asset in GPU_ASSETS:
        assert built.get_assets_def(AssetKey(asset)).op.pool == GPU_POOL


def test_gpu_profile_sizes_the_gpu_pool_to_the_visible_gpus(tmp_path: Path) -> None:
    built = build_definitions(env=gpu_env(tmp_path))
    (pool_sensor,) = [s for s in built.sensors if s.name == "gpu_pool_sensor"]
    with instance_for_test() as instance:
        first = pool_sensor(build_sensor_context(instance=instance))
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 2
        assert "set from 0 to 2 slots" in first.skip_message
        again = pool_sensor(build_sensor_context(instance=instance))
        assert "already has 2 slots" in again.skip_message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"CUDA_VISIBLE_DEVICES": ""}, "GDO_DEPLOYMENT=gpu: no GPU is visible"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-5b1f,GPU-77aa"}, "CUDA_VISIBLE_DEVICES='GPU-5b1f,GPU-77aa': GDO_DEPLOYMENT=gpu needs GPU indices"),
        ({"GDO_DEVICE": "cuda:1"}, "GDO_DEVICE='cuda:1': not used under GDO_DEPLOYMENT=gpu"),
        ({"GDO_GPUS": "0"}, "GDO_GPUS='0': not used under GDO_DEPLOYMENT=gpu"),
        ({"GDO_GPUS_PER_TRAIN_STEP": "3"}, "GDO_GPUS_PER_TRAIN_STEP=3: only 2 GPU(s) are visible"),
        ({"GDO_GPU_WAIT_S": "soon"}, "GDO_GPU_WAIT_S='soon': expected a whole number"),
    ],
)
def test_gpu_profile_bad_settings_name_the_variable(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(EnvError) as info:
        build_definitions(env=gpu_env(tmp_path, **extra))
    assert str(info.value).startswith(message)


# ---- gpu: concurrent GPU steps get distinct devices ------------------------------------------


def test_two_gpu_steps_under_the_gpu_profile_get_different_devices(tmp_path: Path) -> None:
    """A descriptor step and a scoring step run at the same time (threads held at a barrier while
    both hold their GPU); each gets its own device, and a third finds none free."""
    built = build_definitions(env=gpu_env(tmp_path))
    model, training = built.resources["descriptor_model"], built.resources["training"]
    both_claimed, checked = threading.Barrier(3), threading.Barrier(3)
    seen: dict[str, object] = {}

    def describe() -> None:
        with model.step_settings("run a step descriptor_shards[onevision-00000]") as settings:
            seen["describe"] = settings
            both_claimed.wait(timeout=30)
            checked.wait(timeout=30)

    def score() -> None:
        with training.step_eval_launch("run b step benchmark_scores[temp_plus|gdo_1x]") as launch:
            seen["score"] = launch
            both_claimed.wait(timeout=30)
            checked.wait(timeout=30)

    threads = [threading.Thread(target=describe), threading.Thread(target=score)]
    for thread in threads:
        thread.start()
    both_claimed.wait(timeout=30)  # both steps now hold a GPU
    try:
        described, scored = seen["describe"], seen["score"]
        assert described.device in ("cuda:0", "cuda:1") and described.dtype_name == "bfloat16"
        assert scored.gpu in (0, 1) and scored.dtype == "bfloat16"
        assert described.device != f"cuda:{scored.gpu}"
        with (pytest.raises(NoFreeGpu, match=r"run c.*no 1 free GPU\(s\) among 0, 1.*held by"),
              training.step_launch("run c step checkpoints[temp_plus|gdo_1x]")):
            pass
    finally:
        checked.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=30)
    # Released at step end: a training step can now take both GPUs.
    with training.model_copy(update={"gpus_per_train_step": 2}).step_launch("run d step checkpoints") as launch:
        assert sorted(launch.gpus) == [0, 1]


@pytest.mark.e2e
def test_a_real_descriptor_step_under_the_gpu_profile_takes_the_free_gpu(tmp_path: Path) -> None:
    """descriptor_shards run by Dagster (motion only, so no GPU is touched) while another step
    holds GPU 0: the step records cuda:1 and gives it back when it ends."""
    from dagster import DagsterInstance

    from gdo_assets.pool import register_chunks
    from gdo_core.demo import make_demo_pool

    pool = make_demo_pool(tmp_path / "pool", n_image_rows=6, n_videos=2)
    project = GdoProject(data_dir=str(tmp_path / "data"), onevision=[str(pool.onevision)], chunk_lines=50)
    built = build_definitions(project, env=gpu_env(tmp_path, GDO_MOTION_ONLY="1"))
    allocator = GpuAllocator(["0", "1"], tmp_path / "locks")
    with DagsterInstance.ephemeral() as instance:
        (key,), _ = register_chunks(instance, pool.onevision, None, 50)
        assert built.resolve_job_def("ingest_pool").execute_in_process(instance=instance, partition_key=key).success
        with allocator.claimed("run other step descriptor_shards[elsewhere]"):
            result = built.resolve_job_def("describe_chunks").execute_in_process(instance=instance, partition_key=key)
            assert list(allocator.owners()) == ["0"]  # the step's claim on GPU 1 ended with it
    (event,) = result.get_asset_materialization_events()
    assert event.step_materialization_data.materialization.metadata["device"].value == "cuda:1"


def test_claims_follow_the_visible_list_and_a_dead_process_frees_its_gpu(tmp_path: Path) -> None:
    """Visible GPUs 4,7: in-process device is the list position, a child process gets the id. A
    claim held by another process blocks that GPU until the process exits (no sleeps: pipes)."""
    lock_dir = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from gdo_assets.devices import GpuAllocator\n"
            f"c = GpuAllocator(['4', '7'], {str(lock_dir)!r}).claim('run x step other')\n"
            "print(c.ids[0], flush=True); sys.stdin.read()"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        held = holder.stdout.readline().strip()
        assert held == "4"
        allocator = GpuAllocator(["4", "7"], lock_dir)
        with allocator.claimed("run y step descriptor_shards") as claim:
            assert (claim.device, claim.cuda_visible_devices) == ("cuda:1", "7")
            assert allocator.owners() == {"4": f"run x step other (pid {holder.pid})",
                                          "7": f"run y step descriptor_shards (pid {os.getpid()})"}
            assert allocator.try_claim("run z") is None
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with allocator.claimed("run z", count=2) as claim:  # the exited process's GPU is free again
        assert claim.ids == ("4", "7")
    assert allocator.owners() == {}


def test_local_profile_steps_keep_their_configured_device(tmp_path: Path) -> None:
    built = build_definitions(env={"GDO_MODEL": str(tmp_path), "GDO_DEVICE": "cuda:3", "GDO_GPUS": "2,5"})
    with built.resources["descriptor_model"].step_settings("run a") as settings:
        assert settings.device == "cuda:3"
    with built.resources["training"].step_launch("run a") as launch:
        assert launch.gpus == (2, 5)
    assert not (tmp_path / "locks").exists()


# ---- k8s: the step pods of GPU assets -------------------------------------------------------


def step_job(tags: dict[str, str], executor_step_config: dict | None = None):
    """The Kubernetes Job dagster-k8s's executor would create for a step with these op tags."""
    from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_user_defined_k8s_config

    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_step_config or {}))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/gdo:0.1.0", dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance", postgres_password_secret="dagster-postgresql-secret",
    )
    return construct_dagster_k8s_job(
        job_config, args=["dagster", "api", "execute_step"], job_name="dagster-step-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config,
    )


@pytest.mark.parametrize(("asset", "gpus"), [("descriptor_shards", "1"), ("checkpoints", "2"), ("benchmark_scores", "1")])
def test_k8s_gpu_step_pods_ask_for_gpus_on_gpu_nodes_with_the_data_volume(asset: str, gpus: str) -> None:
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    built = build_definitions(env=k8s_env(GDO_GPUS_PER_TRAIN_STEP="2"))
    tags = op_tags(built, asset)
    # The tag as the executor reads it from the step's tags, and via UserDefinedDagsterK8sConfig.from_dict.
    for job in (step_job(tags),
                step_job({}, UserDefinedDagsterK8sConfig.from_dict(json.loads(tags[K8S_CONFIG_TAG])).to_dict())):
        pod = job.spec.template.spec
        (container,) = pod.containers
        assert container.resources.limits == {GPU_RESOURCE: gpus}
        assert container.resources.requests == {GPU_RESOURCE: gpus}
        assert pod.node_selector == NODE_SELECTOR
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
        ((volume,), (mount,)) = pod.volumes, container.volume_mounts
        assert (volume.name, volume.persistent_volume_claim.claim_name) == (DATA_VOLUME, "gdo-data")
        assert (mount.name, mount.mount_path) == (DATA_VOLUME, "/data")


def test_k8s_profile_runs_steps_as_pods_with_the_data_volume_on_every_step() -> None:
    from dagster_k8s import k8s_job_executor

    built = build_definitions(env=k8s_env())
    assert built.executor.name == k8s_job_executor.name == "k8s"
    profile = deployment_from_env(k8s_env())
    step_config = profile.k8s.step_k8s_config()
    # A CPU step (no GPU tag) still mounts the data volume, and asks for no GPU or GPU node.
    pod = step_job(op_tags(built, "candidate_pool"), step_config).spec.template.spec
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes] == ["gdo-data"]
    assert pod.node_selector is None and pod.tolerations is None
    assert not (pod.containers[0].resources.limits or {})
    # A GPU step gets the executor's volume and its tag's volume as one volume, not two.
    pod = step_job(op_tags(built, "descriptor_shards"), step_config).spec.template.spec
    assert len(pod.volumes) == 1 and len(pod.containers[0].volume_mounts) == 1
    # The profile's resources: data on the volume, the pod's GPU, training on all its GPUs.
    project, model, training = (built.resources[k] for k in ("gdo", "descriptor_model", "training"))
    assert (project.data_dir, project.data_mount) == ("/data/gdo", "/data")
    assert (model.device, training.gpus) == ("cuda", "0")


def test_k8s_helm_values_mount_the_same_volume_as_gdo() -> None:
    """Helm's user-deployment volume reaches step pods too (includeConfigInLaunchedRuns): it must
    equal gdo's so dagster-k8s merges them into one volume instead of a duplicate name."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import get_user_defined_k8s_config

    values = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["GDO_DEPLOYMENT"] == "k8s" and deployment["includeConfigInLaunchedRuns"]["enabled"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "dagster_project.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["postgresql"]["enabled"]
    built = build_definitions(env=env)  # the helm settings build (a typo in them would fail here)
    profile = deployment_from_env(env)
    assert deployment["volumes"] == [profile.k8s.data_volume()]
    assert deployment["volumeMounts"] == [profile.k8s.data_volume_mount()]
    helm = K8sContainerContext(volumes=deployment["volumes"], volume_mounts=deployment["volumeMounts"])
    gpu_step = K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags(built, "checkpoints")))
    merged = helm.merge(gpu_step)
    assert len(merged.run_k8s_config.pod_spec_config["volumes"]) == 1
    assert len(merged.run_k8s_config.container_config["volume_mounts"]) == 1


def test_k8s_instance_config_uses_postgres_and_the_k8s_run_launcher() -> None:
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert set(config["storage"]) == {"postgres"}
    assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"GDO_K8S_PVC": ""}, "GDO_K8S_PVC is not set"),
        ({"GDO_K8S_TOLERATIONS": "[{key: gpu}]"}, "GDO_K8S_TOLERATIONS='[{key: gpu}]': not JSON"),
        ({"GDO_K8S_TOLERATIONS": '{"key": "gpu"}'}, "GDO_K8S_TOLERATIONS='{\"key\": \"gpu\"}': expected a JSON list"),
        ({"GDO_K8S_GPU_NODE_SELECTOR": '["gpu"]'}, "GDO_K8S_GPU_NODE_SELECTOR='[\"gpu\"]': expected a JSON object"),
        ({"GDO_K8S_GPU_NODE_SELECTOR": '{"gpus": 8}'}, "GDO_K8S_GPU_NODE_SELECTOR='{\"gpus\": 8}': label values must be strings"),
        ({"GDO_DATA_DIR": "/scratch/gdo"}, "GDO_DATA_DIR='/scratch/gdo': under GDO_DEPLOYMENT=k8s the data folder must be on"),
        ({"GDO_DATA_DIR": "/database"}, "GDO_DATA_DIR='/database': under GDO_DEPLOYMENT=k8s"),
        ({"GDO_K8S_MOUNT_PATH": "data"}, "GDO_K8S_MOUNT_PATH='data': expected an absolute path"),
    ],
)
def test_k8s_bad_settings_name_the_variable(extra: dict, message: str) -> None:
    with pytest.raises(EnvError) as info:
        build_definitions(env=k8s_env(**extra))
    assert str(info.value).startswith(message)


def test_a_k8s_step_without_the_data_volume_fails_at_once(tmp_path: Path) -> None:
    unmounted = GdoProject(data_dir=str(tmp_path / "gdo"), data_mount=str(tmp_path))
    with pytest.raises(Failure, match="is not a mounted volume in this pod"):
        unmounted.setup_for_execution(build_init_resource_context())
    GdoProject(data_dir="/gdo", data_mount="/").setup_for_execution(build_init_resource_context())


def test_module_level_gpu_assets_keep_the_default_gpu_tag() -> None:
    # Assets imported directly (tests, notebooks) ask for one GPU under k8s, as before profiles.
    from gdo_assets.descriptors import descriptor_shards

    config = json.loads(descriptor_shards.op.tags[K8S_CONFIG_TAG])
    assert config["container_config"]["resources"]["limits"] == {GPU_RESOURCE: "1"}
