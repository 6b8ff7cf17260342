"""Prompt templates for asking a teacher for new examples, per model family.

Chat models take a system message and a user turn; completion models take one text that
they continue, so their templates end exactly where the examples should start. Each family
has several built-in wordings (*variants*); a run rotates through them so that one phrasing's
bias (always the same kind of example) does not dominate the data, and every row records
the variant that produced it. Users override the wordings with ``synthesis.prompt_variants``
(``str.format`` templates with ``{context}``, ``{examples}``, ``{n}`` and ``{format}``) and
the chat system message with ``synthesis.system_prompt``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

from llmvm_ray.errors import InvalidRequestError

Family = Literal["completion", "chat"]
FIELDS = frozenset({"context", "examples", "n", "format"})

SYSTEM_PROMPT = (
    "You write training data. You answer with new examples only, in exactly the format "
    "asked for, with no commentary."
)

_COMPLETION_VARIANTS = (
    "Task: {context}\nExamples:\n{examples}\nWrite {n} new, different examples of this task "
    "{format}.\n",
    "Below are examples of a task.\nTask: {context}\n{examples}\nHere are {n} more examples "
    "of the same task, all different from the ones above, {format}:\n",
    "{context}\nKnown examples:\n{examples}\nNew examples ({n}, varied inputs, correct "
    "outputs) {format}:\n",
)

_CHAT_VARIANTS = (
    "The task: {context}\n\nExamples:\n{examples}\n\nWrite {n} new, different examples of "
    "this task {format}.",
    "I need more training data for this task: {context}\n\nHere is what it looks like:\n"
    "{examples}\n\nGive me {n} new examples with varied inputs and correct outputs, {format}.",
    "Study these examples of a task ({context}):\n{examples}\n\nNow invent {n} fresh ones "
    "that are not copies of the above, {format}.",
)

BUILTIN_VARIANTS: dict[str, tuple[str, ...]] = {
    "completion": _COMPLETION_VARIANTS,
    "chat": _CHAT_VARIANTS,
}

NO_CONTEXT = "(see the examples)"


@dataclass(frozen=True)
class Rendered:
    """One teacher request's text: ``system`` is the chat system message (empty for
    completion models, whose whole prompt is ``prompt``)."""

    system: str
    prompt: str
    template: str  # which variant, e.g. "completion/1" or "custom/0"


def check_template(template: str, index: int = 0) -> None:
    """Refuse templates with unknown or unparseable ``{fields}`` before any teacher call."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise InvalidRequestError(
            f"prompt_variants[{index}] is not a valid template: {exc}", param="prompt_variants"
        ) from exc
    unknown = names - FIELDS
    if unknown or "examples" not in names:
        raise InvalidRequestError(
            f"prompt_variants[{index}] must use {{examples}} and only {sorted(FIELDS)}; "
            f"found {sorted(names)}",
            param="prompt_variants",
        )


@dataclass(frozen=True)
class TemplateSet:
    """The variants of one family (built-in or the user's) and the chat system message."""

    family: Family
    variants: tuple[str, ...]
    names: tuple[str, ...]
    system: str

    @classmethod
    def build(
        cls, family: Family, custom: list[str] | None = None, system: str | None = None
    ) -> TemplateSet:
        if custom:
            for i, template in enumerate(custom):
                check_template(template, i)
            variants = tuple(custom)
            names = tuple(f"custom/{i}" for i in range(len(custom)))
        else:
            variants = BUILTIN_VARIANTS[family]
            names = tuple(f"{family}/{i}" for i in range(len(variants)))
        return cls(family, variants, names, system if system is not None else SYSTEM_PROMPT)

    def render(self, variant: int, context: str, examples: str, n: int, fmt: str) -> Rendered:
        i = variant % len(self.variants)
        text = self.variants[i].format(
            context=context.strip() or NO_CONTEXT, examples=examples, n=n, format=fmt
        )
        system = self.system if self.family == "chat" else ""
        return Rendered(system=system, prompt=text, template=self.names[i])


def resolve_family(family: str, teacher_api: str) -> Family:
    """``auto`` follows the teacher's API: chat endpoints get chat templates."""
    if family == "auto":
        return "chat" if teacher_api == "chat" else "completion"
    if family not in BUILTIN_VARIANTS:
        raise InvalidRequestError(f"unknown template family {family!r}", param="family")
    return family  # type: ignore[return-value]
