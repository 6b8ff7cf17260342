"""Start (and stop) the Serve application on a local or remote Ray.

Shared by ``llmvm serve``, the demo, the benchmarks and the tests, so all of them exercise
the same path: join or start Ray, start the HTTP proxy on the configured address, deploy
``build_app(config)`` and wait until every replica is ready.
"""

from __future__ import annotations

from types import TracebackType

from llmvm_ray.config import Config


class ServiceRunner:
    """Context manager that deploys the service and tears down what it started."""

    def __init__(self, config: Config, shutdown_ray: bool | None = None) -> None:
        self.config = config
        self._shutdown_ray = shutdown_ray
        self._started_ray = False

    @property
    def url(self) -> str:
        s = self.config.serve
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
        return f"http://{host}:{s.port}{s.route_prefix.rstrip('/')}"

    def start(self) -> ServiceRunner:
        import ray
        from ray import serve

        from llmvm_ray.runtime import init_ray
        from llmvm_ray.serve.builder import build_app

        app = build_app(self.config)  # fails fast on config errors, before Ray starts
        self._started_ray = not ray.is_initialized()
        init_ray(self.config.ray)
        s = self.config.serve
        serve.start(http_options={"host": s.host, "port": s.port})
        serve.run(app, name=s.app_name, route_prefix=s.route_prefix, blocking=False)
        return self

    def stop(self) -> None:
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
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
