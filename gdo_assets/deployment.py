"""Execution profiles, chosen in one place: GDO_DEPLOYMENT=local|gpu|k8s.

The profile is read when the definitions are built (dagster_project.definitions), from the
environment given to the build, never when a module is imported. It decides the executor, the
GPU assets' op tags and the device fields of the resources:

- `local` (default): Dagster's multiprocess executor (in-process for tests and the demo); the
  devices are the resources' own (GDO_DEVICE, GDO_GPUS), CPU by default.
- `gpu`: multiprocess executor on one GPU machine. Every GPU step (descriptor_shards, checkpoints,
  benchmark_scores) claims its own device from the visible GPUs (gdo_assets.devices) while it runs:
  `cuda:N` in bfloat16 for the descriptor pass, CUDA_VISIBLE_DEVICES=<id> for the training and
  scoring subprocesses. The `gpu` concurrency pool is sized to the visible GPUs by gpu_pool_sensor.
- `k8s`: dagster-k8s's k8s_job_executor; each step runs in its own pod with the data PVC mounted
  at GDO_K8S_MOUNT_PATH; GPU steps ask for `nvidia.com/gpu` and carry the GPU node selector and
  tolerations (`dagster-k8s/config` op tag). See docs/deploy.md.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    ExecutorDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    in_process_executor,
    multiprocess_executor,
    sensor,
)

from gdo_assets.descriptors import GPU_OP_TAGS, GPU_POOL, K8S_CONFIG_TAG
from gdo_assets.devices import DEFAULT_WAIT_S, GpuSlots, default_lock_dir, visible_gpus
from gdo_assets.project import EnvError, env_choice, env_int, env_json

DEPLOYMENT_VAR = "GDO_DEPLOYMENT"
LOCAL, GPU, K8S = "local", "gpu", "k8s"
DEPLOYMENTS = (LOCAL, GPU, K8S)

# Settings of the profiles (docs/deploy.md describes each).
GPU_LOCK_DIR_VAR = "GDO_GPU_LOCK_DIR"  # gpu: folder of the per-device lock files
GPU_WAIT_VAR = "GDO_GPU_WAIT_S"  # gpu: seconds a step waits for a free GPU
TRAIN_GPUS_VAR = "GDO_GPUS_PER_TRAIN_STEP"  # gpu, k8s: GPUs of one checkpoints step
K8S_PVC_VAR = "GDO_K8S_PVC"  # k8s: the PersistentVolumeClaim holding the data (required)
K8S_MOUNT_VAR = "GDO_K8S_MOUNT_PATH"  # k8s: where every step pod mounts it
K8S_NODE_SELECTOR_VAR = "GDO_K8S_GPU_NODE_SELECTOR"  # k8s: JSON object, GPU pods only
K8S_TOLERATIONS_VAR = "GDO_K8S_TOLERATIONS"  # k8s: JSON list, GPU pods only

GPU_RESOURCE = "nvidia.com/gpu"
DATA_VOLUME = "gdo-data"  # the volume's name inside the pods (deploy/helm-values.yaml uses it too)
DEFAULT_MOUNT = "/data"


@dataclass(frozen=True)
class K8sSettings:
    """Where the data volume is and which nodes GPU pods may run on."""

    pvc: str
    mount_path: str = DEFAULT_MOUNT
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def data_volume(self) -> dict[str, Any]:
        """The pod volume of the data PVC."""
        return {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": self.pvc}}

    def data_volume_mount(self) -> dict[str, Any]:
        """The container mount of the data PVC."""
        return {"name": DATA_VOLUME, "mountPath": self.mount_path}

    def step_k8s_config(self) -> dict[str, Any]:
        """What every step pod gets: the data volume (k8s_job_executor's step_k8s_config)."""
        return {
            "container_config": {"volume_mounts": [self.data_volume_mount()]},
            "pod_spec_config": {"volumes": [self.data_volume()]},
        }

    def gpu_k8s_config(self, gpus: int) -> dict[str, Any]:
        """The `dagster-k8s/config` of a GPU step: `gpus` GPUs, GPU nodes, the data volume."""
        count = str(gpus)
        pod_spec: dict[str, Any] = {"volumes": [self.data_volume()]}
        if self.node_selector:
            pod_spec["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            pod_spec["tolerations"] = [dict(t) for t in self.tolerations]
        return {
            "container_config": {
                "resources": {"limits": {GPU_RESOURCE: count}, "requests": {GPU_RESOURCE: count}},
                "volume_mounts": [self.data_volume_mount()],
            },
            "pod_spec_config": pod_spec,
        }


@dataclass(frozen=True)
class Deployment:
    """One execution profile with its settings, as read from the environment."""

    name: str = LOCAL
    gpu_devices: tuple[str, ...] = ()  # gpu: the visible GPUs steps claim from
    gpu_lock_dir: str = ""
    gpu_wait_s: float = DEFAULT_WAIT_S
    gpus_per_train_step: int = 1
    k8s: K8sSettings | None = None
    data_dir: str | None = None  # k8s: the data folder on the volume

    def executor(self, in_process: bool = False) -> ExecutorDefinition:
        """The profile's executor; `in_process` (tests, the demo) runs every step in this process."""
        if in_process:
            return in_process_executor
        if self.name == K8S:
            from dagster_k8s import k8s_job_executor  # the `k8s` extra: pip install 'gdo[k8s]'

            assert self.k8s is not None
            return k8s_job_executor.configured({"step_k8s_config": self.k8s.step_k8s_config()}, name="k8s")
        return multiprocess_executor

    def gpu_op_tags(self, gpus: int = 1) -> dict[str, Any]:
        """Op tags of a GPU asset whose step uses `gpus` GPUs (k8s: its whole pod config)."""
        if self.k8s is None:
            return dict(GPU_OP_TAGS)
        return {K8S_CONFIG_TAG: self.k8s.gpu_k8s_config(gpus)}

    def gpu_slots(self) -> GpuSlots:
        """Per-step GPU claims (none outside the gpu profile)."""
        if self.name != GPU:
            return GpuSlots(devices=[])
        return GpuSlots(devices=list(self.gpu_devices), lock_dir=self.gpu_lock_dir, wait_s=self.gpu_wait_s)

    def project_fields(self) -> dict[str, Any]:
        """GdoProject fields the profile sets."""
        if self.k8s is None:
            return {}
        return {"data_dir": self.data_dir, "data_mount": self.k8s.mount_path}

    def descriptor_fields(self, env: Mapping[str, str]) -> dict[str, Any]:
        """DescriptorModel fields the profile sets."""
        if self.name == GPU:
            return {"gpu_slots": self.gpu_slots()}
        if self.name == K8S and not env.get("GDO_DEVICE"):
            return {"device": "cuda"}  # the pod sees only the GPU it asked for
        return {}

    def training_fields(self, env: Mapping[str, str]) -> dict[str, Any]:
        """TrainingResource fields the profile sets."""
        if self.name == GPU:
            return {"gpu_slots": self.gpu_slots(), "gpus_per_train_step": self.gpus_per_train_step}
        if self.name == K8S and not env.get("GDO_GPUS"):
            return {"gpus": ",".join(str(i) for i in range(self.gpus_per_train_step))}
        return {}

    def sensors(self) -> list[SensorDefinition]:
        """Sensors the profile adds."""
        return [gpu_pool_sensor(len(self.gpu_devices))] if self.name == GPU else []


def deployment_name(env: Mapping[str, str] | None = None) -> str:
    """GDO_DEPLOYMENT: local (default), gpu or k8s."""
    return env_choice(DEPLOYMENT_VAR, DEPLOYMENTS, LOCAL, env)  # type: ignore[return-value]


def _unused_under(env: Mapping[str, str], profile: str, names: tuple[str, ...], why: str) -> None:
    for name in names:
        if (env.get(name) or "").strip():
            raise EnvError(f"{name}={env[name]!r}: not used under {DEPLOYMENT_VAR}={profile} ({why}); unset it")


def _gpu_settings(env: Mapping[str, str]) -> dict[str, Any]:
    _unused_under(env, GPU, ("GDO_DEVICE", "GDO_GPUS"), "each GPU step is given its own GPU")
    devices = visible_gpus(env)
    if not devices:
        raise EnvError(
            f"{DEPLOYMENT_VAR}=gpu: no GPU is visible (CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES')!r}, torch.cuda.device_count() is 0)"
        )
    if not all(d.isdigit() for d in devices):
        raise EnvError(
            f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}: {DEPLOYMENT_VAR}=gpu needs GPU "
            "indices (e.g. 0,1), not UUIDs"
        )
    per_train = env_int(TRAIN_GPUS_VAR, 1, minimum=1, env=env)
    if per_train > len(devices):
        raise EnvError(f"{TRAIN_GPUS_VAR}={per_train}: only {len(devices)} GPU(s) are visible ({', '.join(devices)})")
    return {
        "gpu_devices": devices,
        "gpu_lock_dir": (env.get(GPU_LOCK_DIR_VAR) or "").strip() or default_lock_dir(),
        "gpu_wait_s": float(env_int(GPU_WAIT_VAR, int(DEFAULT_WAIT_S), minimum=0, env=env)),
        "gpus_per_train_step": per_train,
    }


def _k8s_settings(env: Mapping[str, str]) -> dict[str, Any]:
    pvc = (env.get(K8S_PVC_VAR) or "").strip()
    if not pvc:
        raise EnvError(
            f"{K8S_PVC_VAR} is not set: {DEPLOYMENT_VAR}=k8s needs the PersistentVolumeClaim that holds "
            "the data, shared by every step pod (docs/deploy.md)"
        )
    mount = (env.get(K8S_MOUNT_VAR) or "").strip() or DEFAULT_MOUNT
    if not posixpath.isabs(mount):
        raise EnvError(f"{K8S_MOUNT_VAR}={mount!r}: expected an absolute path, e.g. /data")
    mount = posixpath.normpath(mount)
    data_dir = (env.get("GDO_DATA_DIR") or "").strip() or posixpath.join(mount, "gdo")
    inside = posixpath.normpath(data_dir)
    if not posixpath.isabs(inside) or not (inside == mount or inside.startswith(mount.rstrip("/") + "/")):
        raise EnvError(
            f"GDO_DATA_DIR={data_dir!r}: under {DEPLOYMENT_VAR}=k8s the data folder must be on the data volume, "
            f"inside {K8S_MOUNT_VAR}={mount!r}"
        )
    selector = env_json(K8S_NODE_SELECTOR_VAR, dict, '{"nvidia.com/gpu.present": "true"}', env)
    if not all(isinstance(v, str) for v in selector.values()):
        raise EnvError(f"{K8S_NODE_SELECTOR_VAR}={env[K8S_NODE_SELECTOR_VAR]!r}: label values must be strings")
    tolerations = env_json(
        K8S_TOLERATIONS_VAR, list, '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]', env
    )
    if not all(isinstance(t, dict) for t in tolerations):
        raise EnvError(f"{K8S_TOLERATIONS_VAR}={env[K8S_TOLERATIONS_VAR]!r}: expected a JSON list of objects")
    return {
        "k8s": K8sSettings(pvc, mount, selector, tuple(tolerations)),
        "data_dir": data_dir,
        "gpus_per_train_step": env_int(TRAIN_GPUS_VAR, 1, minimum=1, env=env),
    }


def deployment_from_env(env: Mapping[str, str] | None = None, name: str | None = None) -> Deployment:
    """The profile named by GDO_DEPLOYMENT (or `name`) with its settings from `env` (os.environ);
    an EnvError naming the variable when one is unusable."""
    env = os.environ if env is None else env
    name = name or deployment_name(env)
    if name not in DEPLOYMENTS:
        raise EnvError(f"{DEPLOYMENT_VAR}={name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    if name == GPU:
        return Deployment(GPU, **_gpu_settings(env))
    if name == K8S:
        return Deployment(K8S, **_k8s_settings(env))
    return Deployment(LOCAL)


def size_gpu_pool(instance: DagsterInstance, gpus: int) -> str:
    """Set the `gpu` concurrency pool's limit to `gpus`; what was done, in words."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return f"this instance's storage has no concurrency pools; the `{GPU_POOL}` pool cannot be sized"
    current = storage.get_concurrency_info(GPU_POOL).slot_count
    if current == gpus:
        return f"the `{GPU_POOL}` pool already has {gpus} slots"
    storage.set_concurrency_slots(GPU_POOL, gpus)
    return f"the `{GPU_POOL}` pool was set from {current} to {gpus} slots (the visible GPUs)"


def gpu_pool_sensor(gpus: int) -> SensorDefinition:
    """Keeps the `gpu` pool's limit at the number of visible GPUs (gpu profile)."""

    @sensor(
        name="gpu_pool_sensor",
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps the `{GPU_POOL}` concurrency pool at the {gpus} visible GPU(s), one GPU step per GPU.",
    )
    def _sensor(context: SensorEvaluationContext) -> SkipReason:
        return SkipReason(size_gpu_pool(context.instance, gpus))

    return _sensor
