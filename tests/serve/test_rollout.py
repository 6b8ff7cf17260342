"""What the foreground runner and the deploy job check and say before and while Serve
deploys: an app that cannot fit the cluster, and Serve's own reason while it waits."""

from __future__ import annotations

import pytest
from ray.serve.schema import ApplicationStatusOverview, DeploymentStatusOverview

from llmvm_ray.config import Config
from llmvm_ray.errors import ConfigError
from llmvm_ray.serve.rollout import check_fits, describe_app, resources_needed


def config(**model: object) -> Config:
    models = [{"name": n, "model_uri": "x", **model} for n in ("teacher", "student")]
    return Config.model_validate({"models": models})


def test_two_default_models_do_not_fit_two_cores_and_the_message_says_why():
    cfg = config()  # 1 CPU per replica, as the README's `llmvm serve --model ...` gets
    assert resources_needed(cfg) == {"CPU": 2.1, "GPU": 0.0}
    with pytest.raises(ConfigError) as info:
        check_fits(cfg, {"CPU": 2.0})
    message = info.value.message
    assert "needs 2.1 CPUs" in message and "cluster has 2" in message
    assert "teacher 1 x 1" in message and "ingress 1 x 0.1" in message
    assert "models[].num_cpus" in message and "serve.check_fits" in message
    assert info.value.param == "models.num_cpus"


def test_what_fits_passes_and_gpus_are_counted_too():
    check_fits(config(num_cpus=0.5), {"CPU": 2.0})
    autoscaled = config(num_cpus=0.5, num_gpus=1, autoscaling={"min_replicas": 2})
    assert resources_needed(autoscaled) == {"CPU": 2.1, "GPU": 4.0}
    with pytest.raises(ConfigError) as info:
        check_fits(autoscaled, {"CPU": 8.0, "GPU": 2.0})
    assert "needs 4 GPUs" in info.value.message and info.value.param == "models.num_gpus"


def test_progress_lines_carry_serves_reason_until_healthy():
    waiting = DeploymentStatusOverview(
        status="UPDATING",
        status_trigger="CONFIG_UPDATE_STARTED",
        replica_states={"PENDING_ALLOCATION": 1},
        message="Deployment 'model-teacher' has 1 replica that has taken more than 30s to be "
        "scheduled. Resources required for each replica: {'CPU': 1.0}",
    )
    healthy = DeploymentStatusOverview(
        status="HEALTHY",
        status_trigger="CONFIG_UPDATE_COMPLETED",
        replica_states={"RUNNING": 1},
        message="",
    )
    app = ApplicationStatusOverview(
        status="DEPLOYING",
        message="",
        last_deployed_time_s=0.0,
        deployments={"model-teacher": waiting, "ingress": healthy},
    )
    first, reason = describe_app(app).splitlines()
    assert first == (
        "DEPLOYING | ingress: HEALTHY (RUNNING 1) | model-teacher: UPDATING (PENDING_ALLOCATION 1)"
    )
    assert reason.startswith("  model-teacher: Deployment 'model-teacher' has 1 replica")
