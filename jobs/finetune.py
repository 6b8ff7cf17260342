"""Fine-tune as a Ray job: ``ray job submit -- python jobs/finetune.py --dataset D --base-model M``.

Registers the run (origin ``job``), prints progress to the job's log and exits 0 when it
SUCCEEDED, 1 when it FAILED and 130 when it was CANCELLED. The run belongs to this job: its
supervisor is not detached, so it cannot outlive the job. ``ray job stop`` sends SIGTERM,
which cancels the run cooperatively (last checkpoint kept, registry CANCELLED); if Ray's
SIGKILL follows before that finishes, the supervisor, Train's controller and the workers die
with this process and the registry records the run CANCELLED, since the cancel was asked for.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from llmvm_ray.config import load_config, parse_assignments
from llmvm_ray.errors import ConfigError, LLMVMError
from llmvm_ray.runtime import init_ray
from llmvm_ray.train.follow import EXIT_CODES, follow
from llmvm_ray.train.service import FinetuneService


def _pairs(items: list[str], what: str, parse_json: bool) -> dict[str, Any]:
    try:
        return parse_assignments(items, f"--{what}", as_json=parse_json)
    except ConfigError as exc:
        raise SystemExit(exc.message) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (default: $LLMVM_CONFIG)")
    parser.add_argument("--dataset", required=True, help="Parquet file/folder of rows")
    parser.add_argument("--base-model", required=True, help="Model name, folder or hub id")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--task-id")
    parser.add_argument("--context")
    parser.add_argument("--param", "-p", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except LLMVMError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    # Inside a Ray job RAY_ADDRESS names the cluster; 'auto' picks it up.
    init_ray(config.ray.model_copy(update={"address": config.ray.address or "auto"}))
    # Until ``follow`` takes over, a stop is only noted (``ray.init`` installed a SIGTERM
    # handler that would end the process at once, losing the run just being registered).
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    service = FinetuneService(config)
    try:
        run = service.create(
            dataset=args.dataset,
            base_model=args.base_model,
            tenant=args.tenant,
            task_id=args.task_id,
            context=args.context,
            hyperparameters=_pairs(args.param, "param", parse_json=True),
            metadata=_pairs(args.metadata, "metadata", parse_json=False),
            origin="job",
            detached=False,
        )
    except LLMVMError as exc:
        print(f"{type(exc).__name__} ({exc.param}): {exc.message}", file=sys.stderr)
        return 2
    print(f"fine-tune {run.id} registered", flush=True)
    if early:
        print(f"{run.id}: cancelling (signal {early[0]} while registering)", flush=True)
        service.cancel(run.id)
    final = follow(service, run.id, echo=lambda line: print(line, flush=True))
    print(final.model_dump_json(indent=1), flush=True)
    return EXIT_CODES.get(final.status, 1)


if __name__ == "__main__":
    sys.exit(main())
