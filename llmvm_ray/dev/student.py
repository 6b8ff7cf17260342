"""A tiny *pretrained* student base, and the LoRA recipe that distils a task into it.

Real students are small pretrained LMs that already "know" dates and how to copy text, so a
LoRA adapter only has to pick the task. ``make_student_base`` builds such a model offline in
about half a minute: the tiny Llama of ``tiny.build_tiny_model`` (same tokenizer, 2 layers,
hidden 128 like the teacher) pretrained with plain LM loss on generated text.

What the pretraining text contains (``pretraining_document``) and what it does NOT:

- written dates ("on March 5, 2021 we met.") and ISO dates ("log 2021-03-05"), never both
  in one document, so no date ever appears in both formats;
- world knowledge about months ("June has 30 days and is month 06.", "03 March 04 April");
- generic copying and reformatting of *numbers* in the ``Input:/Output:`` frame (digit
  groups shuffled into another order and separator, "Input: 5/8318/38\\nOutput:
  05.8318.38"; verbatim copies of ISO dates and digit strings), written dates repeated
  verbatim ("May 24, 2007, again May 24, 2007");
- the other tasks' data (``reverse``, ``sort``), with and without their instruction.

A written date is never the input of an ``Input:/Output:`` pair and never sits next to an
ISO date: the base has seen every ingredient but not the ``date`` task's mapping, and
``tests/dev/test_student.py`` checks that it scores ~0 % on the task before LoRA.

``STUDENT_LORA_RECIPE`` holds the ``TrainConfig`` overrides measured to distil ``date`` into
that base; ``distill_check`` runs the same fine-tune in process (tokenization, loss,
optimizer and schedule of ``llmvm_ray.train``) and measures held-out exact match.
``python -m llmvm_ray.dev.student [--random-base]`` reproduces the measurements behind it
(benchmarks/RESULTS.md, "Figures behind design choices": the student recipe). In short:
N >= 64 teacher examples give >= 95 % held-out exact match (N = 32 is unreliable: some month
is often missing); pretraining matters (a random base stays below 90 %); LoRA on the
attention projections beats LoRA on every linear layer on a pretrained base.
"""

from __future__ import annotations

import calendar
import random
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmvm_ray.dev.tasks import Task, get_task

STUDENT_HIDDEN_SIZE = 128
"""Hidden size of the student base, the teacher's: a hidden-64 base learned far less after
LoRA (benchmarks/RESULTS.md, "Figures behind design choices")."""
STUDENT_NUM_LAYERS = 2
STUDENT_PRETRAIN_STEPS = 300
"""Pretraining steps ``make_student_base`` takes by default (batch 32; about half a minute of
one CPU thread, benchmarks/RESULTS.md, "Figures behind design choices")."""
STUDENT_PRETRAIN_BATCH_SIZE = 32
STUDENT_PRETRAIN_LR = 3e-3

LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

STUDENT_LORA_RECIPE: dict[str, Any] = {
    "method": "lora",
    "lora_r": 16,
    "lora_alpha": 32.0,
    "lora_dropout": 0.2,
    "lora_target_modules": LORA_ATTENTION,
    "lr": 2e-3,
    "warmup_steps": 10,
    "max_steps": 600,
    "batch_size": 16,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
}
"""``TrainConfig`` overrides that distil ``date`` into a ``make_student_base`` model.

Held-out exact match >= 95 % from N >= 64 teacher examples (module docstring). Why each
value: LoRA on the attention projections, rank 16 of hidden 128 (the base already copies
and knows months; the adapter routes); dropout 0.2 (without it small sets are memorised);
lr 2e-3 constant after 10 warm-up steps (a higher rate diverged late, a lower one learned too
slowly; benchmarks/RESULTS.md, "Figures behind design choices"); a fixed step budget (600,
batch 16) so the cost does not grow with N. PEFT mixed-adapter batches
(``generate(..., adapter_names=[...])``) work with these adapters (tested). ``batch_size``
is per worker: with 2 workers the effective batch doubles (not measured).
"""

