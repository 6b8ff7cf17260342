"""Wire models of the HTTP API: OpenAI completions and chat (with stream chunks), the LLM-VM
``/v1/complete`` call, the error body and the ``llmvm`` metadata extension.

Request models validate everything that can be checked without the model (types, ranges,
counts); what needs the tokenizer (context length, regex/schema compilation) is checked by the
engine and arrives as ``InvalidRequestError`` naming the same field. Non-OpenAI fields
(``seed`` is OpenAI's own; ``guided_*`` follow vLLM's names) are accepted at the top level,
which is where the official ``openai`` client puts ``extra_body`` keys.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from llmvm_ray.limits import (
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_PENALTY,
    MAX_TEMPERATURE,
)

MAX_SEED = 2**63 - 1


class FieldError(ValueError):
    """A validation failure that knows which request field is at fault.

    Raised from model-level validators, where pydantic cannot tell the field; the HTTP edge
    reads ``param`` from the error context so the 400 body names it.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do (clients send extras such as
    # `user` or `metadata`); fields we know but do not implement are rejected explicitly below.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    include_usage: bool = False


class GuidedFields(_Request):
    """Guided-output extensions; at most one may be set."""

    guided_choice: list[str] | None = Field(
        None, description="The output is exactly one of these strings."
    )
    guided_regex: str | None = Field(None, description="The output matches this regex.")
    guided_json: dict[str, Any] | None = Field(
        None, description="The output is JSON valid under this JSON schema."
    )
    guided_type: Literal["integer", "float"] | None = Field(
        None, description="The output is a number of this type (LLM-VM's `type=`)."
    )

    @model_validator(mode="after")
    def _one_guide(self) -> GuidedFields:
        given = [
            name
            for name in ("guided_choice", "guided_regex", "guided_json", "guided_type")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise FieldError(
                given[1], f"give at most one of guided_choice/regex/json/type, got {given}"
            )
        if self.guided_choice is not None and (
            not self.guided_choice or any(c == "" for c in self.guided_choice)
        ):
            raise FieldError(
                "guided_choice", "guided_choice must be a non-empty list of non-empty strings"
            )
        return self


class SamplingFields(GuidedFields):
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) -> bias added to its logit, -100 to 100."
    )
    # Accepted for compatibility only at its neutral value.
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        """Keys must be token ids to be converted; the bounds (entries, bias range, ids in
        the vocabulary, no repeats) are the engine's ``check_params``."""
        for key in v or {}:
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses, and a
            # 5000-digit key exceeds int()'s limit; token ids fit in 10 digits.
            if not re.fullmatch(r"[0-9]{1,10}", key):
                raise ValueError(f"keys must be token ids, got {key[:32]!r}")
        return v

    @model_validator(mode="after")
    def _unsupported(self) -> SamplingFields:
        if self.logprobs not in (None, False, 0):
            raise FieldError("logprobs", "logprobs is not supported")
        return self

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as sorted ``(token id, bias)`` pairs (what the engine takes)."""
        return tuple(sorted((int(k), float(b)) for k, b in (self.logit_bias or {}).items()))

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(SamplingFields):
    model: str = Field(..., min_length=1)
    prompt: str | list[str]
    echo: StrictBool = False
    best_of: int | None = None
    suffix: str | None = None
    # Extensions for the optimizing model (`model="llmvm"`): the stable context of the task
    # and LLM-VM's flags. `prompt` is then the dynamic part only.
    context: str | None = None
    finetune: StrictBool = False
    data_synthesis: StrictBool = False

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        prompts = [v] if isinstance(v, str) else v
        if not prompts or any(p == "" for p in prompts):
            raise ValueError("prompt must be a non-empty string or list of non-empty strings")
        return v

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.best_of not in (None, 1):
            raise FieldError("best_of", "best_of is not supported")
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(BaseModel):
    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# OpenAI chat fields this server does not implement: refused when set, never ignored (a
# client sending `tools` must not silently get an answer that ignores them).
_UNSUPPORTED_CHAT_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "top_logprobs",
    "audio",
    "prediction",
    "web_search_options",
)


class ChatCompletionRequest(SamplingFields):
    model: str = Field(..., min_length=1)
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    # Extensions for the optimizing model (`model="llmvm"`): system messages are the task's
    # stable context (`context`, if given, goes before them), the user message the dynamic
    # prompt; `finetune` is LLM-VM's flag.
    context: str | None = None
    finetune: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _unsupported_chat(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _UNSUPPORTED_CHAT_FIELDS:
                if data.get(name) not in (None, [], False):
                    raise FieldError(name, f"{name} is not supported")
            if data.get("modalities") not in (None, ["text"]):
                raise FieldError("modalities", "only the text modality is supported")
        return data

    @model_validator(mode="after")
    def _format(self) -> ChatCompletionRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        rf = self.response_format
        if rf is not None and rf.type != "text":
            if self.guided_choice or self.guided_regex or self.guided_json or self.guided_type:
                raise FieldError(
                    "response_format", "response_format cannot be combined with guided_* fields"
                )
            if rf.type == "json_object":
                self.guided_json = {"type": "object"}
            else:
                if rf.json_schema is None:
                    raise FieldError(
                        "response_format.json_schema",
                        "response_format.json_schema is required for json_schema",
                    )
                self.guided_json = rf.json_schema.schema_ or {"type": "object"}
        return self


class LLMVMMetadata(BaseModel):
    """The documented extension object on every response: who answered and at what cost."""

    model: str = Field(description="The `model` the request named.")
    base_model: str = Field(description="The base model that ran.")
    adapter: str | None = Field(None, description="The LoRA adapter applied, if any.")
    served_by: Literal["base", "adapter", "teacher", "student"] = Field(
        description="Which kind of model produced the text."
    )
    seed: int = Field(description="The seed used; resend it to get the same text.")
    latency_ms: float = Field(description="Time inside the service, request to last token.")
    prompt_tokens: int
    completion_tokens: int
    task_id: str | None = Field(None, description="The optimizing task, when there is one.")

    @classmethod
    def since(cls, started: float, **fields: Any) -> LLMVMMetadata:
        """The metadata of a call that began at ``started`` (``time.perf_counter()``)."""
        return cls(latency_ms=round((time.perf_counter() - started) * 1000.0, 3), **fields)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    llmvm: LLMVMMetadata | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    llmvm: LLMVMMetadata


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    llmvm: LLMVMMetadata | None = None


class ToolSpec(BaseModel):
    """LLM-VM's tool format (used by the agents).

    Checked here so a bad tool is a 400 naming it: only http(s) URLs with a host, no
    credentials in the URL, parameter names that are plain identifiers, and no name both
    static and dynamic (the model must not be able to override a static value).
    """

    model_config = ConfigDict(extra="forbid")
    description: str = Field(..., min_length=1, max_length=2000)
    url: str = Field(..., min_length=1, max_length=2000)
    method: Literal["GET", "POST"] = "GET"
    static_params: dict[str, Any] = Field(default_factory=dict)
    dynamic_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("tool url must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("tool url must not carry credentials")
        if any(c in v for c in "\r\n\t "):
            raise ValueError("tool url must not contain whitespace")
        return v

    @model_validator(mode="after")
    def _params(self) -> ToolSpec:
        import re

        for name in (*self.static_params, *self.dynamic_params):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"tool parameter name {name!r} is not a plain identifier")
        both = sorted(set(self.static_params) & set(self.dynamic_params))
        if both:
            raise ValueError(f"tool parameters {both} are both static and dynamic")
        return self


class CompleteRequest(GuidedFields):
    """LLM-VM's ``POST /v1/complete`` body (plus ``seed``, ``max_tokens``, ``top_p`` and the
    per-request ``big_model`` / ``small_model`` of its Python client)."""

    prompt: str = Field(..., min_length=1, description="The dynamic prompt.")
    context: str = Field(..., description="The stable context: what defines the task.")
    openai_key: str | None = Field(None, description="Key for the teacher endpoint.")
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stoptoken: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    data_synthesis: StrictBool = False
    finetune: StrictBool = False
    tools: list[ToolSpec] | None = None
    big_model: str | None = Field(None, description="Teacher model (default from config).")
    small_model: str | None = Field(None, description="Student model (default from config).")

    @field_validator("stoptoken")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop tokens must be non-empty strings")
        return v

    def stop_list(self) -> list[str]:
        if self.stoptoken is None:
            return []
        return [self.stoptoken] if isinstance(self.stoptoken, str) else list(self.stoptoken)


class CompleteResponse(BaseModel):
    completion: str
    status: int = 200
    finish_reason: Literal["stop", "length"] | str = "stop"
    llmvm: LLMVMMetadata
    agent: dict[str, Any] | None = Field(
        None, description="With `tools`: the REBEL agent's full trace (an `AgentResult`)."
    )


class AgentRunRequest(_Request):
    """``POST /v1/agents/runs``: answer ``question`` with one of the agents and ``tools``."""

    agent: Literal["rebel", "backward", "flat"] = "rebel"
    question: str = Field(..., min_length=1)
    tools: list[ToolSpec] = Field(default_factory=list)
    big_model: str | None = Field(None, description="Teacher of the decision steps.")
    small_model: str | None = Field(None, description="Student of the decision steps.")
    finetune: StrictBool | None = Field(
        None, description="Record the decision steps for distillation (default: config)."
    )


# -- POST /v1/fine_tuning/jobs ------------------------------------------------------------------

Auto = Literal["auto"]


class FineTuneHyperparameters(BaseModel):
    """OpenAI's hyperparameters; an unknown one is refused, not ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    n_epochs: Auto | Annotated[int, Field(ge=1)] | None = None
    batch_size: Auto | Annotated[int, Field(ge=1)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0)] | None = None


class FineTuneSupervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: FineTuneHyperparameters | None = None


class FineTuneMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: FineTuneSupervised | None = None


class FineTuneExtension(BaseModel):
    """The ``llmvm`` object of a create-job body: any ``train.*`` field under
    ``hyperparameters`` (checked against ``TrainConfig`` by the fine-tune service), and the
    task the run belongs to."""

    model_config = ConfigDict(extra="forbid")
    hyperparameters: dict[str, Any] | None = None
    task_id: str | None = Field(None, min_length=1, max_length=128)
    context: str | None = None


class FineTuneJobRequest(_Request):
    """OpenAI's ``fine_tuning.jobs.create`` body (``train/openai_api.py`` maps it)."""

    model: str = Field(..., min_length=1)
    training_file: str = Field(..., min_length=1, description="Dataset path under storage_path.")
    validation_file: str | None = None
    hyperparameters: FineTuneHyperparameters | None = None
    method: FineTuneMethod | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    suffix: str | None = Field(None, max_length=64)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    llmvm: FineTuneExtension | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's bounds on ``metadata``."""
        if v is not None and len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
        for key, value in (v or {}).items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"keys take at most {MAX_METADATA_KEY_CHARS} characters, values "
                    f"{MAX_METADATA_VALUE_CHARS}"
                )
        return v

    @model_validator(mode="after")
    def _not_honoured(self) -> FineTuneJobRequest:
        if self.integrations:
            raise FieldError("integrations", "integrations are not supported")
        return self


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmvm"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, plus LLM-VM's ``status``/``resp`` so old clients still read it."""

    error: ErrorDetail
    status: int
    resp: str


