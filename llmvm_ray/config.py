"""The one typed configuration tree of llmvm-ray.

Every option of the project lives here exactly once, with its default and a one-line doc
(the field's ``description``). Values come, in rising priority, from the defaults, a TOML file
(``--config`` / ``LLMVM_CONFIG``), ``LLMVM_*`` environment variables (nested with ``__``, e.g.
``LLMVM_SERVE__PORT=8000``) and explicit overrides from the CLI. No other module parses env vars.

``docs/configuration.md`` is generated from this module (``llmvm config docs``); a test fails
when it is stale.
"""

from __future__ import annotations

import os
import tomllib
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
        ..., min_length=1, pattern=r"^[A-Za-z0-9._/-]+$",
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
        None, ge=1,
        description="Context length (prompt + completion); default: the model's own limit.",
    )
    default_max_tokens: int = Field(
        16, ge=1, description="Completion length when a request gives no `max_tokens`."
    )
    max_batch_size: int = Field(
        16, ge=1, description="Most sequences a replica decodes together in one batch."
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a replica waits to fill a batch before starting it."
    )
    num_replicas: int = Field(
        1, ge=1, description="Replicas when autoscaling is off."
    )
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Autoscaling bounds; when set, `num_replicas` is ignored."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
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
    max_stop_sequences: int = Field(4, ge=0, description="Most stop sequences per request.")
    max_n: int = Field(8, ge=1, description="Most choices (`n`) per request.")
    request_timeout_s: float = Field(
        300.0, gt=0, description="A request still unanswered after this gets a 504."
    )
    ingress_num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per ingress replica.")
    ingress_replicas: int = Field(1, ge=1, description="Ingress (HTTP API) replicas.")


class RayConfig(Section):
    """How the process joins Ray."""

    address: str | None = Field(
        None, description="Cluster to join (`auto`, `ray://...`); none starts a local Ray."
    )
    namespace: str = Field("llmvm", description="Ray namespace for named actors and apps.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a locally started Ray (default: all cores)."
    )
    include_dashboard: bool = Field(
        True, description="Run the dashboard with a local Ray (Ray Train's clean-up needs it)."
    )


class TeacherConfig(Section):
    """The big model that answers first and teaches the student (optimizer)."""

    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint; none means a model served here."
    )
    model: str = Field("gpt-4o-mini", description="Model name sent to the teacher endpoint.")
    api_key: SecretStr | None = Field(
        None, description="Teacher API key (a request's `openai_key` overrides it)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-call timeout toward the teacher.")
    max_retries: int = Field(3, ge=0, description="Retries with backoff on 429/5xx/timeouts.")
    max_concurrency: int = Field(16, ge=1, description="Teacher calls in flight at once.")


class OptimizerConfig(Section):
    """The distillation loop (LLM-VM's optimizer options)."""

    min_train_examples: int = Field(
        20, ge=1, description="Recorded examples before a task's first fine-tune."
    )
    max_train_examples: int = Field(
        2000, ge=1, description="Recording stops for a task after this many examples."
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
        """The effective config as plain data with every secret masked."""
        return self.model_dump(mode="json")  # SecretStr dumps as "**********"


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
