"""Synthesis benchmark: throughput vs LLM-VM's serial loop, worker scaling, parse success per
encoding on a real (tiny) teacher, dedup precision/recall on a planted set.

1. Throughput (pairs/s). The teacher is the loopback stub with a fixed latency per request
   (a remote API that keeps up with any concurrency): the same teacher and the same count
   for a faithful re-implementation of LLM-VM's loop (one chat request per batch, JSON per
   line, serial, ``time.sleep(1)`` after each batch; with and without that sleep) and for
   our batch job with 1, 2 and 4 worker actors (4 requests in flight each, exact + MinHash
   dedup on, embedding dedup off). Wall time includes starting the workers.
2. Parse success per encoding: a tiny teacher trained on our synthesis prompts (json and
   delimited encodings, ``tests.support.synth_teacher``) served by our own Serve endpoint; the
   same number of requests per encoding, no retries; guided_json is constrained decoding.
3. Dedup on ``tests.support.planted`` (exact, near, paraphrase copies of 12 originals):
   precision and recall of the dropped rows per filter setting.

Run: ``python benchmarks/synthesis.py [--workdir bench-synth] [--skip-teacher] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASK_CONTEXT = "Add one to the number."


# -- 1. throughput ------------------------------------------------------------------------------


def llmvm_serial(base_url: str, n: int, batch: int, sleep: bool) -> float:
    """LLM-VM's data_synthesis loop (its last version), faithfully: returns pairs/s."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
    final_prompt = (
        f"Generate {batch} json similar to the one below and separate each json using a new "
        'line. \n{"prompt": "What is 1 plus one?"  , "response": " 2" }'
    )
    datapoints: list[tuple[str, str]] = []
    started = time.perf_counter()
    while len(datapoints) < n:
        response = (
            client.chat.completions.create(
                messages=[{"role": "system", "content": final_prompt}],
                model="gpt-4",
                max_tokens=1000,
                temperature=1,
            )
            .choices[0]
            .message.content
        )
        lines = [line for line in response.split("\n") if line != ""]
        for line in lines:
            data = json.loads(line[line.index("{") :])
            datapoints.append((data["prompt"], data["response"] + "<END>"))
        if sleep:
            time.sleep(1)  # "Open AI rate limit is 1 request/second"
    return len(datapoints) / (time.perf_counter() - started)


def ours(base_url: str, n: int, batch: int, workers: int, workdir: Path) -> tuple[float, float]:
    """(pairs/s end to end, pairs/s once the workers are up)."""
    from llmvm_ray.config import load_config
    from llmvm_ray.synthesis.job import run_job

    seeds = workdir / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus one?", "completion": f" {i + 1}"}) + "\n"
            for i in range(10)
        )
    )
    config = load_config(
        overrides={
            "storage_path": str(workdir),
            "teacher": {"base_url": base_url, "model": "stub", "api": "chat"},
            "synthesis": {
                "seed_batch_size": batch,
                "encoding": "json",
                "num_workers": workers,
                "max_in_flight": 4 * workers,
                "embedding_model": None,
                "worker_num_cpus": 0.01,
            },
        }
    )
    out = workdir / f"out-{workers}-{time.time_ns()}"
    started = time.perf_counter()
    report = run_job(config, str(seeds), str(out), target=n, use_pool=True)
    elapsed = time.perf_counter() - started
    assert report["reached"], report
    kept = report["totals"]["kept"]
    return kept / elapsed, kept / (elapsed - report["startup_s"])


