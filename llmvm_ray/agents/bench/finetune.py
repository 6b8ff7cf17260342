"""Training the offline step model through the project's fine-tune pipeline.

The decision steps are trained FLAT-style, the way a distilled student is made in
production: the steps become prompt/completion rows of a Parquet dataset under
``storage_path`` (``store/datasets.py``), and ``FinetuneService`` runs a full fine-tune of a
tiny character-level base with Ray Train, registered in the registry like any other run
(``llmvm finetune list`` shows it). The result, a complete Hugging Face model, is copied into
the step-model folder, which ``LocalStepModel`` loads.

Why a *full* fine-tune: the base is built here from random weights, so there is nothing for a
LoRA adapter to adapt (measured, see docs/agents.md). Why the rows are drawn up front: the
pipeline trains on a frozen, hashed dataset, so one row per training example
(``steps x batch_size``, about one epoch) replaces the fresh sample per step of an
in-process loop, and the run stays reproducible from its registry record.

A second phase (``resume``) is a new fine-tune whose base is the first phase's model, at its
own peak rate, with its own cosine schedule: what the documented recipe does.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmvm_ray.agents.bench.knowledge import KnowledgeBase
from llmvm_ray.agents.bench.offline import step_task
from llmvm_ray.config import Config
from llmvm_ray.errors import LLMVMError

INFO_FILE = "agent_steps.json"
TASK_ID = "agent-steps"
DATASETS = "datasets/agents"
PROGRESS_EVERY_S = 10.0  # a progress line at most this often (status changes at once)


class StepTrainingError(LLMVMError):
    """The step model's fine-tune did not succeed (its status and error are in the message)."""


def step_rows(kb: KnowledgeBase, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` decision-step rows of the training people, drawn with a seeded sampler.

    Completions carry the leading space the agents' completions are parsed with
    (``Task.format_completion``); the prompt is the dynamic prompt itself.
    """
    task = step_task(kb)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, target = task.sampler(rng)
        rows.append(
            {"prompt": task.dynamic_prompt(prompt), "completion": task.format_completion(target)}
        )
    return rows


def train_step_model(
    out_dir: str | Path,
    kb: KnowledgeBase,
    config: Config,
    *,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    hidden_size: int = 128,
    num_layers: int = 3,
    seed: int = 0,
    eval_n: int = 200,
    resume: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build (or, with ``resume``, take) the step model in ``out_dir`` and fine-tune it
    through the pipeline; returns the folder's history (``agent_steps.json``).

    Needs a connected Ray. Raises ``StepTrainingError`` if the run does not succeed (the
    folder then keeps its previous model).
    """
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage
    from llmvm_ray.train.follow import follow
    from llmvm_ray.train.service import FinetuneService

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out_dir)
    info_file = out / INFO_FILE
    say = echo or (lambda _line: None)
    started = time.perf_counter()
    if resume:
        if not info_file.exists():
            raise FileNotFoundError(f"no step model to resume in {out}")
        info = json.loads(info_file.read_text())
        previous = info["phases"][-1].get("output_path") if info.get("phases") else None
        # The previous run's own output when it is still there (exact provenance).
        base = previous if previous and Path(previous).is_dir() else str(out.resolve())
    else:
        from llmvm_ray.dev.tiny import build_tiny_model

        base_dir = out / "base"
        say(f"building the tiny base ({num_layers} x {hidden_size}, character-level)")
        build_tiny_model(
            base_dir,
            "llama",
            hidden_size=hidden_size,
            num_layers=num_layers,
            max_position_embeddings=512,
            seed=seed,
            corpus_tasks=[step_task(kb)],
        )
        base = str(base_dir.resolve())
        info = {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "steps": 0,
            "train_seconds": 0.0,
            "phases": [],
        }

    n_rows = steps * batch_size + eval_n
    rows = step_rows(kb, n_rows, seed)
    storage = Storage.from_uri(config.storage_path)
    name = f"{DATASETS}/steps-seed{seed}-n{n_rows}.parquet"
    ref = datasets.write_examples(storage, name, rows)
    say(f"wrote {ref.rows} step rows to {ref.uri}")

    service = FinetuneService(config)
    hyperparameters = {
        "method": "full",
        "lr": lr,
        "lr_schedule": "cosine",
        "min_lr_ratio": 0.1,
        "warmup_steps": max(1, steps // 20),
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_steps": steps,
        "batch_size": batch_size,
        "max_seq_len": 512,
        "seed": seed,
        "eval_fraction": min(0.5, eval_n / n_rows),
        "eval_max_examples": eval_n,
        "checkpoint_every_steps": max(100, steps // 4),
        "log_every_steps": max(10, steps // 20),
    }
    run = service.create(
        dataset=ref.uri,
        base_model=base,
        task_id=TASK_ID,
        hyperparameters=hyperparameters,
        metadata={"phase": str(len(info["phases"]) + 1), "purpose": "agent step model"},
        origin="cli",
        detached=False,  # the run lives and dies with this process (Ctrl+C cancels it)
    )
    say(f"fine-tune {run.id} started (registered; `llmvm finetune show {run.id}`)")
    done = follow(service, run.id, echo=_throttled(say, PROGRESS_EVERY_S))
    if done.status != "SUCCEEDED" or not done.output_path:
        raise StepTrainingError(f"step-model fine-tune {done.id} {done.status}: {done.error}")

    _install(storage, done.output_path, out)
    metrics = done.metrics or {}
    info["phases"].append(
        {
            "run_id": done.id,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "dataset": ref.uri,
            "dataset_rows": ref.rows,
            "base_model": base,
            "output_path": done.output_path,
            "metrics": metrics,
        }
    )
    info["steps"] += steps
    info["train_seconds"] = round(info["train_seconds"] + time.perf_counter() - started, 1)
    info["step_exact_match"] = metrics.get("exact_match")
    info["step_eval_examples"] = int(metrics.get("eval_examples", 0))
    info_file.write_text(json.dumps(info, indent=2))
    return info


def _install(storage: Any, output_path: str, out: Path) -> None:
    """Copy the run's model (weights, config, tokenizer) to the top of ``out``."""
    target, path = storage.locate(output_path)
    if target.is_local:
        shutil.copytree(path, out, dirs_exist_ok=True)
    else:
        target.download_dir(path, out)


def _throttled(echo: Callable[[str], None], every_s: float) -> Callable[[str], None]:
    """``echo`` for ``follow``'s lines: every status change, else one line per ``every_s``."""
    last: dict[str, Any] = {"status": None, "at": 0.0}

    def emit(line: str) -> None:
        words = line.split()
        status = words[1] if len(words) > 1 else line
        now = time.monotonic()
        if status != last["status"] or now - last["at"] >= every_s:
            last.update(status=status, at=now)
            echo(line)

    return emit
