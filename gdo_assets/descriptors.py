"""descriptor_shards: the six descriptors of every QA of one pool chunk, one Parquet shard per chunk."""

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    ConfigurableResource,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from gdo_assets.devices import GpuSlots
from gdo_assets.merge import DESCRIPTOR_SHARDS, SHARDS_DIR
from gdo_assets.partitions import pool_chunks
from gdo_assets.pool import QA_DIR, candidate_pool
from gdo_assets.project import GdoProject, env_choice, env_flag, env_int
from gdo_core.descriptors.cache import DescriptorCache
from gdo_core.descriptors.extract import (
    QA_COLUMNS,
    DescriptorSettings,
    code_version,
    describe_qa_frame,
)
from gdo_core.descriptors.model_signals import (
    DEFAULT_BATCH_SIZE,
    DTYPES,
    SC_SAMPLES,
    TNC_LLM,
    TNC_MODES,
)
from gdo_core.pool import write_parquet_atomic
from gdo_core.pool_index import drop_stamp, file_digest, read_stamp, write_stamp

CACHE_DIR = ("descriptors", "cache")
GPU_POOL = "gpu"  # Dagster concurrency pool; the `gpu` profile sizes it to the visible GPUs
K8S_CONFIG_TAG = "dagster-k8s/config"
# The op tags GPU assets get when no deployment profile builds them (module-level assets): under
# k8s_job_executor each step runs in its own pod asking for one GPU. The `k8s` profile adds node
# selector, tolerations and the data volume (gdo_assets.deployment).
GPU_OP_TAGS = {
    K8S_CONFIG_TAG: {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}
    }
}


def step_owner(context: AssetExecutionContext) -> str:
    """Who holds a GPU claim: the run, the step and its partition."""
    partition = f"[{context.partition_key}]" if context.has_partition_key else ""
    return f"run {context.run.run_id} step {context.op_def.name}{partition}"