_MONTHS = list(calendar.month_name)[1:]
_WRITTEN_TEMPLATES = (
    "the date is {a}.",
    "on {a} we met.",
    "born {a}",
    "from {a} to {b}.",
    "due {a}; paid {b}.",
    "{a}",
    "dates: {a}, {b}, {c}",
)
_ISO_TEMPLATES = (
    "the date is {a}.",
    "log {a}",
    "{a} ok",
    "from {a} to {b}.",
    "{a}",
    "dates: {a} {b} {c}",
    "id {a}/{b}",
)
# Relative weights of the kinds of pretraining document (see ``pretraining_document``).
_DOC_WEIGHTS: Mapping[str, int] = {
    "written": 1,
    "iso": 1,
    "numbers": 1,
    "months": 4,
    "copy": 1,
    "reformat": 2,
    "task": 2,
}


def _random_date(rng: random.Random) -> tuple[int, int, int]:
    year = rng.randint(1950, 2049)
    month = rng.randint(1, 12)
    return year, month, rng.randint(1, calendar.monthrange(year, month)[1])


def _written(date: tuple[int, int, int]) -> str:
    year, month, day = date
    return f"{calendar.month_name[month]} {day}, {year}"


def _iso(date: tuple[int, int, int]) -> str:
    year, month, day = date
    return f"{year:04d}-{month:02d}-{day:02d}"


def _month_fact(rng: random.Random) -> str:
    if rng.random() < 0.3:
        start = rng.randint(1, 12)
        months = range(start, min(13, start + 4))
        return " ".join(f"{m:02d} {calendar.month_name[m]}" for m in months)
    facts = []
    for _ in range(rng.randint(1, 2)):
        month = rng.randint(1, 12)
        name = calendar.month_name[month]
        days = calendar.monthrange(2001, month)[1]
        facts.append(
            rng.choice(
                (
                    f"{name} is month {month:02d}.",
                    f"month {month:02d} is {name}.",
                    f"{name} ({month:02d})",
                    f"{name} has {days} days and is month {month:02d}.",
                    f"in {rng.randint(1950, 2049)}, {name} was month {month:02d} as always.",
                    f"{name}: {days} days, month {month:02d}",
                    f"the {month:02d} month is {name}, with {days} days.",
                )
            )
        )
    return " ".join(facts)


def _reformat(rng: random.Random) -> str:
    """Digit groups shuffled into another order and separator, zero-padded to two digits."""
    k = rng.randint(2, 3)
    fields = [str(rng.randint(0, 10 ** rng.randint(1, 4) - 1)) for _ in range(k)]
    sep_in = rng.choice((", ", " ", "/", "-", " and ", "; "))
    sep_out = rng.choice(("-", "/", " ", "."))
    order = list(range(k))
    rng.shuffle(order)
    out = sep_out.join(fields[i].zfill(2) for i in order)
    return f"Input: {sep_in.join(fields)}\nOutput: {out}"


def pretraining_document(rng: random.Random) -> str:
    """One short generated document of the student's pretraining text (see module doc)."""
    kind = rng.choices(list(_DOC_WEIGHTS), weights=list(_DOC_WEIGHTS.values()))[0]
    if kind == "written":
        template = rng.choice(_WRITTEN_TEMPLATES)
        return template.format(**{k: _written(_random_date(rng)) for k in "abc"})
    if kind == "iso":
        template = rng.choice(_ISO_TEMPLATES)
        return template.format(**{k: _iso(_random_date(rng)) for k in "abc"})
    if kind == "numbers":
        if rng.random() < 0.5:
            return " ".join(f"{rng.randint(0, 99):02d}" for _ in range(rng.randint(2, 5)))
        days = rng.randint(28, 31)
        return f"{rng.choice(_MONTHS)} has {days} days; year {rng.randint(1950, 2049)}"
    if kind == "months":
        return _month_fact(rng)
    if kind == "copy":
        r = rng.random()
        if r < 1 / 3:
            written = _written(_random_date(rng))
            return f"{written}, again {written}"
        if r < 2 / 3:
            value = _iso(_random_date(rng))
        else:
            value = "".join(rng.choice(string.digits) for _ in range(rng.randint(2, 6)))
        return f"Input: {value}\nOutput: {value}"
    if kind == "reformat":
        return _reformat(rng)
    task = get_task(rng.choice(("reverse", "sort")))
    x, y = task.sample(rng)
    return task.format_prompt(x, instruction=rng.random() < 0.3) + task.format_completion(y)


