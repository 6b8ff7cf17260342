"""Batch synthesis as a Ray job: ``ray job submit -- python jobs/synthesize.py -h``.

Seeds (Parquet file/folder or JSONL with ``prompt``, ``completion``, optional ``id``,
``task``, ``context``) → ``O/data.parquet`` (kept rows with provenance), ``O/errors.parquet``
and ``O/stats.json``. Run the same command again after an interruption to resume: saved
units are kept, missing ones are requested (see ``llmvm_ray.synthesis.job``). Exit codes:
0 every task reached its target, 3 a task stopped short (its reason is in stats.json and
the log), 2 bad arguments or seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from llmvm_ray.config import load_config
from llmvm_ray.errors import LLMVMError
from llmvm_ray.runtime import init_ray

EXIT_SHORT = 3


def _overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (a synthesis.* field)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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
        )
    except LLMVMError as exc:
        print(f"{type(exc).__name__} ({exc.param}): {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1), flush=True)
    for task, outcome in report["tasks"].items():
        print(f"[synth] task {task}: {outcome['stop_reason']}", flush=True)
    return 0 if report["reached"] else EXIT_SHORT


if __name__ == "__main__":
    sys.exit(main())
