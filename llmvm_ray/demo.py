"""``llmvm demo``: the service end to end, offline, on tiny local models.

Builds a competent tiny teacher (a 2-layer model trained in seconds on a synthetic task),
serves it on a local Ray with Ray Serve, and talks to it with the official ``openai`` client:
completions, chat, streaming, seeded sampling and guided JSON. Every step prints what it does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_TASK = "date"


def run_demo(workdir: Path, port: int, console: Console) -> int:
    import openai

    from llmvm_ray.config import load_config
    from llmvm_ray.serve.deploy import ServiceRunner
    from llmvm_ray.testing import tiny
    from llmvm_ray.testing.tasks import get_task

    task = get_task(DEMO_TASK)
    workdir = workdir.resolve()
    teacher_dir = workdir / "teacher"
    console.rule("[bold]1. A tiny teacher, trained offline")
    if (teacher_dir / "config.json").exists():
        accuracy = tiny.evaluate(teacher_dir, task)
        console.print(f"reusing {teacher_dir}")
    else:
        with console.status("training") as status:

            def progress(step: int, loss: float) -> None:
                status.update(f"training on '{task.name}': step {step}, loss {loss:.3f}")

            started = time.perf_counter()
            accuracy = tiny.make_teacher(teacher_dir, task, progress=progress)
        console.print(f"trained in {time.perf_counter() - started:.1f}s")
    console.print(f"task '{task.name}': {task.instruction!r}; held-out accuracy {accuracy:.1%}")

    console.rule("[bold]2. Serving it with Ray Serve")
    config = load_config(
        overrides={
            "serve": {"port": port},
            "storage_path": str(workdir / "storage"),
            "models": [{"name": "teacher", "model_uri": str(teacher_dir)}],
        }
    )
    with console.status("starting Ray and deploying (about 15 s)"):
        runner = ServiceRunner(config).start()
    try:
        console.print(f"serving at {runner.url}/v1")
        client = openai.OpenAI(base_url=f"{runner.url}/v1", api_key="none", max_retries=0)
        _talk(client, task, console)
    finally:
        with console.status("shutting down"):
            runner.stop()
    console.print("[green]demo finished[/green]")
    return 0


def _talk(client, task, console: Console) -> None:
    import random

    console.rule("[bold]3. Talking to it with the official openai client")
    rng = random.Random(99)
    table = Table("prompt", "completion", "expected", "ok", "latency ms")
    correct = 0
    rows = [task.sample_split(rng, "heldout") for _ in range(8)]
    for source, target in rows:
        r = client.completions.create(
            model="teacher", prompt=task.format_prompt(source), max_tokens=24, temperature=0
        )
        text = r.choices[0].text.strip()
        ok = task.score(text, target)
        correct += ok
        table.add_row(source, text, target, "yes" if ok else "no", f"{r.llmvm['latency_ms']:.0f}")
    console.print(table)
    console.print(f"{correct}/{len(rows)} correct on held-out prompts")

    prompt = task.format_prompt(rows[0][0])
    console.print("\n[bold]streaming[/bold] (temperature 0.8, seed 1):", end=" ")
    for chunk in client.completions.create(
        model="teacher", prompt=prompt, max_tokens=24, temperature=0.8, seed=1, stream=True
    ):
        if chunk.choices:
            console.print(chunk.choices[0].text, end="")
    console.print()
    same = {
        client.completions.create(
            model="teacher", prompt=prompt, max_tokens=24, temperature=0.8, seed=1
        ).choices[0].text
        for _ in range(3)
    }
    console.print(f"same seed, three calls -> {len(same)} distinct text(s)")

    chat = client.chat.completions.create(
        model="teacher",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
    )
    console.print(f"[bold]chat[/bold]: {chat.choices[0].message.content!r}")

    schema = {
        "type": "object",
        "properties": {"iso_date": {"type": "string", "maxLength": 10}},
        "required": ["iso_date"],
        "additionalProperties": False,
    }
    guided = client.completions.create(
        model="teacher",
        prompt=prompt,
        max_tokens=40,
        temperature=0,
        extra_body={"guided_json": schema},
    )
    console.print(f"[bold]guided JSON[/bold]: {json.loads(guided.choices[0].text)}")
    console.print(f"[dim]metadata of the last answer: {guided.llmvm}[/dim]")
