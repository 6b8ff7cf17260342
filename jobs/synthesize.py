"""Batch synthesis as a Ray job: ``ray job submit -- python jobs/synthesize.py -h``.

Seeds (Parquet file/folder or JSONL with ``prompt``, ``completion``, optional ``id``,
``task``, ``context``) → ``O/data.parquet`` (kept rows with provenance), ``O/errors.parquet``
and ``O/stats.json``. Run the same command again after an interruption to resume: saved
units are kept, missing ones are requested (see ``llmvm_ray.synthesis.job``). Exit codes:
0 every task reached its target, 3 a task stopped short (its reason is in stats.json and
the log), 2 bad arguments or seeds, 130 stopped.

``ray job stop`` (SIGTERM) or Ctrl+C stops it cleanly: requests in flight are cancelled,
every finished unit is already saved, the worker actors are removed, ``stats.json`` says
``"stopped": true`` and no ``data.parquet`` is written; submit the same command again to
resume. (Ray's own SIGTERM handler, installed by ``ray.init``, would end the process at
once, so this job installs its handler again after connecting.)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from llmvm_ray.config import load_config, parse_assignments
from llmvm_ray.errors import ConfigError, LLMVMError
from llmvm_ray.runtime import init_ray

EXIT_SHORT = 3
EXIT_STOPPED = 130


def _catch_stops(stop: threading.Event) -> None:
    """SIGTERM (``ray job stop``) and SIGINT only set a flag; the run polls it.

    Installed twice: before connecting, and again after, because ``ray.init`` replaces the
    SIGTERM handler with Ray's own, which ends the process at once.
    """

    def handle(signum: int, _frame: object) -> None:
        print(f"[synth] received signal {signum}: stopping", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def _overrides(items: list[str]) -> dict:
    try:
        return parse_assignments(items, "--set", hint=" (a synthesis.* field)")
    except ConfigError as exc:
        raise SystemExit(exc.message) from None


class Progress:
    """A progress line every ``every_s`` seconds (Ray job logs are not terminals)."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.units = self.rows = self.failed = 0
        self.started = self.last = time.monotonic()

    def __call__(self, result) -> None:
        self.units += 1
        self.rows += len(result.rows)
        self.failed += result.failed
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.units / max(1e-9, now - self.started)
            print(
                f"[synth] units {self.units} ({rate:.1f}/s) valid rows {self.rows} "
                f"failed units {self.failed}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (default: $LLMVM_CONFIG)")
    parser.add_argument("--seeds", required=True, help="Parquet file/folder or JSONL of seeds")
    parser.add_argument("--output", required=True, help="Output folder (resumable)")
    parser.add_argument("--target", type=int, help="Examples per task (default: config)")
    parser.add_argument("--run-id", help="Run id (default: new, or the one in --output)")
    parser.add_argument("--existing", help="Dataset new rows are deduped against")
    parser.add_argument("--workers", type=int, help="Worker actors (default: config)")
    parser.add_argument(
        "--local", action="store_true", help="Run in this process (no worker actors)"
    )
    parser.add_argument("--set", action="append", default=[], help="synthesis KEY=VALUE")
    args = parser.parse_args(argv)
    stop = threading.Event()
    _catch_stops(stop)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    overrides = _overrides(args.set)
    if args.workers:
        overrides["num_workers"] = args.workers
    try:
        config = load_config(args.config, {"synthesis": overrides} if overrides else None)
    except LLMVMError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    from llmvm_ray.synthesis.job import run_job

    if not args.local or config.teacher.base_url is None:
        # A hosted teacher is reached through Serve, so even --local needs Ray.
        # Inside a Ray job RAY_ADDRESS names the cluster; 'auto' picks it up.
        init_ray(config.ray.model_copy(update={"address": config.ray.address or "auto"}))
        _catch_stops(stop)
    if stop.is_set():
        return EXIT_STOPPED
    try:
        report = run_job(
            config,
            args.seeds,
            args.output,
            target=args.target,
            run_id=args.run_id,
            existing=args.existing,
            use_pool=not args.local,
            on_unit=Progress(),
            should_stop=stop.is_set,
        )
    except LLMVMError as exc:
        print(f"{type(exc).__name__} ({exc.param}): {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1), flush=True)
    if report["stopped"]:
        print(
            f"[synth] stopped: {report['units_saved']} units saved in {args.output}; "
            "submit the same command again to resume",
            flush=True,
        )
        return EXIT_STOPPED
    for task, outcome in report["tasks"].items():
        print(f"[synth] task {task}: {outcome['stop_reason']}", flush=True)
    return 0 if report["reached"] else EXIT_SHORT


if __name__ == "__main__":
    sys.exit(main())
