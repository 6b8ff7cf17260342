"""Loading a causal LM and its tokenizer from a hub id or a local folder.

Kept apart from generation so the rest of the engine sees one plain value (``LoadedModel``)
with every fact it needs already resolved: the device, the EOS ids, the pad id, the
context length. Nothing here runs at import time; ``torch`` and ``transformers`` are
imported inside ``load_model``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from llmvm_ray.config import ModelConfig

logger = logging.getLogger(__name__)

# Tokenizers that know no limit report a huge sentinel (int(1e30)) as model_max_length.
_UNSET_TOKENIZER_LIMIT = 10**9
# Context length used when neither the config, the model nor the tokenizer give one.
_FALLBACK_MAX_MODEL_LEN = 2048


@dataclass
class LoadedModel:
    """A model ready for generation plus the facts about it the engine relies on."""

    model: Any  # a transformers PreTrainedModel (later possibly wrapped in a PeftModel)
    tokenizer: Any  # a transformers fast tokenizer (class TokenizersBackend in v5)
    device: torch.device
    eos_token_ids: tuple[int, ...]  # every id that ends a completion (tokenizer + model config)
    pad_token_id: int  # used for left padding only; rows are masked, so any id would do
    vocab_size: int  # width of the logits (may exceed len(tokenizer) when embeddings are padded)
    max_model_len: int  # prompt + completion tokens one sequence may hold


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU (half precision is slow and lossy there) and bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def load_model(config: ModelConfig) -> LoadedModel:
    """Load ``config.model_uri`` (hub id or folder) in eval mode on the configured device.

    The model's own ``generation_config`` sampling defaults (temperature, top_p, repetition
    penalty, ...) are replaced by a neutral one: every sampling choice is made per row by the
    engine's processors, and a hub default applied to the whole batch would break the
    "same seed, same text" contract.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    common: dict[str, Any] = {
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
    }
    tokenizer = AutoTokenizer.from_pretrained(config.model_uri, **common)
    # device_map puts the weights straight on the device instead of loading to CPU first.
    model = AutoModelForCausalLM.from_pretrained(
        config.model_uri, dtype=dtype, device_map=str(device), **common
    )
    model.eval()

    eos_ids = _eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else 0
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=list(eos_ids) or None,
        pad_token_id=pad_id,
    )
    output_embeddings = model.get_output_embeddings()
    vocab_size = (
        int(output_embeddings.weight.shape[0])
        if output_embeddings is not None
        else int(model.config.vocab_size)
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        eos_token_ids=eos_ids,
        pad_token_id=int(pad_id),
        vocab_size=vocab_size,
        max_model_len=_max_model_len(config.max_model_len, model, tokenizer),
    )


def _eos_token_ids(tokenizer: Any, model: Any) -> tuple[int, ...]:
    """EOS ids from the tokenizer and the model's generation config (chat models often add
    an end-of-turn id there), tokenizer's first so ``[0]`` is the canonical one."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates.extend(gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos])
    for candidate in candidates:
        if candidate is not None and int(candidate) not in ids:
            ids.append(int(candidate))
    return tuple(ids)


def _max_model_len(configured: int | None, model: Any, tokenizer: Any) -> int:
    """The configured length, capped at what the model can address; else the model's own."""
    model_limit = getattr(model.config, "max_position_embeddings", None)
    if model_limit is None:
        tok_limit = getattr(tokenizer, "model_max_length", None)
        if tok_limit is not None and tok_limit < _UNSET_TOKENIZER_LIMIT:
            model_limit = int(tok_limit)
    if configured is None:
        return int(model_limit or _FALLBACK_MAX_MODEL_LEN)
    if model_limit is not None and configured > model_limit:
        logger.warning(
            "max_model_len %d exceeds the model's %d positions; using %d",
            configured,
            model_limit,
            model_limit,
        )
        return int(model_limit)
    return configured