class DescriptorModel(ConfigurableResource):
    """The model and settings of the descriptor pass (docs/method.md, Descriptors)."""

    model_dir: str | None = Field(default=None, description="Model folder (save_pretrained layout).")
    device: str = Field(default="cpu", description="cpu or cuda[:N].")
    dtype: str | None = Field(default=None, description="float32 / bfloat16 / float16 (default by device).")
    tnc_mode: str = Field(default=TNC_LLM, description="Temporal necessity: llm or regex.")
    sc_samples: int = Field(default=SC_SAMPLES, description="Sampled answers for self-consistency.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, description="QAs per model batch.")
    motion_only: bool = Field(default=False, description="Motion and features only (no model; TNC by regex).")
    seed: int = Field(default=0, description="Seed of the SC samples.")
    torch_threads: int | None = Field(default=None, description="Torch CPU threads (default: torch's).")
    cache_dir: str | None = Field(default=None, description="Per-QA cache folder (default: data folder/descriptors/cache).")
    gpu_slots: GpuSlots = Field(
        default_factory=GpuSlots, description="gpu profile: each step claims its own GPU (overrides device)."
    )

    def settings(self) -> DescriptorSettings:
        """The gdo_core settings; a clear error when neither a model nor motion-only is configured."""
        if self.model_dir is None and not self.motion_only:
            raise Failure("descriptor_shards needs a model: set GDO_MODEL (or GDO_MOTION_ONLY=1 for motion only)")
        return DescriptorSettings(
            model_dir=None if self.model_dir is None else os.path.abspath(self.model_dir),
            device=self.device,
            dtype=self.dtype,
            tnc_mode=self.tnc_mode,
            sc_samples=self.sc_samples,
            batch_size=self.batch_size,
            motion_only=self.motion_only,
            seed=self.seed,
            torch_threads=self.torch_threads,
        )

    def code_version(self) -> str:
        """The descriptor_shards code version: descriptor revision, result-changing settings and
        the model's stamp (gdo_core.descriptors.extract.code_version), for the device kind steps
        run on. "unconfigured" without a model or motion-only; "model-unreadable:..." when the
        model folder cannot be read here."""
        if self.model_dir is None and not self.motion_only:
            return "unconfigured"
        settings = self.settings()
        if self.gpu_slots.devices:
            settings = dataclasses.replace(settings, device="cuda")
        try:
            return code_version(settings)
        except OSError as exc:
            return f"model-unreadable:{type(exc).__name__}"

    @contextmanager
    def step_settings(self, owner: str) -> Iterator[DescriptorSettings]:
        """The settings one step runs with: under the gpu profile on the GPU claimed for it
        (`cuda:N`, bfloat16 unless a dtype is set), released when the block ends."""
        settings = self.settings()
        with self.gpu_slots.claimed(owner) as claim:
            yield settings if claim is None else dataclasses.replace(settings, device=claim.device)


def descriptor_model_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> DescriptorModel:
    """The descriptor resource from GDO_MODEL, GDO_DEVICE, GDO_DTYPE, GDO_TNC_MODE, GDO_SC_SAMPLES,
    GDO_BATCH_SIZE, GDO_MOTION_ONLY, GDO_TORCH_THREADS and GDO_DESCRIPTOR_CACHE; `env`: the
    variables (os.environ), `overrides`: fields set by the deployment profile."""
    env = os.environ if env is None else env
    fields = {
        "model_dir": env.get("GDO_MODEL") or None,
        "device": env.get("GDO_DEVICE") or "cpu",
        "dtype": env_choice("GDO_DTYPE", tuple(DTYPES), None, env),
        "tnc_mode": env_choice("GDO_TNC_MODE", TNC_MODES, TNC_LLM, env),
        "sc_samples": env_int("GDO_SC_SAMPLES", SC_SAMPLES, minimum=0, env=env),
        "batch_size": env_int("GDO_BATCH_SIZE", DEFAULT_BATCH_SIZE, minimum=1, env=env),
        "motion_only": env_flag("GDO_MOTION_ONLY", env),
        "torch_threads": env_int("GDO_TORCH_THREADS", None, minimum=1, env=env),
        "cache_dir": env.get("GDO_DESCRIPTOR_CACHE") or None,
    }
    return DescriptorModel(**{**fields, **overrides})


def descriptor_shards_asset(
    op_tags: Mapping[str, Any] = GPU_OP_TAGS,
    code_version: str | None = None,
    automation_condition: AutomationCondition | None = None,
) -> AssetsDefinition:
    """The descriptor_shards asset with the given op tags (the deployment profile's k8s pod config),
    code version (`DescriptorModel.code_version`) and automation condition (GDO_AUTOMATION)."""

    @asset(
        key=DESCRIPTOR_SHARDS,
        partitions_def=pool_chunks,
        deps=[candidate_pool],
        group_name="descriptors",
        pool=GPU_POOL,
        op_tags=dict(op_tags),
        code_version=code_version,
        automation_condition=automation_condition,
        description=(
            "Per QA of one pool chunk: AMM, frame diversity, loss_video, loss_blind, VDS, PPL, TNC, SC and "
            "coverage features (DESCRIPTOR_SCHEMA Parquet); unchanged QAs come from the per-QA cache."
        ),
    )
    def descriptor_shards(
        context: AssetExecutionContext, gdo: GdoProject, descriptor_model: DescriptorModel
    ) -> MaterializeResult:
        """Describe one chunk's QAs (motion once per frame list, batched model pass) into its shard."""
        return describe_chunk(context, gdo, descriptor_model)

    return descriptor_shards


def describe_chunk(
    context: AssetExecutionContext, gdo: GdoProject, descriptor_model: DescriptorModel
) -> MaterializeResult:
    """The body of descriptor_shards: one chunk's shard, on the step's device."""
    key = context.partition_key
    qa_path = gdo.path(*QA_DIR, f"{key}.parquet")
    if not qa_path.exists():
        raise Failure(f"{qa_path}: no QA rows for chunk {key}; materialize candidate_pool[{key}] first")
    cache_root = descriptor_model.cache_dir or str(gdo.path(*CACHE_DIR))
    # What the shard is computed from: the QA file's digest as its stamp records it.
    qa_stamp = read_stamp(qa_path) or {}
    qa_digest = qa_stamp.get("qa") or file_digest(qa_path)
    version = descriptor_model.code_version()
    qa = pl.read_parquet(qa_path, columns=list(QA_COLUMNS))
    with descriptor_model.step_settings(step_owner(context)) as settings:
        context.log.info(f"{key}: describing on {settings.device} ({settings.dtype_name})")
        shard, stats = describe_qa_frame(qa, settings, DescriptorCache(cache_root))
    target = gdo.path(*SHARDS_DIR, f"{key}.parquet")
    drop_stamp(target)
    path = write_parquet_atomic(shard, target)
    write_stamp(path, qa=qa_digest, code_version=version, shard=file_digest(path))
    seconds = stats.motion_seconds + stats.model_seconds
    context.log.info(f"{key}: {stats.computed} QAs computed, {stats.reused} reused from the cache")
    metadata = {
        **stats.as_metadata(),
        "computed_qa_per_s": round(stats.computed / seconds, 3) if seconds > 0 else 0.0,
        "error_share": round(stats.errors / stats.qa, 4) if stats.qa else 0.0,
        "model": str(settings.model_dir) if settings.model_dir else "none (motion only)",
        "device": settings.device,
        "tnc_mode": settings.effective_tnc_mode,
        "sc_samples": settings.sc_samples,
        "code_version": version,
        "path": MetadataValue.path(str(path)),
    }
    return MaterializeResult(
        metadata=metadata, data_version=DataVersion(hashlib.sha256(path.read_bytes()).hexdigest()[:32])
    )


descriptor_shards = descriptor_shards_asset()
