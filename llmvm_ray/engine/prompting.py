"""Turning text and chat messages into the token ids the model sees.

One place decides how a prompt is tokenized, so ``count_tokens``, ``validate`` and
``generate`` always agree on the prompt's length.
"""

from __future__ import annotations

from typing import Any

from llmvm_ray.errors import InvalidRequestError


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as a prompt.

    The tokenizer's special tokens (e.g. Llama's BOS) are added, unless the text already
    starts with the BOS string: a chat template renders BOS itself, and adding a second one
    shifts the model off its training distribution.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text for ``messages``, ending where the assistant's reply starts.

    Uses the tokenizer's chat template with ``add_generation_prompt=True``. A tokenizer
    without a template (base models, tiny test models) gets a plain fallback that any model
    can continue sensibly: one ``"<role>: <content>"`` line per message, then
    ``"assistant:"``.
    """
    for i, message in enumerate(messages):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise InvalidRequestError(
                f"messages[{i}] needs a string 'role' and a string 'content'", param="messages"
            )
    if not getattr(tokenizer, "chat_template", None):
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])
    try:
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # Jinja templates raise on e.g. non-alternating roles
        raise InvalidRequestError(
            f"the model's chat template rejected the messages: {exc}", param="messages"
        ) from exc
    return str(rendered)
