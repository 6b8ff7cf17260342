"""The one typed configuration tree of llmvm-ray.

Every option of the project lives here exactly once, with its default and a one-line doc
(the field's ``description``). Values come, in rising priority, from the defaults, a TOML file
(``--config`` / ``LLMVM_CONFIG``), ``LLMVM_*`` environment variables (nested with ``__``, e.g.
``LLMVM_SERVE__PORT=8000``) and explicit overrides from the CLI. No other module parses env vars.

``docs/configuration.md`` is generated from this module (``llmvm config docs``); a test fails
when it is stale.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from llmvm_ray.errors import ConfigError

ENV_PREFIX = "LLMVM_"
CONFIG_FILE_ENV = "LLMVM_CONFIG"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AutoscalingConfig(Section):
    """Ray Serve autoscaling bounds for one deployment."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler may start.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )


class ModelConfig(Section):
    """One served base model (and the LoRA adapters known for it)."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Model id clients put in `model`; adapters are addressed as `name:adapter`.",
    )
    model_uri: str = Field(
        ..., min_length=1, description="Hugging Face hub id or local folder of the weights."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; `auto` is float32 on CPU and bfloat16 on CUDA."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; `auto` picks CUDA when present."
    )
    trust_remote_code: bool = Field(False, description="Allow custom modeling code from the hub.")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters served with this model: name -> folder."
    )
    max_adapters_per_replica: int = Field(
        8, ge=1, description="Adapters a replica keeps loaded at once (least recently used go)."
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Context length (prompt + completion); default: the model's own limit.",
    )
    default_max_tokens: int = Field(
        16, ge=1, description="Completion length when a request gives no `max_tokens`."
    )
    max_batch_size: int = Field(
        16, ge=1, description="Most sequences a replica decodes together in one batch."
    )
    continuous_batching: bool = Field(
        True,
        description="Requests arriving while a batch decodes join it (else they wait for the "
        "next batch).",
    )
    join_ratio: float = Field(
        0.5,
        ge=0,
        description="Arrivals join a running batch as soon as their rows reach this share of "
        "its running rows (each join costs a prefill forward).",
    )
    join_wait_steps: int = Field(
        4,
        ge=0,
        description="Most decoding steps an arrival waits for others to join a running batch with.",
    )
    batch_wait_timeout_s: float = Field(
        0.05,
        ge=0,
        description="Longest a replica waits for recently seen concurrent requests to join a "
        "batch (a lone client never waits).",
    )
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is off.")
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Autoscaling bounds; when set, `num_replicas` is ignored."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
    engine_process: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run a replica's engine in a child process, away from the GIL of the "
        "replica's request handling; `auto` does on CUDA (where decoding is Python-bound).",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica accepts before Serve queues more."
    )


class ServeConfig(Section):
    """The HTTP service."""

    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds to.")
    port: int = Field(3002, ge=1, le=65535, description="HTTP port (LLM-VM's default).")
    app_name: str = Field("llmvm", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="Route prefix of the application.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Accepted `Authorization: Bearer` keys; empty means no auth.",
    )
    public_docs: bool = Field(
        False, description="Serve /docs and /openapi.json without a key when keys are set."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve without `api_keys` on a non-loopback `host` (refused otherwise).",
    )
    # Request limits: each is checked at the edge, before the request reaches a model, and
    # refused with a 4xx naming the field (docs/api.md, "Limits").
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="Largest request body in bytes, refused (413) before it is parsed or "
        "authenticated.",
    )
    max_prompts: int = Field(64, ge=1, description="Most prompts in one completions `prompt` list.")
    max_prompt_chars: int = Field(
        200_000,
        ge=1,
        description="Longest prompt, `context`, message content or agent question in characters "
        "(the context length in tokens is the model's `max_model_len`).",
    )
    max_messages: int = Field(256, ge=1, description="Most chat `messages` per request.")
    max_stop_sequences: int = Field(4, ge=0, description="Most stop sequences per request.")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop sequence in characters.")
    max_n: int = Field(8, ge=1, description="Most choices (`n`) per request.")
    max_guided_choices: int = Field(256, ge=1, description="Most strings in `guided_choice`.")
    max_guide_chars: int = Field(
        65_536,
        ge=1,
        description="Largest guide in characters: `guided_regex`, the JSON schema "
        "(`guided_json` / `response_format`, serialized) or all `guided_choice` strings "
        "together; a larger one is refused before it is compiled.",
    )
    max_tools: int = Field(32, ge=0, description="Most `tools` in one `/v1/complete` or agent run.")
    request_timeout_s: float = Field(
        300.0, gt=0, description="A request still unanswered after this gets a 504."
    )
    ingress_num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per ingress replica.")
    ingress_replicas: int = Field(1, ge=1, description="Ingress (HTTP API) replicas.")
    check_fits: bool = Field(
        True,
        description="Refuse apps needing more CPUs/GPUs than the cluster has (off: autoscaling).",
    )


class RayConfig(Section):
    """How the process joins Ray."""

    address: str | None = Field(
        None, description="Cluster to join (`auto`, `ray://...`); none starts a local Ray."
    )
    namespace: str = Field("llmvm", description="Ray namespace for named actors and apps.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a locally started Ray (default: all cores)."
    )
    metrics_export_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Prometheus metrics port of a locally started Ray (none: Ray picks one).",
    )
    include_dashboard: bool = Field(
        True, description="Run the dashboard with a local Ray (Ray Train's clean-up needs it)."
    )
    auth_mode: Literal["disabled", "token"] = Field(
        "disabled",
        description="Ray's RAY_AUTH_MODE for every process; a local Ray binds to loopback.",
    )
    log_to_driver: bool = Field(
        True,
        description="Echo Ray workers' logs on this console (always in the session's log dir).",
    )
    serve_throughput_optimized: bool = Field(
        True,
        description=(
            "Ray Serve's throughput-optimized mode (`RAY_SERVE_THROUGHPUT_OPTIMIZED`) for a "
            "locally started Ray: gRPC between deployments, handlers on each replica's own "
            "event loop, buffered request logs, and a direct HTTP port per ingress replica."
        ),
    )
    serve_drain_s: float = Field(
        0.0,
        ge=0,
        description=(
            "Seconds a stopping ingress replica keeps its direct HTTP port open for a local "
            "Ray (`RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`). Ray's 30 s lets a "
            "cluster's load balancer notice; a local Ray has none, and 30 s made every app "
            "stop and update wait."
        ),
    )


class TeacherConfig(Section):
    """The big model that answers first and teaches the student (optimizer)."""

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint; none means `model` is one of `models` here.",
    )
    model: str = Field(
        "teacher", description="Teacher model: a name in `models`, or the remote model name."
    )
    api: Literal["completions", "chat"] = Field(
        "completions",
        description="Remote API to call; with `chat` the context is the system message.",
    )
    api_key: SecretStr | None = Field(
        None, description="Teacher API key (a request's `openai_key` overrides it)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-call timeout toward the teacher.")
    max_retries: int = Field(3, ge=0, description="Retries with backoff on 429/5xx/timeouts.")
    max_concurrency: int = Field(16, ge=1, description="Teacher calls in flight at once.")


class OptimizerConfig(Section):
    """The distillation loop (LLM-VM's optimizer options plus the quality gate and drift)."""

    enabled: bool = Field(True, description="Run the optimizer (`/v1/complete`, `llmvm` model).")
    student_model: str = Field(
        "student", description="The student base model: a name in `models` (adapters go on it)."
    )
    record_all: bool = Field(
        False, description="Record every teacher answer, not only requests with `finetune`."
    )
    min_train_examples: int = Field(
        20, ge=1, description="Recorded examples before a task's first fine-tune."
    )
    max_train_examples: int = Field(
        2000, ge=1, description="Recording stops for a task after this many examples."
    )
    retrain_growth: float = Field(
        2.0, ge=1.0, description="A task retrains once its examples grew by this factor."
    )
    finetune_retry_s: float = Field(
        60.0, ge=0, description="Wait before retrying a task's fine-tune that failed to run."
    )
    gate_timeout_s: float = Field(
        600.0, gt=0, description="A gate still scoring after this fails (never promotes)."
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of recorded examples held out for the gate."
    )
    min_holdout: int = Field(4, ge=1, description="Fewest held-out examples a gate may use.")
    gate_metric: Literal["exact", "normalized", "token_f1", "valid"] = Field(
        "normalized",
        description="Student-vs-teacher score: exact, normalized exact, token F1, or validity.",
    )
    gate_threshold: float = Field(
        0.9, ge=0, le=1, description="Promote a student only if its gate score reaches this."
    )
    shadow_rate: float = Field(
        0.05, ge=0, le=1, description="Share of student-served requests also sent to the teacher."
    )
    shadow_window: int = Field(
        50, ge=1, description="Shadow comparisons in the rolling agreement window."
    )
    min_shadow_samples: int = Field(
        10, ge=1, description="Shadow comparisons needed before a rollback can happen."
    )
    drift_threshold: float = Field(
        0.8, ge=0, le=1, description="Roll back to the teacher when rolling agreement drops below."
    )
    flush_rows: int = Field(
        16, ge=1, description="Recorded rows buffered before they are written to Parquet."
    )
    flush_interval_s: float = Field(
        2.0, gt=0, description="Most seconds a recorded row waits in the buffer."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="Completion length of `/v1/complete` calls that give none."
    )
    train_overrides: dict[str, Any] = Field(
        default_factory=dict, description="`train` fields overridden for optimizer fine-tunes."
    )
    teacher_cost_per_1k_tokens: float = Field(
        0.01, ge=0, description="Teacher price per 1k tokens, for the cost-saved estimate."
    )


class SynthesisConfig(Section):
    """Teacher-written training examples (LLM-VM's data synthesis options)."""

    examples_to_generate: int = Field(50, ge=0, description="Examples to synthesize per run.")
    seed_examples: int = Field(10, ge=1, description="Real examples shown per teacher request.")
    seed_batch_size: int = Field(10, ge=1, description="Examples asked for per teacher request.")
    similarity_threshold: float = Field(
        0.87, ge=0, le=1, description="Semantic-similarity cutoff for dedup (LLM-VM's variance)."
    )
    example_delim: str = Field("<END>", description="Stop marker appended to completions.")
    temperature: float = Field(1.0, ge=0, le=2, description="Teacher sampling temperature.")
    max_tokens: int = Field(1000, ge=1, description="Teacher tokens per synthesis request.")
    # -- prompts and encoding (llmvm_ray/synthesis/) --
    family: Literal["auto", "completion", "chat"] = Field(
        "auto", description="Prompt template family; `auto` follows `teacher.api`."
    )
    prompt_variants: list[str] = Field(
        default_factory=list,
        description="Own templates (`{context}` `{examples}` `{n}` `{format}`); none: built-ins.",
    )
    system_prompt: str | None = Field(
        None, description="System message of chat templates; none uses the built-in one."
    )
    encoding: Literal["auto", "guided_json", "json", "delimited"] = Field(
        "auto",
        description="How examples travel: `auto` is guided_json for a hosted teacher, else json.",
    )
    seed: int = Field(0, ge=0, description="Seed of k-shot sampling, variant rotation, teacher.")
    answer_with_teacher: bool = Field(
        False,
        description="Answer each new prompt with the teacher's own call (not the generated text).",
    )
    answer_max_tokens: int = Field(
        256, ge=1, description="Completion tokens of those answers (the optimizer: the task's)."
    )
    # -- retries, budget, validation --
    request_retries: int = Field(
        3, ge=0, description="Retries of one teacher request (errors, nothing parsed)."
    )
    backoff_s: float = Field(0.5, ge=0, description="First retry delay (doubles, with jitter).")
    backoff_max_s: float = Field(8.0, ge=0, description="Longest retry delay.")
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one teacher request.")
    attempt_budget: float = Field(
        3.0, ge=1, description="Most requests per run, as a multiple of target / batch size."
    )
    max_prompt_chars: int = Field(4000, ge=1, description="Longer synthesized prompts are invalid.")
    max_completion_chars: int = Field(
        4000, ge=1, description="Longer synthesized completions are invalid."
    )
    # -- dedup --
    dedup_keys: Literal["prompt", "prompt_completion"] = Field(
        "prompt", description="Fields that make two examples the same (exact and near dedup)."
    )
    minhash_threshold: float | None = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard cutoff of near-duplicates; none is off."
    )
    minhash_num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    minhash_ngram: int = Field(3, ge=1, description="Character n-gram size of MinHash shingles.")
    embedding_model: str | None = Field(
        "all-MiniLM-L6-v2",
        description="Semantic dedup encoder (sentence-transformers id or folder); none/'' is off.",
    )
    # -- parallelism --
    num_workers: int = Field(2, ge=1, description="Synthesis worker actors of a batch run.")
    max_in_flight: int = Field(8, ge=1, description="Teacher requests in flight, all workers.")
    requests_per_s: float | None = Field(
        None, gt=0, description="Teacher requests per second, all workers; none is unlimited."
    )
    worker_num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per synthesis worker.")
    stats_interval_s: float = Field(10.0, gt=0, description="How often a run logs its stats.")
    optimizer_min_seeds: int = Field(
        2, ge=1, description="Recorded rows a task needs before `data_synthesis` runs."
    )


