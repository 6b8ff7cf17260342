"""Deploy or update the Serve app: ``ray job submit -- python jobs/deploy.py --config F``.

Builds the same application as ``llmvm serve`` from the same config file, submits it to
Serve's controller and prints progress until every deployment is healthy. The app then
outlives the job (Serve owns it); submitting again with a changed config updates it in place
(a rolling update of the changed deployments: with one replica per model there is a short
gap, with two or more the others keep serving). ``--delete`` removes it.

Exit codes: 0 RUNNING (or deleted), 1 the deploy failed / turned unhealthy / timed out,
2 the config is invalid, 130 stopped. ``ray job stop`` (SIGTERM) or Ctrl+C stops waiting and
undoes what this job started: a brand-new app is deleted again; an update is left to finish
(there is no older target to return to; redeploy the previous config to roll back).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from llmvm_ray.config import load_config
from llmvm_ray.errors import ConfigError, LLMVMError
from llmvm_ray.runtime import init_ray
from llmvm_ray.serve.rollout import (
    EXIT_BAD_CONFIG,
    EXIT_FAILED,
    EXIT_STOPPED,
    delete_app,
    rollout,
)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _catch_stops(stop: threading.Event) -> None:
    """SIGTERM (``ray job stop``) and SIGINT only set a flag; the rollout loop acts on it.

    Installed twice: before connecting, and again after, because ``ray.init`` replaces the
    SIGTERM handler with Ray's own, which ends the process at once.
    """

    def handle(signum: int, _frame: object) -> None:
        _log(f"received signal {signum}")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (default: $LLMVM_CONFIG)")
    parser.add_argument(
        "--timeout-s", type=float, default=1800.0, help="Give up (exit 1) after this long"
    )
    parser.add_argument("--delete", action="store_true", help="Remove the app instead")
    args = parser.parse_args(argv)

    stop = threading.Event()
    _catch_stops(stop)
    try:
        config = load_config(args.config)
        if not args.delete:
            from llmvm_ray.serve.builder import build_app

            build_app(config)  # config errors before touching the cluster
    except LLMVMError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    if stop.is_set():
        return EXIT_STOPPED
    # Inside a Ray job RAY_ADDRESS names the cluster; 'auto' picks it up.
    init_ray(config.ray.model_copy(update={"address": config.ray.address or "auto"}))
    _catch_stops(stop)
    try:
        if args.delete:
            result = delete_app(config, _log)
        else:
            result = rollout(config, _log, stop.is_set, timeout_s=args.timeout_s)
    except ConfigError as exc:  # e.g. the app cannot fit the cluster: nothing was deployed
        print(exc.message, file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    except Exception as exc:  # noqa: BLE001 - e.g. Serve refusing the app: say so, exit 1
        _log(f"FAILED: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    if result.outcome not in ("RUNNING", "DELETED"):
        _log(f"{result.outcome}: {result.message}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