# -- GET /v1/stats (observability) ------------------------------------------------------------


class StatsRequests(BaseModel):
    total: int = Field(description="Optimizing requests answered (teacher + student).")
    teacher: int = Field(description="Answered by the teacher.")
    student: int = Field(description="Answered by a promoted student.")
    shadow: int = Field(description="Extra teacher calls made to check students (shadow).")


class StatsTokens(BaseModel):
    prompt: int = Field(description="Prompt tokens of optimizing answers (in).")
    completion: int = Field(description="Completion tokens of optimizing answers (out).")
    total: int


class StatsShare(BaseModel):
    teacher: float | None = Field(description="Share of answers by the teacher; none if 0 answers.")
    student: float | None = Field(description="Share of answers by students; none if 0 answers.")


class StatsTasks(BaseModel):
    total: int
    by_route: dict[str, int] = Field(description="Tasks currently routed to teacher / student.")
    examples_recorded: int
    examples_synthesized: int
    rollbacks: int


class StatsFinetunes(BaseModel):
    total: int
    by_state: dict[str, int] = Field(description="Fine-tunes by status (every status listed).")


class StatsResponse(BaseModel):
    """The caller's (tenant's) summary, the same whichever replica answers: read from the
    optimizer actor and the registry, which hold the durable, cluster-wide counts."""

    object: Literal["llmvm.stats"] = "llmvm.stats"
    optimizer_enabled: bool
    requests: StatsRequests
    tokens: StatsTokens
    share: StatsShare
    teacher_calls_saved: int
    teacher_tokens_saved: int
    estimated_cost_saved: float = Field(
        description="teacher_tokens_saved / 1000 x optimizer.teacher_cost_per_1k_tokens."
    )
    teacher_cost_per_1k_tokens: float
    tasks: StatsTasks
    fine_tunes: StatsFinetunes