def throughput(
    workdir: Path, n: int, batch: int, latency_s: float, repeat: int, serial_n: int
) -> dict:
    from llmvm_ray.config import RayConfig
    from llmvm_ray.runtime import init_ray
    from tests.support.stub_teacher import StubTeacher

    init_ray(RayConfig(num_cpus=4, include_dashboard=False))
    figures: dict = {
        "n": n,
        "serial_n": serial_n,
        "batch": batch,
        "latency_s": latency_s,
        "repeat": repeat,
    }
    with StubTeacher(["jsonl"], per_answer=batch, latency_s=latency_s) as stub:
        # serial: its time is linear in the count, so pairs/s does not depend on it
        figures["llmvm_serial_sleep"] = llmvm_serial(stub.url, serial_n, batch, sleep=True)
        figures["llmvm_serial_nosleep"] = llmvm_serial(stub.url, serial_n, batch, sleep=False)
    import statistics

    for w in (1, 2, 4):
        runs = []
        for _ in range(repeat):
            with StubTeacher(["good"], per_answer=batch, latency_s=latency_s) as stub:
                runs.append(ours(stub.url, n, batch, w, workdir))
        # medians: this machine's CPUs are shared, single runs are noisy
        figures[f"ours_{w}_workers"] = statistics.median(r[0] for r in runs)
        figures[f"ours_{w}_workers_after_startup"] = statistics.median(r[1] for r in runs)
    return figures


# -- 2. parse success per encoding ---------------------------------------------------------------


def parse_success(workdir: Path, requests: int, steps: int) -> dict:
    import random

    from llmvm_ray.config import load_config
    from llmvm_ray.dev.tasks import get_task
    from llmvm_ray.runtime import init_ray
    from llmvm_ray.serve.deploy import ServiceRunner
    from llmvm_ray.synthesis.records import Seed
    from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput
    from llmvm_ray.teachers import build_teacher
    from tests.support.synth_teacher import check_example, example, make_synthesis_teacher

    teacher_dir = workdir / "synth-teacher"
    if not (teacher_dir / "config.json").exists():
        make_synthesis_teacher(
            teacher_dir, "date", encodings=("json", "delimited"), steps=steps, batch_size=16
        )
    port = 3127
    base = {
        "storage_path": str(workdir / "storage"),
        "optimizer": {"enabled": False},
        "serve": {"port": port, "app_name": "bench-synth", "route_prefix": "/bench-synth"},
        "models": [{"name": "synth", "model_uri": str(teacher_dir), "num_cpus": 1}],
    }
    init_ray(load_config(overrides=base).ray)
    runner = ServiceRunner(load_config(overrides=base), shutdown_ray=False).start()
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{runner.url}/v1/models").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    task = get_task("date")
    rng = random.Random(7)
    seeds = tuple(Seed(f"d{i}", **example(task, rng)) for i in range(20))
    task_input = TaskInput(task="date", context=task.instruction, seeds=seeds)
    figures = {}
    try:
        for encoding in ("json", "delimited", "guided_json"):
            config = load_config(
                overrides={
                    **base,
                    "teacher": {"base_url": f"{runner.url}/v1", "model": "synth"},
                    "synthesis": {
                        "encoding": encoding,
                        "seed_batch_size": 2,
                        "seed_examples": 2,
                        "max_tokens": 200,
                        "request_retries": 0,
                        "max_in_flight": 8,
                        "max_prompt_chars": 60,
                        "max_completion_chars": 20,
                        "request_timeout_s": 300,
                    },
                }
            )
            synth = Synthesizer.for_config(
                config,
                build_teacher(config, synthesis=True),
                encoding=encoding,
                run_id=f"bench-{encoding}",
            )

            async def run_all(synth=synth):
                plans = [synth.plan(task_input, u) for u in range(requests)]
                return await asyncio.gather(*(synth.run_unit(task_input, p) for p in plans))

            results = asyncio.run(run_all())
            gen = sum(r.stats.generated for r in results)
            parsed = sum(r.stats.parsed for r in results)
            valid_rows = [row for r in results for row in r.rows]
            figures[encoding] = {
                "requests": requests,
                "answers_with_a_valid_example": sum(bool(r.rows) for r in results) / requests,
                "generated": gen,
                "parsed": parsed,
                "parse_rate": parsed / gen if gen else 0.0,
                "valid": len(valid_rows),
                "correct_of_valid": (
                    sum(check_example(task, row) for row in valid_rows) / len(valid_rows)
                    if valid_rows
                    else 0.0
                ),
            }
    finally:
        runner.stop()
    return figures


# -- 3. dedup on the planted set ----------------------------------------------------------------


