"""The optimizing request path, run inside the ingress.

For each request: compute the task, ask the optimizer actor who answers, then call that model
directly (teacher endpoint or student replica). A promoted task is answered by the student
alone; the teacher is consulted only for the sampled shadow share, asynchronously, after the
student's answer has gone out. Teacher answers of recording tasks go to the optimizer actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.engine.teacher import (
    OpenAITeacher,
    Teacher,
    TeacherAnswer,
    TeacherCall,
    TeacherError,
)
from llmvm_ray.engine.types import AdapterRef, GenerationRequest, GuidedSpec, SamplingParams
from llmvm_ray.errors import InvalidRequestError, LLMVMError
from llmvm_ray.optimizer import scoring
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.protocol import LLMVMMetadata, new_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeCall:
    """One optimizing request, whatever API it arrived on."""

    tenant: str
    context: str
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int
    guided: GuidedSpec | None
    finetune: bool
    teacher: str | None = None
    student: str | None = None
    api_key: str | None = None  # the teacher key from the request, never stored
    data_synthesis: bool = False  # synthesize more examples before the task's fine-tune


@dataclass(frozen=True)
class OptimizeResult:
    text: str
    finish_reason: str
    meta: LLMVMMetadata


def _sampling(call: TeacherCall | OptimizeCall) -> SamplingParams:
    """The generation settings of a call (both call types carry the same ones)."""
    return SamplingParams(
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        top_p=call.top_p,
        stop=call.stop,
        seed=call.seed,
        guided=call.guided,
    )


class LocalTeacher:
    """A teacher model hosted by this Serve app, behind the same interface as a remote one."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self._handle = handle

    async def complete(self, call: TeacherCall) -> TeacherAnswer:
        started = time.perf_counter()
        params = _sampling(call)
        try:
            result = await self._handle.generate.remote(
                GenerationRequest(new_id("teacher"), call.context + call.prompt, params)
            )
        except LLMVMError:
            raise
        except Exception as exc:
            raise TeacherError(f"teacher '{self.name}' failed: {type(exc).__name__}") from exc
        choice = result.choices[0]
        return TeacherAnswer(
            text=choice.text,
            finish_reason=choice.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=choice.completion_tokens,
            latency_s=time.perf_counter() - started,
            model=self.name,
        )


class OptimizingService:
    def __init__(self, config: Config, replicas: dict[str, Any], optimizer: Any) -> None:
        self.config = config
        self.replicas = replicas
        self.optimizer = optimizer
        self._teachers: dict[str, Teacher] = {}
        self._background: set[asyncio.Task] = set()

    def teacher(self, name: str) -> Teacher:
        if name not in self._teachers:
            t = self.config.teacher
            if t.base_url:
                self._teachers[name] = OpenAITeacher(
                    base_url=t.base_url,
                    model=name,
                    api_key=t.api_key.get_secret_value() if t.api_key else None,
                    api=t.api,
                    timeout_s=t.timeout_s,
                    max_retries=t.max_retries,
                    max_concurrency=t.max_concurrency,
                )
            elif name in self.replicas:
                self._teachers[name] = LocalTeacher(name, self.replicas[name])
            else:
                raise InvalidRequestError(
                    f"teacher model '{name}' is not served here and no teacher.base_url is "
                    "configured",
                    param="big_model",
                )
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
        spec = TaskSpec(
            tenant=call.tenant,
            context=call.context,
            teacher=teacher_name,
            student=student_name,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            guided=call.guided,
        )
        decision = await self.optimizer.route.remote(
            spec.to_dict(), call.finetune, call.data_synthesis
        )
        task_id = decision["task_id"]
        if decision["route"] == "student":
            adapter = AdapterRef(**decision["adapter"])
            params = _sampling(call)
            # The student never sees the context: it learned to imply it.
            result = await student.generate.remote(
                GenerationRequest(new_id("student"), call.prompt, params, adapter)
            )
            choice = result.choices[0]
            self.optimizer.served.remote(
                task_id, "student", result.prompt_tokens, choice.completion_tokens
            )
            if decision["shadow"]:
                self._spawn(self._shadow(task_id, teacher, call, choice.text))
            return _answer(
                choice.text,
                choice.finish_reason,
                call,
                started,
                task_id,
                base_model=student_name,
                adapter=adapter.name,
                served_by="student",
                prompt_tokens=result.prompt_tokens,
                completion_tokens=choice.completion_tokens,
            )

        answer = await teacher.complete(self._teacher_call(call))
        self.optimizer.served.remote(
            task_id, "teacher", answer.prompt_tokens, answer.completion_tokens
        )
        if decision["record"]:
            # Awaited: an answer is only reported as recorded once the optimizer holds it.
            await self.optimizer.record.remote(
                task_id,
                [
                    {
                        "prompt": call.prompt,
                        "completion": answer.text,
                        "source": "teacher",
                        "teacher": teacher_name,
                    }
                ],
            )
        return _answer(
            answer.text,
            answer.finish_reason,
            call,
            started,
            task_id,
            base_model=teacher_name,
            adapter=None,
            served_by="teacher",
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
        )

    def _teacher_call(self, call: OptimizeCall) -> TeacherCall:
        return TeacherCall(
            context=call.context,
            prompt=call.prompt,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            seed=call.seed,
            guided=call.guided,
            api_key=call.api_key,
        )

    async def _shadow(
        self, task_id: str, teacher: Teacher, call: OptimizeCall, student_text: str
    ) -> None:
        """Ask the teacher too, off the request path, and report whether they agree. The
        teacher's answer is also a fresh training row for a later retrain."""
        try:
            answer = await teacher.complete(self._teacher_call(call))
        except TeacherError as exc:
            logger.warning("shadow call for %s failed: %s", task_id, exc.message)
            return
        agree = scoring.agrees(
            self.config.optimizer.gate_metric, student_text, answer.text, call.guided
        )
        await self.optimizer.shadow_result.remote(task_id, agree)
        await self.optimizer.record.remote(
            task_id,
            [
                {
                    "prompt": call.prompt,
                    "completion": answer.text,
                    "source": "shadow",
                    "teacher": teacher.name,
                }
            ],
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _answer(
    text: str,
    finish_reason: str,
    call: OptimizeCall,
    started: float,
    task_id: str,
    **meta: Any,
) -> OptimizeResult:
    """The result with its ``llmvm`` metadata (who answered, seed, latency, tokens)."""
    return OptimizeResult(
        text,
        finish_reason,
        LLMVMMetadata(
            model="llmvm",
            seed=call.seed,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            task_id=task_id,
            **meta,
        ),
    )
