"""Deploying (or updating) the Serve app on a running cluster and watching it converge.

Used by ``jobs/deploy.py`` (``ray job submit``). ``llmvm serve`` keeps its own foreground
runner (``serve/deploy.py``), which owns the app's lifetime; here the app outlives the
process: Serve's controller owns it, and this code only submits the target and reports
until every deployment is healthy, failed, or the caller gives up.

Why poll ``serve.status()`` instead of ``serve.run(..., blocking)``: a blocking deploy can
be neither observed (no progress lines in the job log) nor cancelled from a signal handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.errors import ConfigError
from llmvm_ray.ray_private import delete_app_nowait

# Exit codes of the deploy job, shared with its tests and docs.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_STOPPED = 130


@dataclass
class RolloutResult:
    """How a rollout ended: ``RUNNING``, ``DEPLOY_FAILED``, ``UNHEALTHY``, ``TIMEOUT``,
    ``STOPPED`` (the caller asked to stop) or ``DELETED``."""

    outcome: str
    message: str = ""
    rolled_back: bool = False

    @property
    def exit_code(self) -> int:
        if self.outcome in ("RUNNING", "DELETED"):
            return EXIT_OK
        if self.outcome == "STOPPED":
            return EXIT_STOPPED
        return EXIT_FAILED


def app_url(config: Config) -> str:
    """Where clients reach the app (the proxy's bind address; 0.0.0.0 means any node)."""
    s = config.serve
    host = "<node-ip>" if s.host in ("0.0.0.0", "::") else s.host
    return f"http://{host}:{s.port}{s.route_prefix.rstrip('/')}/v1"


def describe_app(app: Any) -> str:
    """One progress line: the app's status and each deployment's replica states, then why a
    deployment is not yet healthy when Serve says (waiting for resources, a replica failing
    to start: its message names the resources or the error)."""
    parts = [str(getattr(app.status, "value", app.status))]
    reasons = []
    for name, dep in sorted(app.deployments.items()):
        states = ", ".join(
            f"{getattr(k, 'value', k)} {v}" for k, v in sorted(dep.replica_states.items())
        )
        status = getattr(dep.status, "value", dep.status)
        parts.append(f"{name}: {status} ({states or '-'})")
        if dep.message and status != "HEALTHY":
            reasons.append(f"  {name}: {dep.message}")
    return "\n".join([" | ".join(parts), *reasons])


def resources_needed(config: Config) -> dict[str, float]:
    """CPUs and GPUs the app's replicas reserve at their minimum scale."""
    need = {"CPU": config.serve.ingress_replicas * config.serve.ingress_num_cpus, "GPU": 0.0}
    for m in config.models:
        replicas = m.autoscaling.min_replicas if m.autoscaling else m.num_replicas
        need["CPU"] += replicas * m.num_cpus
        need["GPU"] += replicas * m.num_gpus
    return need


def check_fits(config: Config, cluster: dict[str, float]) -> None:
    """Refuse an app whose replicas could never all be placed on ``cluster`` (its total
    resources): Serve would wait for them forever, silently."""
    need = resources_needed(config)
    short = {k: v for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if not short:
        return
    kind = next(iter(short))
    per_model = ", ".join(
        f"{m.name} {m.autoscaling.min_replicas if m.autoscaling else m.num_replicas} x "
        f"{m.num_cpus if kind == 'CPU' else m.num_gpus:g}"
        for m in config.models
    )
    ingress = ""
    if kind == "CPU":
        s = config.serve
        ingress = f" + ingress {s.ingress_replicas} x {s.ingress_num_cpus:g}"
    setting = "num_cpus" if kind == "CPU" else "num_gpus"
    more = "ray.num_cpus for a local Ray, `ray start --num-cpus`" if kind == "CPU" else "GPUs"
    raise ConfigError(
        f"the app needs {need[kind]:g} {kind}s ({per_model}{ingress}) but the cluster has "
        f"{cluster.get(kind, 0.0):g}: lower models[].{setting} (e.g. 0.5 per model in the "
        f"config file), serve the models on fewer replicas, or give Ray more ({more}); "
        "serve.check_fits = false skips this check (autoscaling clusters)",
        param=f"models.{setting}",
    )


def _app_status(name: str) -> Any | None:
    from ray import serve

    return serve.status().applications.get(name)


def rollout(
    config: Config,
    echo: Callable[[str], None],
    should_stop: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 1.0,
) -> RolloutResult:
    """Submit ``build_app(config)`` and wait until it is RUNNING (needs a connected Ray).

    A stop before that point undoes what this call started when it can: a brand-new app is
    deleted again; an update is left to converge (Serve keeps the old replicas serving until
    the new ones are healthy, and there is no earlier target to return to).
    """
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from llmvm_ray.serve.builder import build_app

    s = config.serve
    app = build_app(config)
    if s.check_fits:
        check_fits(config, ray.cluster_resources())
    before = _app_status(s.app_name)
    echo(
        f"{'updating' if before is not None else 'deploying'} app {s.app_name!r} "
        f"({len(config.models)} model(s): {', '.join(m.name for m in config.models)})"
    )
    serve.start(http_options={"host": s.host, "port": s.port})
    # The controller sets the app to DEPLOYING before this call returns, so every status read
    # afterwards is about the new target, never the old version's RUNNING.
    serve.run_many(
        [RunTarget(target=app, name=s.app_name, route_prefix=s.route_prefix)],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        status = _app_status(s.app_name)
        if status is not None:
            line = describe_app(status)
            if line != last:
                echo(line)
                last = line
            value = getattr(status.status, "value", status.status)
            if value == "RUNNING":
                echo(f"app {s.app_name!r} is RUNNING at {app_url(config)}")
                return RolloutResult("RUNNING")
            if value in ("DEPLOY_FAILED", "UNHEALTHY"):
                return RolloutResult(value, status.message)
        if should_stop():
            return _stop(s.app_name, created=before is None, echo=echo)
        if time.monotonic() > deadline:
            return RolloutResult("TIMEOUT", f"not RUNNING after {timeout_s:g}s")
        time.sleep(poll_s)


def _stop(app_name: str, created: bool, echo: Callable[[str], None]) -> RolloutResult:
    if created:
        echo(f"stopping: deleting the app {app_name!r} this job created")
        delete_app_nowait(app_name)
        return RolloutResult("STOPPED", "deleted the partly deployed app", rolled_back=True)
    echo(f"stopping: the update of {app_name!r} keeps converging in Serve's controller")
    return RolloutResult("STOPPED", "update left to Serve's controller")


def delete_app(config: Config, echo: Callable[[str], None]) -> RolloutResult:
    """Remove the app (a no-op when it is not deployed)."""
    from ray import serve

    name = config.serve.app_name
    if _app_status(name) is None:
        echo(f"app {name!r} is not deployed")
        return RolloutResult("DELETED", "not deployed")
    echo(f"deleting app {name!r}")
    serve.delete(name)
    echo(f"app {name!r} deleted")
    return RolloutResult("DELETED")