class TrainConfig(Section):
    """Defaults of every fine-tune; a run may override any of them (its `hyperparameters`)."""

    method: Literal["lora", "full"] = Field(
        "lora", description="`lora` trains a PEFT LoRA adapter; `full` trains every weight."
    )
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] | None = Field(
        None,
        description="Module names LoRA wraps; none uses PEFT's default for the architecture.",
    )
    lr: float = Field(2e-4, gt=0, le=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warm-up: `constant`, or `cosine` decay to `min_lr_ratio` x lr.",
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Where `cosine` ends (last step), as a fraction of `lr`."
    )
    max_grad_norm: float = Field(
        1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off."
    )
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides `epochs`)."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per worker per step.")
    max_seq_len: int = Field(
        512, ge=8, description="Prompt + completion tokens kept per example (prompt cut first)."
    )
    seed: int = Field(0, ge=0, description="Seed for initialisation, shuffling and the split.")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the rows held out for eval loss and exact match."
    )
    eval_max_examples: int = Field(
        200, ge=0, description="Most held-out rows evaluated (the rest stay unused)."
    )
    eval_max_new_tokens: int = Field(
        64, ge=1, description="Generation cap when scoring held-out exact match."
    )
    zero_stage: int = Field(
        0, ge=0, le=3, description="DeepSpeed ZeRO stage; 0 means plain DDP without DeepSpeed."
    )
    num_workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (data parallel).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); CPU workers use gloo.")
    resources_per_worker: dict[str, float] | None = Field(
        None,
        description="Ray resources per worker, e.g. {CPU = 0.5}; default 1 CPU (+1 GPU).",
    )
    checkpoint_every_steps: int = Field(
        50, ge=0, description="Save a resumable checkpoint every N steps; 0 only at the end."
    )
    checkpoints_to_keep: int = Field(2, ge=1, description="Newest checkpoints kept per run.")
    max_failures: int = Field(
        1, ge=-1, description="Worker-group restarts (from the last checkpoint); -1 is unbounded."
    )
    cancel_grace_s: float = Field(
        10.0, ge=0, description="After a cancel, how long a run may stop itself before a kill."
    )
    log_every_steps: int = Field(10, ge=1, description="Log step, loss and ETA every N steps.")
    progress_interval_s: float = Field(
        1.0, gt=0, description="How often live progress is written to the registry."
    )
    health_check_interval_s: float = Field(
        0.1,
        gt=0,
        description="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for the run; Ray's 2 s stalls reports.",
    )
    torch_extensions_dir: str | None = Field(
        None, description="TORCH_EXTENSIONS_DIR for workers (DeepSpeed's pre-built C++ ops)."
    )


