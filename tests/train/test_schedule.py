"""The learning-rate schedules a fine-tune can ask for (``train.lr_schedule``)."""

from __future__ import annotations

import math

import pytest

from llmvm_ray.config import TrainConfig
from llmvm_ray.train.strategy import lr_factor


def test_constant_is_flat_after_warmup():
    factor = lr_factor(TrainConfig(warmup_steps=4), total_steps=100)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == factor(50) == factor(99) == factor(100) == 1.0
    assert lr_factor(TrainConfig(), total_steps=10)(0) == 1.0  # no warm-up: full rate at once


def test_cosine_warms_up_then_decays_to_the_floor_at_the_last_step():
    params = TrainConfig(lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    factor = lr_factor(params, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # never rises
    assert not math.isclose(factor(30), factor(80))


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError):
        TrainConfig(min_lr_ratio=1.5)
