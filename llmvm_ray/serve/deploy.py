"""Start (and stop) the Serve application on a local or remote Ray.

Shared by ``llmvm serve``, the demo, the benchmarks and the tests, so all of them exercise
the same path: join or start Ray, start the HTTP proxy on the configured address, deploy
``build_app(config)`` and wait until every replica is ready — through ``rollout``, as the
deploy job does: an app that cannot fit the cluster is refused at once, and while Serve
waits (for resources, for a replica that keeps failing) each change is reported, with
Serve's reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

from llmvm_ray.config import Config
from llmvm_ray.errors import DeployError
from llmvm_ray.ray_private import direct_ingress_targets
from llmvm_ray.runtime import export_ray_environment, init_ray, service_url
from llmvm_ray.serve.rollout import rollout

logger = logging.getLogger(__name__)


class ServiceRunner:
    """Context manager that deploys the service and tears down what it started."""

    def __init__(
        self,
        config: Config,
        shutdown_ray: bool | None = None,
        echo: Callable[[str], None] = logger.info,
        should_stop: Callable[[], bool] = lambda: False,
        timeout_s: float = 900.0,
    ) -> None:
        self.config = config
        self._shutdown_ray = shutdown_ray
        self._started_ray = False
        self._echo = echo
        self._should_stop = should_stop
        self._timeout_s = timeout_s

    @property
    def url(self) -> str:
        return service_url(self.config)

    def direct_urls(self, timeout_s: float = 10.0) -> list[str]:
        """Base URLs where the ingress replicas answer HTTP themselves, skipping the proxy.

        In Serve's throughput-optimized mode (``ray.serve_throughput_optimized``, the default
        for a local Ray) every ingress replica also runs its own HTTP server on a port Serve
        allocates (30000-30999 unless ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` / ``MAX``
        say otherwise). It serves more requests/s than the proxy at ``url`` under load
        (benchmarks/RESULTS.md, "Serving"). Serve publishes these
        ports only through its controller (the list its HAProxy balances over), which has no
        public API yet: an empty list means the mode is off or the ports could not be read.
        """
        prefix = self.config.serve.route_prefix.rstrip("/")
        deadline = time.monotonic() + timeout_s
        while True:
            targets = direct_ingress_targets(self.config.serve.app_name)
            if targets is None:
                return []  # the mode is off, or the controller could not be asked
            urls = [f"http://{ip}:{port}{prefix}" for ip, port in targets]
            if urls or time.monotonic() > deadline:
                return urls
            time.sleep(0.2)

    def start(self) -> ServiceRunner:
        """Deploy and wait until RUNNING (or until ``should_stop``: the app is then removed
        again). A deploy that fails, or cannot fit, raises ``DeployError`` with Serve's
        reason, after undoing what this call started."""
        export_ray_environment(self.config.ray)  # before ray.serve is imported
        import ray

        from llmvm_ray.serve.builder import build_app

        build_app(self.config)  # fails fast on config errors, before Ray starts
        self._started_ray = not ray.is_initialized()
        init_ray(self.config.ray)
        try:
            result = rollout(
                self.config, self._echo, self._should_stop, self._timeout_s, poll_s=0.25
            )
        except BaseException:
            self.stop()
            raise
        if result.outcome not in ("RUNNING", "STOPPED"):
            self.stop()
            raise DeployError(f"the app did not start: {result.outcome}: {result.message}")
        return self

    def stop(self) -> None:
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        if self.config.serve.app_name in serve.status().applications:
            serve.delete(self.config.serve.app_name)
        shutdown_ray = self._started_ray if self._shutdown_ray is None else self._shutdown_ray
        if shutdown_ray:
            serve.shutdown()
            ray.shutdown()

    def __enter__(self) -> ServiceRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