def pretraining_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` pretraining documents, deterministic given ``seed`` (for inspection and tests)."""
    rng = random.Random(seed)
    return [pretraining_document(rng) for _ in range(n)]


def make_student_base(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = STUDENT_PRETRAIN_STEPS,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Build and pretrain a tiny student base in ``out_dir``; return the folder.

    ``tiny.build_tiny_model`` makes the folder (2-layer Llama, hidden 128, the teacher's
    tokenizer family), then ``steps`` AdamW steps of plain next-token loss on
    ``pretraining_document`` text (batch 32, each document BOS + text + EOS, linear warm-up
    then cosine decay) turn it into a small "pretrained" LM. The folder reloads with the Auto
    classes like any hub model. ``progress(step, loss)`` is called after every step.
    Seeding does not disturb the caller's global torch RNG.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmvm_ray.dev.tiny import build_tiny_model, cosine_schedule, fit
    from llmvm_ray.train.data import Example, collate

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    out = build_tiny_model(
        out_dir,
        "llama",
        hidden_size=STUDENT_HIDDEN_SIZE,
        num_layers=STUDENT_NUM_LAYERS,
        seed=seed,
    )
    if steps == 0:
        return out
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    rng = random.Random(seed + 1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def next_batch() -> dict[str, Any]:
        docs = [pretraining_document(rng) for _ in range(STUDENT_PRETRAIN_BATCH_SIZE)]
        # Plain LM loss: every token of each document (and its EOS) is a label.
        ids = tokenizer(docs)["input_ids"]
        return collate([Example([], i + [eos], d) for i, d in zip(ids, docs, strict=True)], pad)

    schedule = cosine_schedule(STUDENT_PRETRAIN_LR, max(1, steps // 20), weight_decay=0.01)
    fit(model, next_batch, schedule, steps=steps, seed=seed, progress=progress)
    model.save_pretrained(out)
    return out


@dataclass(frozen=True)
class DistillResult:
    accuracy: float  # held-out exact match after training
    train_seconds: float  # wall time of the optimizer steps (no loading, no eval)
    train_cpu_seconds: float  # CPU time of the same (robust to a busy machine)
    steps: int
    examples: int
    final_loss: float


def distill_check(
    base_dir: str | Path,
    task: Task | str = "date",
    *,
    n: int = 64,
    data_seed: int = 0,
    seed: int = 0,
    recipe: Mapping[str, Any] | None = None,
    eval_n: int = 200,
    adapter_dir: str | Path | None = None,
    **overrides: Any,
) -> DistillResult:
    """LoRA-distil ``n`` teacher examples of ``task`` into ``base_dir``; measure held-out EM.

    The examples are ``tasks.make_examples(task, n, data_seed, instruction=False)``: student
    prompts and the true targets (what a >= 99 % teacher answers). Training mimics a
    ``llmvm_ray.train`` LoRA run with one worker: ``TrainConfig`` built from ``recipe``
    (default ``STUDENT_LORA_RECIPE``) plus ``overrides``; the same ``encode``/``collate``
    (prompt tokenized as the engine does, completion + EOS, loss on completion tokens
    only), ``tiny.fit`` (AdamW, the pipeline's ``lr_schedule``: the recipe's is linear
    warm-up then constant; gradient clipping), reshuffled epochs until ``max_steps`` (or
    ``epochs`` passes). All ``n`` rows train (the real loop holds ``eval_fraction`` of them
    out); evaluation is greedy on ``eval_n`` held-out inputs never seen in training.
    ``adapter_dir`` saves the adapter PEFT-style.
    """
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmvm_ray.config import TrainConfig
    from llmvm_ray.dev.tasks import make_examples
    from llmvm_ray.dev.tiny import evaluate, fit
    from llmvm_ray.train.data import collate, encode, steps_per_epoch
    from llmvm_ray.train.spec import lora_config

    task = get_task(task) if isinstance(task, str) else task
    params = TrainConfig.model_validate(
        {**(STUDENT_LORA_RECIPE if recipe is None else recipe), **overrides, "seed": seed}
    )
    if params.method != "lora":
        raise ValueError("distill_check trains LoRA adapters only")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = make_examples(task, n, data_seed, instruction=False)
    train_set = [encode(tokenizer, row, params.max_seq_len) for row in rows]
    per_epoch = steps_per_epoch(len(train_set), 1, params.batch_size)
    total = params.max_steps or params.epochs * per_epoch

    def batches() -> Iterator[dict[str, Any]]:
        """Reshuffled epochs, as the Ray Train loop's sampler draws them."""
        order = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(len(train_set), generator=order).tolist()
            for start in range(0, len(perm), params.batch_size):
                chunk = [train_set[i] for i in perm[start : start + params.batch_size]]
                yield collate(chunk, pad_id=tokenizer.pad_token_id)

    # One seed for the adapter's initialisation and, continuing the stream, its dropout.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = get_peft_model(model, lora_config(params))
        started, cpu_started = time.perf_counter(), time.process_time()
        loss_value = fit(model, batches().__next__, params, steps=total, seed=None)
        train_seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    if adapter_dir is not None:
        model.save_pretrained(adapter_dir)
    accuracy = evaluate(model, task, n=eval_n, instruction=False, tokenizer=tokenizer)
    return DistillResult(accuracy, train_seconds, cpu_seconds, total, n, loss_value)


def _main(argv: Sequence[str] | None = None) -> None:
    """Reproduce the recipe's measurements: base build time, accuracy vs N, train time."""
    import argparse
    import statistics
    import tempfile

    import torch

    parser = argparse.ArgumentParser(prog="python -m llmvm_ray.dev.student")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=STUDENT_PRETRAIN_STEPS)
    parser.add_argument(
        "--random-base", action="store_true", help="also run the recipe on an untrained base"
    )
    parser.add_argument("--base-dir", help="reuse (or keep) the pretrained base here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        base_dir = Path(args.base_dir or Path(tmp, "student"))
        if not (base_dir / "config.json").is_file():
            started, cpu = time.perf_counter(), time.process_time()
            make_student_base(base_dir, seed=args.base_seed, steps=args.pretrain_steps)
            print(
                f"base built in {time.perf_counter() - started:.1f} s wall, "
                f"{time.process_time() - cpu:.1f} s CPU ({args.pretrain_steps} steps)",
                flush=True,
            )
        bases["pretrained"] = base_dir
        if args.random_base:
            bases["random"] = make_student_base(Path(tmp, "random"), seed=args.base_seed, steps=0)
        print(f"recipe: {STUDENT_LORA_RECIPE}")
        print("| base | N | held-out EM per data seed | mean | min | train s wall | train s CPU |")
        print("|---|---|---|---|---|---|---|")
        for name, path in bases.items():
            for n in args.n:
                results = [distill_check(path, n=n, data_seed=s) for s in args.data_seeds]
                accs = [r.accuracy for r in results]
                print(
                    f"| {name} | {n} | {' / '.join(f'{a:.3f}' for a in accs)} "
                    f"| {statistics.mean(accs):.3f} | {min(accs):.3f} "
                    f"| {statistics.mean(r.train_seconds for r in results):.1f} "
                    f"| {statistics.mean(r.train_cpu_seconds for r in results):.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    _main()