def dedup_quality() -> dict:
    from llmvm_ray.config import SynthesisConfig
    from llmvm_ray.synthesis.dedup import Deduper, load_encoder
    from tests.support.planted import planted_rows

    encoder = load_encoder("all-MiniLM-L6-v2")
    rows = planted_rows()
    copies = sum(r["kind"] != "original" for r in rows)
    settings = {
        "exact": dict(minhash_threshold=None, embedding_model=None),
        "exact+minhash0.8": dict(minhash_threshold=0.8, embedding_model=None),
        "exact+minhash0.8+emb0.87": dict(minhash_threshold=0.8, similarity_threshold=0.87),
        "exact+minhash0.8+emb0.7": dict(minhash_threshold=0.8, similarity_threshold=0.7),
        "exact+minhash0.8+emb0.6": dict(minhash_threshold=0.8, similarity_threshold=0.6),
    }
    figures = {}
    for name, kw in settings.items():
        use_encoder = kw.get("embedding_model", "x") is not None
        s = SynthesisConfig(**{**kw, "embedding_model": None})
        deduper = Deduper(s, encoder=encoder if use_encoder else None)
        _, dropped = deduper.filter(rows)
        true = sum(r["kind"] != "original" for r, _ in dropped)
        figures[name] = {
            "precision": true / len(dropped) if dropped else 1.0,
            "recall": true / copies,
            "dropped": len(dropped),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("bench-synth"))
    parser.add_argument("--n", type=int, default=400, help="pairs per throughput run")
    parser.add_argument("--batch", type=int, default=5, help="examples per request")
    parser.add_argument("--latency", type=float, default=0.3, help="stub teacher latency (s)")
    parser.add_argument("--serial-n", type=int, help="pairs for LLM-VM's loop (default --n)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count (median)")
    parser.add_argument("--requests", type=int, default=16, help="requests per encoding")
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--skip-teacher", action="store_true", help="skip section 2")
    parser.add_argument("--skip-throughput", action="store_true", help="skip section 1")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    if not args.skip_throughput:
        serial_n = args.serial_n or args.n
        t = throughput(args.workdir, args.n, args.batch, args.latency, args.repeat, serial_n)
        results["throughput"] = t
        print(
            f"[1] {args.n} pairs, {args.batch}/request, teacher latency {args.latency}s, "
            f"median of {args.repeat} runs"
        )
        base_sleep, base = t["llmvm_serial_sleep"], t["llmvm_serial_nosleep"]
        print(f"    LLM-VM serial ({serial_n} pairs) with sleep    : {base_sleep:7.1f} pairs/s")
        print(f"    LLM-VM serial ({serial_n} pairs) without sleep : {base:7.1f} pairs/s")
        for suffix, label in (("", "end to end"), ("_after_startup", "workers up")):
            for w in (1, 2, 4):
                v = t[f"ours_{w}_workers{suffix}"]
                print(
                    f"    ours, {w} worker(s), {label:10s}: {v:7.1f} pairs/s  "
                    f"= {v / base_sleep:5.1f}x with-sleep, {v / base:5.1f}x no-sleep, "
                    f"{v / t[f'ours_1_workers{suffix}']:4.2f}x 1 worker"
                )

    if not args.skip_teacher:
        p = parse_success(args.workdir, args.requests, args.teacher_steps)
        results["parse"] = p
        print(f"[2] parse success per encoding ({args.requests} requests each, tiny teacher)")
        for encoding, f in p.items():
            print(
                f"    {encoding:12s}: parse rate {f['parse_rate']:.0%} "
                f"({f['parsed']}/{f['generated']}), answers with a valid example "
                f"{f['answers_with_a_valid_example']:.0%}, correct of valid "
                f"{f['correct_of_valid']:.0%}"
            )

    d = dedup_quality()
    results["dedup"] = d
    print("[3] dedup on the planted set (12 originals, 9 planted copies)")
    for name, f in d.items():
        print(f"    {name:26s}: precision {f['precision']:.2f}, recall {f['recall']:.2f}")
    (args.workdir / "synthesis-results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
