"""Agents benchmark: REBEL, backward chaining and FLAT on the compositional-celebrities
questions of HELD-OUT people, offline on CPU.

Trains (once) a tiny step model on the agents' decision steps of the training people
through the fine-tune pipeline (``llmvm agent train-steps``: a Parquet dataset under
``WORKDIR/store``, a full fine-tune with Ray Train, registered in the registry), then scores
each agent with it through the real pieces: the knowledge-tool server on loopback, agent runs
in a pool of Ray actors, HTTP tool calls.
Prints accuracy per category, model and tool calls per question, latency; writes the full
report (with a few wrong answers' traces) as JSON.

Run: ``python benchmarks/agents.py [--per-category 20 | 0 for all] [--workdir bench-output/agents]``
Same as: ``llmvm agent train-steps DIR`` (2000 steps), ``llmvm agent train-steps DIR --resume
--lr 1e-3 --seed 1`` (2000 more), then ``llmvm agent eval --local-model DIR``.
Against a real LLM on the optimizing service: ``llmvm agent eval --url http://HOST:3002``;
against any OpenAI-compatible model: ``llmvm agent eval --openai-url URL --openai-model M``.
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
    parser.add_argument("--workdir", type=Path, default=Path("bench-output/agents"))
    parser.add_argument("--steps", type=int, default=2000, help="first phase, lr 2e-3")
    parser.add_argument("--more-steps", type=int, default=2000, help="second phase, lr 1e-3")
    parser.add_argument("--per-category", type=int, default=20, help="0 = every question")
    parser.add_argument("--agents", default="flat,rebel,backward")
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--runs-per-actor", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmvm_ray.agents.bench.finetune import train_step_model
    from llmvm_ray.agents.bench.knowledge import KnowledgeBase
    from llmvm_ray.agents.bench.runner import evaluate, format_report, select_questions
    from llmvm_ray.agents.model import ModelSpec
    from llmvm_ray.config import AgentsConfig, load_config
    from llmvm_ray.runtime import init_ray

    kb = KnowledgeBase.load()
    model_dir = args.workdir / "step-model"
    info_file = model_dir / "agent_steps.json"
    config = load_config(
        overrides={
            "storage_path": str((args.workdir / "store").resolve()),
            "registry": {"actor_name": "llmvm-agents-bench-registry"},
            # Ray Train's clean-up needs the dashboard (shared/ENVIRONMENT.md).
            "ray": {"num_cpus": 4, "include_dashboard": True},
        }
    )
    init_ray(config.ray)

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not info_file.exists():
        print(f"training the step model ({args.steps} steps)...", file=sys.stderr)
        train_step_model(model_dir, kb, config, steps=args.steps, echo=echo)
    info = json.loads(info_file.read_text())
    if args.more_steps and info["steps"] < args.steps + args.more_steps:
        # A second phase at a lower peak rate, from the first phase's model.
        print(f"training it further ({args.more_steps} steps)...", file=sys.stderr)
        train_step_model(
            model_dir, kb, config, steps=args.more_steps, lr=1e-3, seed=1, resume=True, echo=echo
        )
        info = json.loads(info_file.read_text())
    print(
        f"step model: {info['steps']} steps, {info['train_seconds']} s, exact match on "
        f"held-out step examples {info['step_exact_match']:.1%}"
    )
    questions = select_questions(kb, args.per_category or None, heldout=True)
    reports = []
    for agent in args.agents.split(","):
        report = evaluate(
            agent,
            questions,
            ModelSpec(kind="local", path=str(model_dir.resolve())),
            AgentsConfig(),
            kb=kb,
            pool_size=args.pool_size,
            runs_per_actor=args.runs_per_actor,
        )
        reports.append(report)
        print(format_report(report), flush=True)
    out = args.workdir / "report.json"
    out.write_text(json.dumps({"step_model": info, "reports": reports}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
