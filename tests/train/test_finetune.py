"""Real TorchTrainer runs, 2 workers over gloo: LoRA (DDP), full fine-tune, DeepSpeed ZeRO-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmvm_ray.registry.records import RunStatus
from tests.train.conftest import snapshot_resources

pytestmark = pytest.mark.ray


def test_lora_ddp_two_workers_and_engine_serves_the_adapter(harness, tiny_llama, date_rows):
    from llmvm_ray.config import ModelConfig
    from llmvm_ray.engine import AdapterRef, Engine
    from llmvm_ray.engine.types import GenerationRequest, SamplingParams

    cpu, pgs = snapshot_resources()
    run = harness.create(max_steps=24, lr=2e-2)
    assert run.status == RunStatus.QUEUED and run.dataset.rows == 96
    assert run.dataset.content_hash.startswith("sha256:")
    done = harness.service.wait(run.id, timeout_s=300)
    assert done.status == RunStatus.SUCCEEDED, done.error
    harness.assert_released(done, cpu, pgs)

    assert {w.rank for w in done.workers} == {0, 1}
    assert done.progress.step == done.progress.total_steps == 24
    assert {"eval_loss", "exact_match", "train_loss", "eval_examples"} <= set(done.metrics)
    assert done.metrics["eval_examples"] == 10  # 10 % of 96 rows, over both ranks
    assert done.started_at and done.finished_at and done.finished_at >= done.started_at
    adapter = Path(done.output_path)
    assert done.output_format == "peft_adapter" and done.adapter_path == str(adapter)
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "llmvm_run.json").read_text())["run_id"] == run.id
    assert Path(done.checkpoint_path).is_dir() and done.checkpoint_step == 24
    latest = harness.service.latest_adapter("date")
    assert latest is not None and latest.id == run.id

    engine = Engine(ModelConfig(name="tiny", model_uri=str(tiny_llama)))
    engine.load_adapter(AdapterRef("date", str(adapter)))
    greedy = SamplingParams(max_tokens=12, temperature=0)
    prompt = date_rows[0]["prompt"]
    base, tuned = engine.generate(
        [
            GenerationRequest("base", prompt, greedy),
            GenerationRequest("tuned", prompt, greedy, AdapterRef("date", str(adapter))),
        ]
    )
    assert tuned.adapter == "date"
    assert tuned.choices[0].text != base.choices[0].text


def test_full_finetune_two_workers(harness):
    from transformers import AutoModelForCausalLM

    cpu, pgs = snapshot_resources()
    run = harness.create(method="full", max_steps=6, lr=1e-3)
    done = harness.service.wait(run.id, timeout_s=300)
    assert done.status == RunStatus.SUCCEEDED, done.error
    harness.assert_released(done, cpu, pgs)
    assert done.output_format == "hf_model" and done.adapter_path is None
    tuned = AutoModelForCausalLM.from_pretrained(done.output_path)
    base = AutoModelForCausalLM.from_pretrained(harness.model)
    changed = [
        name
        for (name, a), (_, b) in zip(tuned.named_parameters(), base.named_parameters(), strict=True)
        if not a.detach().equal(b.detach())
    ]
    assert changed, "a full fine-tune must change the weights"


def test_deepspeed_zero2_two_workers(harness):
    cpu, pgs = snapshot_resources()
    run = harness.create(zero_stage=2, max_steps=6)
    done = harness.service.wait(run.id, timeout_s=300)
    assert done.status == RunStatus.SUCCEEDED, done.error
    harness.assert_released(done, cpu, pgs)
    assert (Path(done.output_path) / "adapter_model.safetensors").is_file()
    # Every rank's ZeRO shard landed in the one merged checkpoint.
    shards = sorted(p.name for p in Path(done.checkpoint_path).rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