class QuotaConfig(Section):
    """Per-tenant quotas (a tenant is an API key; without keys everyone is one tenant).
    Exceeding one is a 429 with ``Retry-After``."""

    requests_per_s: float | None = Field(
        None, gt=0, description="HTTP requests per second per tenant, per ingress replica."
    )
    burst_s: float = Field(2.0, gt=0, description="Seconds of `requests_per_s` a burst may use.")
    max_tasks: int = Field(
        10_000, ge=1, description="Optimizing tasks (distinct contexts and settings) per tenant."
    )
    max_active_finetunes: int = Field(
        4, ge=1, description="A tenant's API fine-tunes queued or running at once."
    )
    retry_after_s: float = Field(
        30.0, gt=0, description="`Retry-After` of a task or fine-tune quota refusal."
    )


class TrainLimitsConfig(Section):
    """What an API client may ask of a fine-tune (``/v1/fine_tuning/jobs``). The operator's
    own surfaces (``llmvm finetune``, ``jobs/finetune.py``, the optimizer) are not bound."""

    allow_any_base_model: bool = Field(
        False, description="Clients may name base models that are not configured (hub ids)."
    )
    max_num_workers: int = Field(4, ge=1, description="Most Ray Train workers a client asks.")
    max_cpus_per_worker: float = Field(4.0, ge=0, description="Most CPUs per worker.")
    max_gpus_per_worker: float = Field(1.0, ge=0, description="Most GPUs per worker.")
    max_steps: int = Field(100_000, ge=1, description="Most optimizer steps (`max_steps`).")
    max_epochs: int = Field(100, ge=1, description="Most passes over the data (`epochs`).")
    max_seq_len: int = Field(4096, ge=1, description="Longest training sequence.")


