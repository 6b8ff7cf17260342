"""Everything one fine-tune needs, as one picklable value handed to its supervisor and workers.

The spec is fixed when the run is created: the supervisor, the Ray Train workers and every
retry after a worker failure read the same spec, so a restarted worker cannot train on other
data or with other settings than the run that was registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmvm_ray.config import TrainConfig

SUPERVISOR_PREFIX = "llmvm-ft-"


def lora_config(p: TrainConfig) -> Any:
    """PEFT's ``LoraConfig`` for a LoRA run of these parameters (the Ray Train loop's and
    ``dev.student.distill_check``'s, so the in-process check trains what a run trains)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=p.lora_target_modules,
    )


def supervisor_name(run_id: str) -> str:
    """Name of the actor that drives ``run_id`` (the registry looks it up to reconcile)."""
    return SUPERVISOR_PREFIX + run_id


def run_dir(run_id: str) -> str:
    """Folder of a run under ``storage_path``: snapshot, Ray Train checkpoints, output."""
    return f"finetunes/{run_id}"


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    storage_path: str  # the root everything is under (local folder or URI)
    data_uri: str  # the run's frozen snapshot of the dataset
    base_model_path: str  # folder or hub id the workers load
    params: TrainConfig
    namespace: str  # Ray namespace of the supervisor and the registry
    registry_name: str
    ray_address: str | None = None  # the cluster's GCS address, pinned for the run's processes

    @property
    def supervisor(self) -> str:
        return supervisor_name(self.run_id)

    @property
    def run_dir(self) -> str:
        return run_dir(self.run_id)

    @property
    def output_dir(self) -> str:
        """Where the result lands: ``adapter`` (PEFT) or ``model`` (full HF weights)."""
        return f"{self.run_dir}/{'adapter' if self.params.method == 'lora' else 'model'}"

    @property
    def output_format(self) -> str:
        return "peft_adapter" if self.params.method == "lora" else "hf_model"

    def resources_per_worker(self) -> dict[str, float]:
        """Explicit per-worker resources (Ray's own default made visible for queueing)."""
        if self.params.resources_per_worker:
            resources = dict(self.params.resources_per_worker)
        else:
            resources = {"CPU": 1.0}
        if self.params.use_gpu:
            resources.setdefault("GPU", 1.0)
        return resources

    def total_resources(self) -> dict[str, float]:
        return {k: v * self.params.num_workers for k, v in self.resources_per_worker().items()}

    def env_vars(self) -> dict[str, str]:
        """Environment for the run's processes (the fit task, Train's controller, workers)."""
        env = {
            # Ray's default 2 s makes every ray.train.report() block ~1.8 s.
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(self.params.health_check_interval_s),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        if self.ray_address:
            # Ray Train's placement-group cleaner finds "its" cluster through the state API;
            # with several Ray instances on one machine it fails unless told which one.
            env["RAY_ADDRESS"] = self.ray_address
        if not self.params.use_gpu:
            env["DS_ACCELERATOR"] = "cpu"
        if self.params.torch_extensions_dir:
            env["TORCH_EXTENSIONS_DIR"] = self.params.torch_extensions_dir
        return env
