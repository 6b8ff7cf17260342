"""The optimizing request path and its endpoints, run inside the ingress.

For each request on ``model="llmvm"`` (``/v1/complete``, and ``/v1/completions`` or
``/v1/chat/completions`` naming it): compute the task, ask the optimizer actor who answers,
then call that model directly (teacher endpoint or student replica). A promoted task is
answered by the student alone; the teacher is consulted only for the sampled shadow share,
asynchronously, after the student's answer has gone out. Teacher answers of recording tasks
go to the optimizer actor. The actor decides; model calls happen here, so it never becomes
the throughput bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayActorError

from llmvm_ray.agents.service import AgentService, agent_payload
from llmvm_ray.config import Config
from llmvm_ray.engine.types import AdapterRef, GenerationRequest, SamplingParams
from llmvm_ray.errors import InvalidRequestError
from llmvm_ray.observability.metrics import ServeMetrics
from llmvm_ray.optimizer import scoring
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.protocol import (
    AgentRunRequest,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompleteRequest,
    CompleteResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    LLMVMMetadata,
    Usage,
    new_id,
    now,
)
from llmvm_ray.runtime import generate
from llmvm_ray.serve import openai_api as oa
from llmvm_ray.teachers import Teacher, TeacherCall, TeacherError, build_teacher

logger = logging.getLogger(__name__)

OPTIMIZING_MODEL = "llmvm"


@dataclass(frozen=True)
class OptimizeCall:
    """One optimizing request, whatever API it arrived on."""

    tenant: str
    context: str
    prompt: str
    params: SamplingParams
    finetune: bool
    teacher: str | None = None
    student: str | None = None
    api_key: str | None = None  # the teacher key from the request, never stored
    data_synthesis: bool = False  # synthesize more examples before the task's fine-tune

    def teacher_call(self) -> TeacherCall:
        return TeacherCall(self.context, self.prompt, self.params, self.api_key)


@dataclass(frozen=True)
class OptimizeResult:
    text: str
    finish_reason: str
    meta: LLMVMMetadata

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.meta.prompt_tokens,
            completion_tokens=self.meta.completion_tokens,
            total_tokens=self.meta.prompt_tokens + self.meta.completion_tokens,
        )


class OptimizingPath:
    """Routes each call to the teacher or the task's promoted student (see the module)."""

    def __init__(self, config: Config, replicas: dict[str, Any], optimizer: Any) -> None:
        self.config = config
        self.replicas = replicas
        self.optimizer = optimizer
        self._teachers: dict[str, Teacher] = {}
        self._background: set[asyncio.Task] = set()

    def teacher(self, name: str) -> Teacher:
        if name not in self._teachers:
            if not self.config.teacher.base_url and name not in self.replicas:
                raise InvalidRequestError(
                    f"teacher model '{name}' is not served here and no teacher.base_url is "
                    "configured",
                    param="big_model",
                )
            self._teachers[name] = build_teacher(self.config, name, handle=self.replicas.get(name))
        return self._teachers[name]

    def _student_handle(self, name: str) -> Any:
        if name not in self.replicas:
            raise InvalidRequestError(
                f"student model '{name}' is not one of the served models", param="small_model"
            )
        return self.replicas[name]

    async def complete(self, call: OptimizeCall) -> OptimizeResult:
        started = time.perf_counter()
        teacher_name = call.teacher or self.config.teacher.model
        student_name = call.student or self.config.optimizer.student_model
        teacher = self.teacher(teacher_name)
        student = self._student_handle(student_name)
        spec = TaskSpec.of(call.tenant, call.context, teacher_name, student_name, call.params)
        decision = await self.optimizer.route.remote(
            spec.to_dict(), call.finetune, call.data_synthesis
        )
        task_id = decision["task_id"]
        route = decision["route"]
        result = None
        if route == "student":
            adapter = AdapterRef(**decision["adapter"])
            # The student never sees the context: it learned to imply it.
            request = GenerationRequest(new_id("student"), call.prompt, call.params, adapter)
            try:
                result = await generate(student, request)
            except RayActorError:  # no student replica answers: the teacher still can
                logger.warning("task %s: student unavailable, the teacher answers", task_id)
                route = "teacher"
                self.optimizer.fallback.remote(task_id)
        if result is not None:
            choice = result.choices[0]
            self.optimizer.served.remote(
                task_id, "student", result.prompt_tokens, choice.completion_tokens
            )
            if decision["shadow"]:
                self._spawn(self._shadow(task_id, teacher, call, choice.text))
            text, finish_reason = choice.text, choice.finish_reason
            served = {"base_model": student_name, "adapter": adapter.name}
            tokens = (result.prompt_tokens, choice.completion_tokens)
        else:
            answer = await teacher.complete(call.teacher_call())
            self.optimizer.served.remote(
                task_id, "teacher", answer.prompt_tokens, answer.completion_tokens
            )
            if decision["record"]:
                # Awaited: an answer is only reported as recorded once the optimizer holds it.
                await self.optimizer.record.remote(
                    task_id, [_row(call, answer.text, "teacher", teacher_name)]
                )
            text, finish_reason = answer.text, answer.finish_reason
            served = {"base_model": teacher_name, "adapter": None}
            tokens = (answer.prompt_tokens, answer.completion_tokens)
        meta = LLMVMMetadata.since(
            started,
            model=OPTIMIZING_MODEL,
            served_by=route,
            seed=call.params.seed,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            task_id=task_id,
            **served,
        )
        return OptimizeResult(text, finish_reason, meta)

    async def _shadow(
        self, task_id: str, teacher: Teacher, call: OptimizeCall, student_text: str
    ) -> None:
        """Ask the teacher too, off the request path, and report whether they agree. The
        teacher's answer is also a fresh training row for a later retrain."""
        try:
            answer = await teacher.complete(call.teacher_call())
        except TeacherError as exc:
            logger.warning("shadow call for %s failed: %s", task_id, exc.message)
            return
        agree = scoring.agrees(
            self.config.optimizer.gate_metric, student_text, answer.text, call.params.guided
        )
        await self.optimizer.shadow_result.remote(task_id, agree)
        await self.optimizer.record.remote(
            task_id, [_row(call, answer.text, "shadow", teacher.name)]
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _row(call: OptimizeCall, completion: str, source: str, teacher: str) -> dict[str, Any]:
    """A recorded training row."""
    return {"prompt": call.prompt, "completion": completion, "source": source, "teacher": teacher}


class OptimizingEndpoints:
    """The endpoints whose answers go through the optimizer: ``/v1/complete`` (with
    ``tools``: the REBEL agent), ``model="llmvm"`` on completions and chat, agent runs, and
    the task views."""

    def __init__(
        self, config: Config, replicas: dict[str, Any], optimizer: Any, metrics: ServeMetrics
    ) -> None:
        self.config = config
        self.optimizer = optimizer
        self.metrics = metrics
        self.path = OptimizingPath(config, replicas, optimizer)
        self._agents: AgentService | None = None

    def agents(self) -> AgentService:
        if self._agents is None:
            self._agents = AgentService(self.config)
        return self._agents

    async def complete(
        self, request: CompleteRequest, tenant: str, api_key: str | None = None
    ) -> CompleteResponse:
        """LLM-VM's ``POST /v1/complete`` (with ``tools``: the REBEL agent answers)."""
        if request.tools:
            run, meta = await self.agents().complete(request, api_key)
            self.metrics.observe("complete", OPTIMIZING_MODEL, meta)
            return CompleteResponse(
                completion=run.answer, llmvm=meta, agent=run.model_dump(mode="json")
            )
        result = await self._optimize(
            request,
            tenant,
            request.context,
            request.prompt,
            finetune=request.finetune,
            data_synthesis=request.data_synthesis,
            teacher=request.big_model,
            student=request.small_model,
            api_key=request.openai_key,
        )
        self.metrics.observe("complete", OPTIMIZING_MODEL, result.meta)
        return CompleteResponse(
            completion=result.text, finish_reason=result.finish_reason, llmvm=result.meta
        )

    async def _optimize(
        self, request: Any, tenant: str, context: str, prompt: str, **flags: Any
    ) -> OptimizeResult:
        """One call on the optimizing path with ``request``'s sampling and guided fields;
        ``flags`` are the remaining ``OptimizeCall`` fields (finetune, teacher, ...).

        OpenAI's penalties and ``logit_bias`` are refused here rather than dropped: the
        optimizer's calls do not carry them, and a bias names token ids of one model's
        vocabulary while the teacher and the student are different models."""
        for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
            if getattr(request, name, None):  # LLM-VM's /v1/complete has none of them
                raise InvalidRequestError(
                    f"{name} is not available for the optimizing model", param=name
                )
        params = oa.sampling_params(
            request, self.config.optimizer.default_max_tokens, oa.seed_of(request.seed)
        )
        return await self.path.complete(
            OptimizeCall(tenant=tenant, context=context, prompt=prompt, params=params, **flags)
        )

    async def completion(self, request: CompletionRequest, tenant: str) -> CompletionResponse:
        """``/v1/completions`` with ``model="llmvm"``: the optimizing path, OpenAI-shaped."""
        if request.stream:
            raise InvalidRequestError(
                "streaming is not available for the optimizing model yet", param="stream"
            )
        if not isinstance(request.prompt, str) or request.n != 1:
            raise InvalidRequestError(
                "the optimizing model takes one prompt string and n=1", param="prompt"
            )
        result = await self._optimize(
            request,
            tenant,
            request.context or "",
            request.prompt,
            finetune=request.finetune,
            data_synthesis=request.data_synthesis,
        )
        self.metrics.observe("completions", OPTIMIZING_MODEL, result.meta)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=OPTIMIZING_MODEL,
            choices=[
                CompletionChoice(index=0, text=result.text, finish_reason=result.finish_reason)
            ],
            usage=result.usage,
            llmvm=result.meta,
        )

    async def chat(self, request: ChatCompletionRequest, tenant: str) -> ChatCompletionResponse:
        """``/v1/chat/completions`` with ``model="llmvm"``: system messages are the task's
        stable context, the one user message after them is the dynamic prompt."""
        if request.stream:
            raise InvalidRequestError(
                "streaming is not available for the optimizing model yet", param="stream"
            )
        if request.n != 1:
            raise InvalidRequestError("the optimizing model takes n=1", param="n")
        system = [m for m in request.messages if m.role in ("system", "developer")]
        turns = [m for m in request.messages if m.role not in ("system", "developer")]
        if len(turns) != 1 or turns[0].role != "user":
            raise InvalidRequestError(
                "the optimizing model takes system messages (the task's context) and then one "
                "user message (the dynamic prompt)",
                param="messages",
            )
        context = "\n".join(m.text() for m in system)
        if request.context is not None:
            context = request.context + context
        result = await self._optimize(
            request, tenant, context, turns[0].text(), finetune=request.finetune
        )
        self.metrics.observe("chat", OPTIMIZING_MODEL, result.meta)
        return ChatCompletionResponse(
            id=new_id("chatcmpl"),
            created=now(),
            model=OPTIMIZING_MODEL,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=result.text),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=result.usage,
            llmvm=result.meta,
        )

    async def agent_run(
        self, body: AgentRunRequest, tenant: str, api_key: str | None
    ) -> dict[str, Any]:
        """``POST /v1/agents/runs``: one run in the agent pool, answered with its trace."""
        return agent_payload(await self.agents().run(body, api_key))

    async def tasks(self, tenant: str) -> dict[str, Any]:
        return {"object": "list", "data": await self.optimizer.list_tasks.remote(tenant)}

    async def task(self, tenant: str, task_id: str) -> dict[str, Any]:
        return await self.optimizer.get_task.remote(tenant, task_id)
