"""How one optimizer step happens: plain DDP, or DeepSpeed ZeRO 1/2/3.

Both strategies expose the same small surface to the training loop (step, save/load a
resumable state, the unwrapped module for eval and export, a context in which every
parameter is whole), so the loop itself never branches on DeepSpeed.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from llmvm_ray.config import TrainConfig

STATE_FILE = "state.json"  # loop position; written by rank 0 next to the weights
_DS_TAG = "state"


def lr_factor(params: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate of step ``step`` (0-based) as a fraction of ``params.lr``.

    Linear warm-up, then ``constant`` or ``cosine`` down to ``min_lr_ratio`` at the last
    step. The decay matters for small models trained from scratch: it is what turns a noisy
    ~90 % into a stable figure in the last steps, where a constant rate keeps jumping around.
    """
    warmup = params.warmup_steps
    floor = params.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if params.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return factor


def _schedule(optimizer: torch.optim.Optimizer, params: TrainConfig, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(params, total_steps))


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class DDPStrategy:
    """DistributedDataParallel through Ray Train's ``prepare_model`` (gloo on CPU)."""

    def __init__(self, model: torch.nn.Module, params: TrainConfig, total_steps: int) -> None:
        from ray.train.torch import get_device, prepare_model

        self.device = get_device()
        self.module = model
        self._params = params
        self.optimizer = torch.optim.AdamW(
            _trainable(model), lr=params.lr, weight_decay=params.weight_decay
        )
        self.scheduler = _schedule(self.optimizer, params, total_steps)
        self.model = prepare_model(model, parallel_strategy="ddp")

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.model.train()
        loss = self.model(**{k: v.to(self.device) for k, v in batch.items()}).loss
        loss.backward()
        if self._params.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(_trainable(self.module), self._params.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, rank: int) -> bool:
        """Rank 0 writes trainable weights + optimizer + scheduler (replicas are identical)."""
        if rank != 0:
            return False
        trainable = {
            n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad
        }
        torch.save(trainable, directory / "trainable.pt")
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        return True

    def load(self, directory: Path) -> None:
        trainable = torch.load(directory / "trainable.pt", weights_only=True)
        missing = set(trainable) - {n for n, _ in self.module.named_parameters()}
        if missing:
            raise RuntimeError(f"checkpoint has unknown parameters: {sorted(missing)[:5]}")
        self.module.load_state_dict(trainable, strict=False)
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=False))

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        yield

    @property
    def partitioned(self) -> bool:
        return False


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 1, 2 or 3 on the process group Ray Train already set up."""

    def __init__(self, model: torch.nn.Module, params: TrainConfig, total_steps: int) -> None:
        import deepspeed

        # deepspeed.initialize takes no backend; this reuses Ray Train's gloo/NCCL group.
        deepspeed.init_distributed(dist_backend="nccl" if params.use_gpu else "gloo")
        self._params = params
        optimizer = torch.optim.AdamW(
            _trainable(model), lr=params.lr, weight_decay=params.weight_decay
        )
        scheduler = _schedule(optimizer, params, total_steps)
        config = {
            "train_micro_batch_size_per_gpu": params.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": params.max_grad_norm,
            "zero_optimization": {"stage": params.zero_stage},
            # A torch optimizer (DeepSpeed's fused Adam needs CUDA); ZeRO accepts it so.
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.module = self.engine.module

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.engine.train()
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        loss = self.engine(**batch).loss
        self.engine.backward(loss)
        self.engine.step()
        return float(loss.detach())

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, rank: int) -> bool:
        """Every rank writes its shard; Ray Train merges the folders into one checkpoint."""
        self.engine.save_checkpoint(
            str(directory),
            tag=_DS_TAG,
            exclude_frozen_parameters=self._params.method == "lora",
        )
        return True

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=_DS_TAG, load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Whole parameters on every rank (ZeRO-3 partitions them), e.g. to export."""
        if self._params.zero_stage < 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            yield

    @property
    def partitioned(self) -> bool:
        """True when a forward needs every rank at once (ZeRO-3)."""
        return self._params.zero_stage == 3


Strategy = DDPStrategy | DeepSpeedStrategy


def build_strategy(model: torch.nn.Module, params: TrainConfig, total_steps: int) -> Strategy:
    """The run's strategy; ``total_steps`` is where a decaying schedule ends."""
    if params.zero_stage == 0:
        return DDPStrategy(model, params, total_steps)
    return DeepSpeedStrategy(model, params, total_steps)


def write_state(directory: Path, state: dict[str, Any]) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state))


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE_FILE).read_text())
