"""Fine-tune benchmark: cancel → resources back, per path; training steps/s, 1 vs 2 workers.

    python benchmarks/finetune.py            # starts its own local Ray (4 logical CPUs)
    python benchmarks/finetune.py --quick    # one repetition, fewer steps

For every cancel path a 2-worker LoRA run on a tiny local model is started, allowed to reach
step 3, then cancelled; the clock starts at the cancel request (for the CLI path: when the
``llmvm finetune cancel`` process is launched, so CLI start-up is included) and stops when
(a) every worker process has exited, (b) the cluster's free CPUs are back to what they were
before the run, (c) the registry says CANCELLED. Leftover processes and placement groups are
counted afterwards. Figures are printed as a Markdown table (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

for _k, _v in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
DATASET = "datasets/bench/date"
LONG = 1_000_000


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(predicate: Any, timeout_s: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(str(predicate))


class Bench:
    def __init__(self, root: Path, model: Path) -> None:
        from llmvm_ray.config import load_config
        from llmvm_ray.train.service import FinetuneService

        self.overrides = {
            "storage_path": str(root / "store"),
            "registry": {"actor_name": f"bench-registry-{uuid.uuid4().hex[:6]}"},
            "train": {
                "num_workers": 2,
                "resources_per_worker": {"CPU": 0.5},
                "batch_size": 8,
                "checkpoint_every_steps": 5,
                "progress_interval_s": 0.2,
                "log_every_steps": 1000,
            },
            "train_queue": {"poll_interval_s": 0.2},
        }
        self.config = load_config(overrides=self.overrides)
        self.service = FinetuneService(self.config)
        self.model = model
        self.config_file = root / "llmvm.toml"
        self.config_file.write_text(_toml(self.overrides))

    def start(self, **params: Any) -> Any:
        return self.service.create(
            dataset=DATASET, base_model=str(self.model), task_id="date", hyperparameters=params
        )

    def running(self, run_id: str, min_step: int = 3) -> Any:
        def ready() -> Any:
            run = self.service.get(run_id)
            if run.status.terminal:
                raise RuntimeError(f"{run_id} ended early: {run.status} {run.error}")
            return run if run.progress.step >= min_step and len(run.workers) == 2 else None

        return _wait(ready)


def measure_cancel(bench: Bench, path: str) -> dict[str, Any]:
    import ray
    from ray.util.placement_group import placement_group_table

    cpu_before = ray.available_resources().get("CPU", 0.0)
    pgs_before = set(placement_group_table())
    gcs = ray.get_runtime_context().gcs_address
    grace = 0.0 if path == "api (hard, grace 0)" else 10.0
    proc = job = client = None
    if path == "Ctrl+C on start --wait":
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmvm_ray.train.cli", "start", DATASET, "--model"]
            + [str(bench.model), "--wait", "-c", str(bench.config_file), "--address", gcs]
            + ["-p", f"max_steps={LONG}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        run_id = proc.stdout.readline().strip()
    elif path == "ray job stop":
        from ray.job_submission import JobSubmissionClient

        from llmvm_ray.ray_private import dashboard_url

        client = JobSubmissionClient(f"http://{dashboard_url()}")
        job = client.submit_job(
            entrypoint=f"{sys.executable} {REPO / 'jobs/finetune.py'} --config "
            f"{bench.config_file} --dataset {DATASET} --base-model {bench.model} "
            f"-p max_steps={LONG}"
        )
        run_id = _wait(
            lambda: next(
                (r.id for r in bench.service.list() if r.origin == "job" and not r.status.terminal),
                None,
            )
        )
    else:
        run_id = bench.start(max_steps=LONG, cancel_grace_s=grace).id
    run = bench.running(run_id)
    pids = [w.pid for w in run.workers]

    t0 = time.monotonic()
    if path.startswith("api"):
        bench.service.cancel(run_id)
    elif path == "llmvm finetune cancel (CLI process)":
        subprocess.run(
            [sys.executable, "-m", "llmvm_ray.train.cli", "cancel", run_id]
            + ["-c", str(bench.config_file), "--address", gcs],
            check=True,
            capture_output=True,
        )
    elif proc is not None:
        proc.send_signal(signal.SIGINT)
    else:
        client.stop_job(job)
    marks: dict[str, float] = {}
    while len(marks) < 3:
        now = time.monotonic() - t0
        if "workers" not in marks and not any(_alive(p) for p in pids):
            marks["workers"] = now
        if "cpus" not in marks and ray.available_resources().get("CPU", 0) >= cpu_before - 1e-6:
            marks["cpus"] = now
        if "registry" not in marks and bench.service.get(run_id).status.terminal:
            marks["registry"] = now
        if now > 120:
            break
        time.sleep(0.02)
    if proc is not None:
        proc.wait(timeout=60)
    time.sleep(1.0)  # then count what is left behind
    final = bench.service.get(run_id)
    leftover_pgs = [
        k
        for k, v in placement_group_table().items()
        if k not in pgs_before and v["state"] != "REMOVED"
    ]
    return {
        "path": path,
        "status": f"{final.status} ({final.cancel_mode})",
        "workers_gone_s": marks.get("workers"),
        "cpus_back_s": marks.get("cpus"),
        "registry_s": marks.get("registry"),
        "leftover_procs": sum(_alive(p) for p in pids),
        "leftover_pgs": len(leftover_pgs),
        "checkpoint": bool(final.checkpoint_path and Path(final.checkpoint_path).is_dir()),
    }


def measure_throughput(bench: Bench, workers: int, steps: int) -> dict[str, Any]:
    run = bench.start(
        num_workers=workers,
        resources_per_worker={"CPU": 1.0},
        max_steps=steps,
        checkpoint_every_steps=0,
        eval_fraction=0.0,
    )
    done = bench.service.wait(run.id, timeout_s=600)
    if done.status != "SUCCEEDED":
        raise RuntimeError(done.error)
    sps = done.metrics["steps_per_s"]
    return {"workers": workers, "steps_per_s": sps, "examples_per_s": sps * 8 * workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="repetitions per cancel path")
    parser.add_argument("--steps", type=int, default=150, help="steps per throughput run")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 60 steps")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.steps = 1, 60

    import ray

    from llmvm_ray.config import RayConfig
    from llmvm_ray.dev.tasks import make_examples
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.runtime import init_ray
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage

    root = Path(tempfile.mkdtemp(prefix="llmvm-ft-bench-"))
    model = build_tiny_model(root / "model", "llama", seed=0)
    init_ray(RayConfig(num_cpus=4, include_dashboard=True))
    bench = Bench(root, model)
    datasets.append_examples(
        Storage.from_uri(bench.config.storage_path), "bench", "date", make_examples("date", 256, 0)
    )
    paths = [
        "api (cooperative)",
        "api (hard, grace 0)",
        "llmvm finetune cancel (CLI process)",
        "Ctrl+C on start --wait",
        "ray job stop",
    ]
    rows = [measure_cancel(bench, p) for _ in range(args.reps) for p in paths]
    throughput = [measure_throughput(bench, w, args.steps) for w in (1, 2)]

    print(f"\n## Cancel → resources back ({args.reps} run(s) per path, median; seconds)\n")
    print(
        "| path | final status | workers exited | CPUs free | registry terminal "
        "| leftover procs | leftover PGs | checkpoint kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        mine = [r for r in rows if r["path"] == path]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> str:
            vals = [r[key] for r in mine if r[key] is not None]
            return f"{statistics.median(vals):.2f}" if len(vals) == len(mine) else "NOT"

        print(
            f"| {path} | {', '.join(sorted({r['status'] for r in mine}))} | {med('workers_gone_s')}"
            f" | {med('cpus_back_s')} | {med('registry_s')} | "
            f"{sum(r['leftover_procs'] for r in mine)} | {sum(r['leftover_pgs'] for r in mine)} | "
            f"{all(r['checkpoint'] for r in mine)} |"
        )
    print(f"\n## Training throughput ({args.steps} steps, batch 8 per worker, 1 CPU each)\n")
    print("| workers | steps/s | examples/s |")
    print("|---|---|---|")
    for t in throughput:
        print(f"| {t['workers']} | {t['steps_per_s']:.1f} | {t['examples_per_s']:.0f} |")
    ray.kill(ray.get_actor(bench.config.registry.actor_name, namespace=bench.config.ray.namespace))


def _toml(overrides: dict[str, Any]) -> str:
    import json

    lines = [f"storage_path = {json.dumps(overrides['storage_path'])}"]
    for section in ("registry", "train", "train_queue"):
        lines.append(f"[{section}]")
        for key, value in overrides[section].items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