class TrainQueueConfig(Section):
    """How fine-tunes wait for their turn and for resources (never blocking serving)."""

    max_concurrent_runs: int = Field(
        1, ge=1, description="Fine-tunes training at once; later ones wait QUEUED in order."
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often a queued run re-checks its turn and free resources."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="A run still QUEUED after this fails; none waits forever."
    )
    reject_impossible: bool = Field(
        True,
        description="Refuse runs needing more than the whole cluster has (off for autoscaling).",
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="How long creating a run waits for its supervisor to start."
    )


class RegistryConfig(Section):
    """The fine-tune registry actor and its durable store under `storage_path`."""

    actor_name: str = Field(
        "llmvm-registry", min_length=1, description="Name of the detached registry actor."
    )
    reconcile_interval_s: float = Field(
        5.0, gt=0, description="How often runs whose supervisor is gone are marked FAILED."
    )
    attach_timeout_s: float = Field(
        60.0, gt=0, description="A QUEUED run with no supervisor after this is marked FAILED."
    )
    orphan_cleanup_delay_s: float = Field(
        10.0, ge=0, description="Delay before a lost run's placement group is removed."
    )


class AgentsConfig(Section):
    """The agents (REBEL, backward chaining, FLAT): limits, tool calls and the actor pool."""

    max_depth: int = Field(3, ge=0, le=10, description="Deepest recursion of REBEL/backward.")
    max_model_calls: int = Field(
        40, ge=1, description='Model calls one run may make before it answers "don\'t know".'
    )
    max_tool_calls: int = Field(12, ge=0, description="Tool calls one run may make.")
    max_subquestions: int = Field(4, ge=1, description="Sub-questions kept from one split.")
    input_retries: int = Field(
        3, ge=1, description="Tries at a valid tool input (FLAT raises the temperature)."
    )
    retry_temperature_step: float = Field(
        0.3, ge=0, le=1, description="Temperature added on each FLAT input retry."
    )
    step_max_tokens: int = Field(96, ge=1, description="Tokens per decision-step completion.")
    run_timeout_s: float = Field(
        120.0, gt=0, description='A run still going after this answers "don\'t know".'
    )
    model_timeout_s: float = Field(60.0, gt=0, description="Timeout of one model call.")
    tool_timeout_s: float = Field(10.0, gt=0, description="Timeout of one tool HTTP call.")
    max_reply_bytes: int = Field(
        65536, ge=1, description="Tool replies larger than this are refused, not read."
    )
    reply_chars: int = Field(
        600, ge=16, description="Characters of a tool reply shown to the model."
    )
    require_json: bool = Field(True, description="Refuse tool replies that are not JSON.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts tools may call (`*.example.com` allowed); empty allows any public host.",
    )
    allow_private_networks: bool = Field(
        False,
        description="Let tools call loopback, private and link-local addresses (hosts in "
        "`allowed_hosts` may always).",
    )
    tool_ca_bundle: str | None = Field(
        None, description="CA bundle (PEM) for HTTPS tool calls; none means certifi's."
    )
    finetune: bool = Field(
        True, description="Record every decision step for distillation (`finetune` flag)."
    )
    model_url: str | None = Field(
        None, description="`/v1/complete` base URL agents call; none means this service."
    )
    pool_size: int = Field(2, ge=1, description="Agent actors in a pool.")
    runs_per_actor: int = Field(8, ge=1, description="Runs one agent actor works on at once.")
    actor_num_cpus: float = Field(0.05, ge=0, description="CPUs reserved per agent actor.")


