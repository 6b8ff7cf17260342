"""Building the Ray Train ``TorchTrainer`` for a run and running ``fit()``.

``run_fit`` is executed as its own Ray task (not inside the supervisor actor) for one
reason: a task can be force-cancelled, which kills the process that owns Train's controller
actor, and with it the controller and every worker. That is the supervisor's hard stop.

The same process must also die when its supervisor dies (killed, node lost): Ray does not
stop a running task whose caller is gone, so without the watchdog below the controller
would train on, unsupervised, and restart worker groups nobody will ever clean up.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from llmvm_ray.store.fs import Storage
from llmvm_ray.train.spec import RunSpec

logger = logging.getLogger(__name__)

_WATCHDOG_INTERVAL_S = 0.5


def build_trainer(spec: RunSpec):  # -> ray.train.torch.TorchTrainer
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from llmvm_ray.train.loop import train_loop_per_worker

    p = spec.params
    where, run_path = Storage.from_uri(spec.storage_path).locate(spec.run_dir)
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker=spec.resources_per_worker(),
        ),
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=run_path,
            storage_filesystem=where.filesystem,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.checkpoints_to_keep),
            worker_runtime_env={"env_vars": spec.env_vars()},
        ),
    )


def run_fit(spec: RunSpec) -> None:
    """Train to the end; raises Ray Train's error if the run fails beyond its retries."""
    threading.Thread(target=_die_with_supervisor, args=(spec,), daemon=True).start()
    build_trainer(spec).fit()


def _die_with_supervisor(spec: RunSpec) -> None:
    """Exit this process (taking Train's controller and workers with it) once the run's
    supervisor is gone."""
    import ray

    while True:
        time.sleep(_WATCHDOG_INTERVAL_S)
        try:
            ray.get_actor(spec.supervisor, namespace=spec.namespace)
        except ValueError:
            logger.error("%s: supervisor gone; stopping training", spec.run_id)
            os._exit(1)
        except Exception:  # noqa: BLE001 - GCS briefly unreachable: look again
            continue
