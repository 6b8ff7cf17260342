"""Optimizer benchmark: the demo's loop on the synthetic `date` task, measured.

After promotion, side by side in one run: student latency / teacher latency (median, through
the same service), teacher calls / all calls (the shadow share), and the student's held-out
agreement with the truth (the teacher is >= 95 % right on this task).

Run: ``python benchmarks/optimizer.py [--shadow-rate 0.05] [--workdir demo-output]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shadow-rate", type=float, default=0.05)
    parser.add_argument("--workdir", type=Path, default=Path("demo-output"))
    parser.add_argument("--port", type=int, default=3118)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console

    from llmvm_ray.demo import run_loop

    m = run_loop(args.workdir, args.port, Console(stderr=True), shadow_rate=args.shadow_rate)
    if m is None:
        print("the student was never promoted: no figures")
        sys.exit(1)
    ratio = m["student_latency_ms"] / m["teacher_latency_ms"]
    print(
        f"student latency / teacher latency : {ratio:.2f}"
        f"  ({m['student_latency_ms']:.0f} ms / {m['teacher_latency_ms']:.0f} ms, target <= 0.2)"
    )
    share = m["teacher_calls_after_promotion"] / m["calls_after_promotion"]
    print(f"teacher calls / all calls          : {share:.1%}  (target <= 5 %)")
    print(f"held-out agreement                 : {m['student_correct']:.1%}  (target >= 95 %)")
    print(f"gate score at promotion            : {m['gate_score']:.1%}")
    print(f"examples recorded, fine-tunes      : {m['examples']}, {m['fine_tunes']}")


if __name__ == "__main__":
    main()
