"""The function every Ray Train worker runs: load, (resume,) train, checkpoint, evaluate, export.

Stopping is cooperative: rank 0 learns of a cancel from the supervisor each step and all
ranks agree on it in the loss all-reduce; they then save one last checkpoint together and
return normally, which lets Ray Train shut the worker group down and remove its placement
group the ordinary way. If that does not happen within the grace period the supervisor
kills everything itself (see ``supervisor.py``).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llmvm_ray.store.datasets import read_examples
from llmvm_ray.store.fs import Storage
from llmvm_ray.train.control import WorkerControl
from llmvm_ray.train.data import collate, encode, shard, split_rows, steps_per_epoch
from llmvm_ray.train.evaluate import evaluate_shard, summarize
from llmvm_ray.train.spec import RunSpec, lora_config
from llmvm_ray.train.strategy import Strategy, build_strategy, read_state, write_state

logger = logging.getLogger("llmvm_ray.train")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["spec"]`` is the run's ``RunSpec``."""
    import ray.train

    _setup_logging()
    spec: RunSpec = config["spec"]
    p = spec.params
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    control = WorkerControl(spec.supervisor, spec.namespace, rank)

    storage = Storage.from_uri(spec.storage_path)
    rows = read_examples(storage, spec.data_uri)
    train_rows, eval_rows = split_rows(rows, p.eval_fraction, p.eval_max_examples, p.seed)
    tokenizer, model = _load_model(spec)
    train_set = [encode(tokenizer, r, p.max_seq_len) for r in train_rows]
    eval_set = [encode(tokenizer, r, p.max_seq_len) for r in eval_rows]
    per_epoch = steps_per_epoch(len(train_set), world, p.batch_size)
    total_steps = p.max_steps or p.epochs * per_epoch

    strategy = build_strategy(model, p, total_steps)
    step = 0
    resumed_from: int | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            strategy.load(Path(directory))
            step = resumed_from = int(read_state(Path(directory))["step"])
        logger.info("rank %d resumed from step %d (attempt %d)", rank, step, control.attempt)

    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=p.seed, drop_last=False
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=p.batch_size,
        sampler=sampler,
        collate_fn=functools.partial(collate, pad_id=pad),
    )
    progress = _Progress(total_steps, step, control.attempt, resumed_from)
    started = time.monotonic()
    checkpointed_at = step if checkpoint is not None else None

    def save_checkpoint(at_step: int) -> None:
        nonlocal checkpointed_at
        uri = _save_checkpoint(spec, strategy, storage, rank, at_step, progress.mean_loss())
        if world > 1:
            # Only once every rank has reported its part is the checkpoint whole (and will
            # be Train's resume point); rank 0 alone returning from report() is not enough.
            torch.distributed.barrier()
        if rank == 0:
            control.checkpoint_saved(uri, at_step)
        checkpointed_at = at_step

    stopped = False
    while step < total_steps and not stopped:
        epoch = step // per_epoch
        sampler.set_epoch(epoch)
        skip = step - epoch * per_epoch
        for index, batch in enumerate(loader):
            if index < skip:
                continue
            loss = strategy.train_step(batch)
            step += 1
            stop = (
                control.poll(progress.snapshot(step, epoch, strategy.lr())) if rank == 0 else False
            )
            loss, stop = _agree(loss, stop, world)
            progress.record(step, loss)
            if rank == 0 and (step % p.log_every_steps == 0 or step == total_steps):
                logger.info("%s %s", spec.run_id, progress.line(step, strategy.lr()))
            if stop:
                stopped = True
                break
            if p.checkpoint_every_steps and step % p.checkpoint_every_steps == 0:
                save_checkpoint(step)
            if step >= total_steps:
                break

    if checkpointed_at != step:
        save_checkpoint(step)  # the last state is always resumable, cancelled or not
    if stopped:
        logger.info("%s stopped at step %d on request", spec.run_id, step)
        return

    train_time = time.monotonic() - started
    sums = evaluate_shard(
        strategy.module,
        tokenizer,
        shard(eval_set, rank, world),
        batch_size=p.batch_size,
        max_new_tokens=min(
            p.eval_max_new_tokens, max((len(e.completion_ids) for e in eval_set), default=1)
        ),
        synced=strategy.partitioned,
    )
    if world > 1:
        torch.distributed.all_reduce(sums)
    metrics = {
        **summarize(sums),
        "steps": float(step),
        "train_examples": float(len(train_set)),
        "train_seconds": train_time,
        "steps_per_s": (step - (resumed_from or 0)) / max(train_time, 1e-9),
    }
    if progress.mean_loss() is not None:  # none when resumed right at the end
        metrics["train_loss"] = progress.mean_loss()
    output_uri = _export(spec, strategy, tokenizer, storage, rank, metrics)
    if rank == 0:
        logger.info("%s done: %s", spec.run_id, json.dumps(metrics))
        control.finished(metrics, output_uri)


