"""Which fine-tune method learns the agents' decision steps from the tiny random base?

Same base, same Parquet rows, same steps through ``FinetuneService``: a full fine-tune
versus LoRA (at its own, higher, rate, as LoRA usually needs). Prints each run's held-out
exact match and eval loss on step rows (training people). Why ``train-steps`` uses ``full``.

Run: ``python benchmarks/agents_lora_vs_full.py [--steps 300] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/agents-method"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-n", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmvm_ray.agents.bench.finetune import step_rows
    from llmvm_ray.agents.bench.knowledge import KnowledgeBase
    from llmvm_ray.agents.bench.offline import step_task
    from llmvm_ray.config import load_config
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.runtime import init_ray
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage
    from llmvm_ray.train.service import FinetuneService

    kb = KnowledgeBase.load()
    config = load_config(
        overrides={
            "storage_path": str((args.workdir / "store").resolve()),
            "registry": {"actor_name": "llmvm-agents-method-registry"},
            "ray": {"num_cpus": 4, "include_dashboard": True},
        }
    )
    init_ray(config.ray)
    base = args.workdir / "base"
    build_tiny_model(
        base,
        "llama",
        hidden_size=128,
        num_layers=3,
        max_position_embeddings=512,
        seed=0,
        corpus_tasks=[step_task(kb)],
    )
    n = args.steps * args.batch_size + args.eval_n
    ref = datasets.write_examples(
        Storage.from_uri(config.storage_path), "datasets/method.parquet", step_rows(kb, n, 0)
    )
    common = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "lr_schedule": "cosine",
        "warmup_steps": max(1, args.steps // 20),
        "max_seq_len": 512,
        "eval_fraction": args.eval_n / n,
        "eval_max_examples": args.eval_n,
        "checkpoint_every_steps": 0,
    }
    variants = {
        "full lr 2e-3": {"method": "full", "lr": 2e-3},
        "lora r16 lr 1e-2": {"method": "lora", "lora_r": 16, "lora_alpha": 32.0, "lr": 1e-2},
        "lora r16 lr 2e-3": {"method": "lora", "lora_r": 16, "lora_alpha": 32.0, "lr": 2e-3},
    }
    service = FinetuneService(config)
    results = {}
    for name, params in variants.items():
        run = service.create(
            dataset=ref.uri,
            base_model=str(base.resolve()),
            task_id="agent-steps-method",
            hyperparameters={**common, **params},
            detached=False,
        )
        done = service.wait(run.id)
        m = done.metrics or {}
        results[name] = {"run_id": done.id, "status": str(done.status), **m}
        print(
            f"{name:18s} {done.status}: exact match {m.get('exact_match', float('nan')):.1%} "
            f"eval loss {m.get('eval_loss', float('nan')):.3f} "
            f"train loss {m.get('train_loss', float('nan')):.3f} "
            f"({m.get('train_seconds', 0):.0f} s)",
            flush=True,
        )
    (args.workdir / "report.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
