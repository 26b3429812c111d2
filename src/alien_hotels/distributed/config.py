"""`ray.*`: where the Ray cluster is and what each worker asks of it (docs/scale.md; values in
conf/ray/). No ray import: params.yaml validates without it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alien_hotels.common import Section


class RayConfig(Section):
    """`ray.*`: where the cluster is and what each worker asks of it (values in conf/ray/)."""

    # null: start a Ray instance on this machine; `auto`: the cluster this machine is a node of;
    # `host:port` (the head's GCS port, 6379) or `ray://host:port` (Ray Client, 10001).
    address: str | None = Field(pattern=r"^(auto|ray://[^:/]+:\d+|[^:/]+:\d+)$")
    # CPUs of the instance started when address is null; null: all of this machine's.
    local_num_cpus: int | None = Field(ge=1)
    # Actors started (each loads the models once). With an autoscaler, pending actors make it
    # add nodes; the stage starts work once `min_workers` are ready and the rest join later.
    num_workers: int = Field(ge=1)
    min_workers: int = Field(ge=1)
    num_cpus_per_worker: float = Field(ge=0)
    num_gpus_per_worker: float = Field(ge=0)
    # Bytes of memory reserved per worker for scheduling; null: none.
    memory_per_worker: int | None = Field(ge=1)
    # Custom node resources a worker needs, e.g. {model_cache: 1} on nodes with the models.
    resources_per_worker: dict[str, float]
    # Only nodes with this GPU type (Ray's accelerator_type, e.g. A10G, L4, H100); null: any.
    accelerator_type: str | None
    # Images per task sent to a worker; null: one caption batch (caption.batch_size) or one
    # image (edit). For captions it must be a multiple of caption.batch_size.
    batch_size: int | None = Field(ge=1)
    # Tasks queued on each worker, so the next task's bytes travel while one computes.
    tasks_per_worker: int = Field(ge=1)
    # Replacement workers started after workers die (a node lost, a process killed) per run.
    max_worker_restarts: int = Field(ge=0)
    # Seconds to wait for `min_workers` to load their models (node provisioning included).
    startup_timeout_s: float = Field(gt=0)
    # Seconds to wait for the cluster address to answer before giving up.
    connect_timeout_s: float = Field(gt=0)
    # Passed to ray.init: env_vars (HF_HOME, HF_HUB_OFFLINE), pip, py_modules, working_dir.
    runtime_env: dict[str, Any]
    namespace: str

    @model_validator(mode="after")
    def _bounds(self) -> RayConfig:
        if self.min_workers > self.num_workers:
            raise ValueError(
                f"ray.min_workers ({self.min_workers}) must not exceed "
                f"ray.num_workers ({self.num_workers})"
            )
        return self