# -- pieces ------------------------------------------------------------------------------------


def _setup_logging() -> None:
    # Ray's worker logging already prints INFO records to the driver; only open the level.
    logger.setLevel(logging.INFO)


def _load_model(spec: RunSpec) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = spec.params
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_path)
    torch.manual_seed(p.seed)  # identical LoRA init on every rank
    model = AutoModelForCausalLM.from_pretrained(spec.base_model_path, dtype=torch.float32)
    if p.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(p))
    return tokenizer, model


def _agree(loss: float, stop: bool, world: int) -> tuple[float, bool]:
    """Mean loss over ranks and rank 0's stop flag, in one all-reduce."""
    if world == 1:
        return loss, stop
    t = torch.tensor([loss, 1.0 if stop else 0.0], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t[0]) / world, bool(t[1] > 0)


def _save_checkpoint(
    spec: RunSpec,
    strategy: Strategy,
    storage: Storage,
    rank: int,
    step: int,
    loss: float | None,
) -> str:
    """All ranks write their part and report it; Ray Train merges and persists them."""
    import ray.train

    name = f"step_{step:07d}"
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        wrote = strategy.save(path, rank)
        if rank == 0:
            write_state(path, {"step": step, "run_id": spec.run_id})
            wrote = True
        ray.train.report(
            {"step": step, "loss": loss if loss is not None else float("nan")},
            checkpoint=ray.train.Checkpoint.from_directory(directory) if wrote else None,
            checkpoint_dir_name=name,
        )
    return storage.uri(spec.run_dir, "train", name)


def _export(
    spec: RunSpec,
    strategy: Strategy,
    tokenizer: Any,
    storage: Storage,
    rank: int,
    metrics: dict[str, float],
) -> str:
    """Save the adapter (PEFT) or full model (HF) with its tokenizer under the run folder."""
    uri = storage.uri(spec.output_dir)
    with strategy.gathered():
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                strategy.module.save_pretrained(directory)
                tokenizer.save_pretrained(directory)
                provenance = {
                    "run_id": spec.run_id,
                    "base_model": spec.base_model_path,
                    "data_uri": spec.data_uri,
                    "params": spec.params.model_dump(mode="json"),
                    "metrics": metrics,
                }
                Path(directory, "llmvm_run.json").write_text(json.dumps(provenance, indent=1))
                storage.upload_dir(directory, storage.path(spec.output_dir))
    return uri


class _Progress:
    """Step rate, ETA and a running loss for logs and the registry."""

    def __init__(self, total: int, start_step: int, attempt: int, resumed_from: int | None) -> None:
        self._total = total
        self._t0 = time.monotonic()
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)
        self._recent.append((self._t0, start_step))
        self._losses: collections.deque[float] = collections.deque(maxlen=20)
        self._attempt = attempt
        self._resumed_from = resumed_from

    def record(self, step: int, loss: float) -> None:
        self._recent.append((time.monotonic(), step))
        self._losses.append(loss)

    def mean_loss(self) -> float | None:
        return sum(self._losses) / len(self._losses) if self._losses else None

    def rate(self) -> float | None:
        (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def snapshot(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        rate = self.rate()
        return {
            "step": step,
            "total_steps": self._total,
            "epoch": epoch,
            "loss": self._losses[-1] if self._losses else None,
            "lr": lr,
            "steps_per_s": rate,
            "eta_s": (self._total - step) / rate if rate else None,
            "elapsed_s": time.monotonic() - self._t0,
            "attempt": self._attempt,
            "resumed_from_step": self._resumed_from,
        }

    def line(self, step: int, lr: float) -> str:
        rate = self.rate()
        eta = f"{(self._total - step) / rate:.0f}s" if rate else "?"
        loss = self.mean_loss()
        return (
            f"step {step}/{self._total} ({100 * step / self._total:.0f}%) "
            f"loss {loss:.4f} lr {lr:.2e} {rate or 0:.2f} steps/s ETA {eta}"
        )