class Config(BaseSettings):
    """Root of the configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    storage_path: str = Field(
        "~/.llmvm",
        description="Root for everything persisted: a folder, or an s3:// / gs:// URI.",
    )
    models: list[ModelConfig] = Field(
        default_factory=list, description="Base models the service hosts."
    )
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The HTTP service.")
    ray: RayConfig = Field(default_factory=RayConfig, description="How to join Ray.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The teacher.")
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="The distillation loop."
    )
    synthesis: SynthesisConfig = Field(
        default_factory=SynthesisConfig, description="Data synthesis."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Fine-tune defaults (per-run overridable)."
    )
    train_queue: TrainQueueConfig = Field(
        default_factory=TrainQueueConfig, description="Fine-tune queueing."
    )
    quotas: QuotaConfig = Field(default_factory=QuotaConfig, description="Per-tenant quotas.")
    train_limits: TrainLimitsConfig = Field(
        default_factory=TrainLimitsConfig, description="What API clients may ask of fine-tunes."
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="The fine-tune registry."
    )
    agents: AgentsConfig = Field(
        default_factory=AgentsConfig, description="The agents and their tool calls."
    )

    @model_validator(mode="after")
    def _unique_model_names(self) -> Config:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate names {dupes}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides and the TOML file arrive merged as init kwargs (see ``load_config``);
        # environment variables must beat the file, so they go first.
        return (env_settings, init_settings)

    def model(self, name: str) -> ModelConfig:
        """The model config called ``name`` (KeyError if none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data with every secret masked: ``SecretStr`` fields,
        and credentials inside URLs (``https://user:pass@host``, ``?token=...``), which
        ``teacher.base_url``, ``storage_path`` or ``agents.model_url`` may carry."""
        return _mask_urls(self.model_dump(mode="json"))  # SecretStr dumps as "**********"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the effective config: defaults < TOML file < ``LLMVM_*`` env < ``overrides``.

    ``path`` defaults to ``$LLMVM_CONFIG`` when set. Errors (a missing or malformed file, an
    unknown key, a value out of range) raise ``ConfigError`` naming every bad field.
    """
    path = path or os.environ.get(CONFIG_FILE_ENV)
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).expanduser().read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        config = Config(**data)
        if overrides:
            merged = _deep_merge(config.model_dump(mode="python"), overrides)
            config = Config.model_validate(_reveal(merged))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc
    return config


def parse_assignments(
    items: Iterable[str], option: str, *, as_json: bool = True, hint: str = ""
) -> dict[str, Any]:
    """Repeated ``--option KEY=VALUE`` items as a dict. With ``as_json`` a value is JSON when
    it parses (numbers, booleans, lists, tables) and the raw string otherwise. A malformed
    item raises ``ConfigError`` naming the option (``hint`` says what keys it takes)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE{hint}")
        value: Any = raw
        if as_json:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        out[key] = value
    return out


_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_URL_SECRET_QUERY = re.compile(
    r"(?P<key>[?&][a-z0-9_-]*(?:key|token|secret|password|signature|credential)[a-z0-9_-]*)="
    r"[^&#\s]*",
    re.IGNORECASE,
)


def _mask_urls(value: Any) -> Any:
    """``value`` with the user-info and secret-looking query values of every URL masked."""
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    if isinstance(value, str) and "://" in value:
        value = _URL_USERINFO.sub(r"\g<scheme>**********@", value)
        return _URL_SECRET_QUERY.sub(r"\g<key>=**********", value)
    return value


def _reveal(value: Any) -> Any:
    """Turn SecretStr values back into plain strings so a dump can be re-validated."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


# -- the generated reference (docs/configuration.md) -----------------------------------------

_REFERENCE_HEADER = """# Configuration reference

Generated from `llmvm_ray/config.py` by `llmvm config docs`; do not edit by hand (a test
fails when this file is stale).

Values come, in rising priority, from these defaults, a TOML file (`--config FILE` or
`$LLMVM_CONFIG`), environment variables (`LLMVM_` + the dotted key in capitals with `__` for
each dot, e.g. `LLMVM_SERVE__PORT=8000`; lists and tables as JSON) and command-line flags.
Unknown keys are errors. `llmvm config show` prints the effective configuration with secrets
masked.
"""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    for noise in ("typing.", "pydantic.types.", "llmvm_ray.config."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default_text(field: Any) -> str:
    if field.is_required():
        return "*required*"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "`****`"
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _section_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            continue  # documented as its own section
        rows.append(
            f"| `{key}` | {_type_name(annotation)} | {_default_text(field)} | "
            f"{field.description or ''} |"
        )
    return rows


def _sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    found: list[tuple[str, type[BaseModel]]] = [(prefix.rstrip("."), model)]
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _sections(annotation, f"{prefix}{name}.")
    return found


def render_reference() -> str:
    """The configuration reference as Markdown, generated from the models above."""
    out = [_REFERENCE_HEADER]
    tables: list[tuple[str, type[BaseModel]]] = _sections(Config)
    tables += _sections(ModelConfig, "models[].")
    tables.append(("models[].autoscaling", AutoscalingConfig))
    for title, model in tables:
        heading = title or "top level"
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        out.append(f"\n## `{heading}`\n\n{doc}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        out += _section_rows(model, f"{title}." if title else "")
    return "\n".join(out) + "\n"
