"""LLM-VM's Python ``Client``, on llmvm-ray.

Same call shape as the original — ``Client(big_model, small_model, big_model_config,
small_model_config)`` and ``client.complete(prompt, context, ...)`` returning
``{"completion": ..., "status": 200}`` — plus the ``llmvm`` metadata (who answered, task id,
seed, latency, tokens). It talks to a running server (``url=...``) or, without one, starts an
embedded service on a local Ray from the model configs (``model_uri`` = hub id or folder).
Errors raise ``LLMVMClientError`` with the HTTP status instead of coming back as values.
"""

from __future__ import annotations

from typing import Any

import httpx

from llmvm_ray.config import Config, load_config

_LLMVM_GUIDED = {"choices": "guided_choice", "regex": "guided_regex", "type": "guided_type"}
"""LLM-VM's guided-output keywords and the request fields they map to."""


class LLMVMClientError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.param = param


class Client:
    def __init__(
        self,
        big_model: str = "teacher",
        small_model: str = "student",
        big_model_config: dict[str, Any] | None = None,
        small_model_config: dict[str, Any] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        config: Config | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.big_model = big_model
        self.small_model = small_model
        self._runner = None
        if url is None:
            url = self._start_embedded(
                config, big_model, small_model, big_model_config or {}, small_model_config or {}
            )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _start_embedded(
        self,
        config: Config | None,
        big_model: str,
        small_model: str,
        big_config: dict[str, Any],
        small_config: dict[str, Any],
    ) -> str:
        from llmvm_ray.serve.deploy import ServiceRunner

        config = config or load_config()
        models = [m.model_dump() for m in config.models]
        names = {m["name"] for m in models}
        for name, extra in ((big_model, big_config), (small_model, small_config)):
            if name not in names:
                if "model_uri" not in extra:
                    raise ValueError(
                        f"model '{name}' is not configured: give its model_uri in the "
                        "big_model_config / small_model_config"
                    )
                models.append({"name": name, **extra})
        config = load_config(
            overrides={
                "models": models,
                "teacher": {"model": big_model},
                "optimizer": {"student_model": small_model},
            }
        )
        self._runner = ServiceRunner(config).start()
        return self._runner.url

    def complete(
        self,
        prompt: str,
        context: str = "",
        openai_key: str | None = None,
        finetune: bool = False,
        data_synthesis: bool = False,
        temperature: float = 0,
        stoptoken: str | list[str] | None = None,
        tools: list[dict[str, Any]] | None = None,
        openai_kwargs: dict[str, Any] | None = None,
        hf_kwargs: dict[str, Any] | None = None,
        *,
        seed: int | None = None,
        max_tokens: int | None = None,
        **guided: Any,
    ) -> dict[str, Any]:
        """One optimizing completion. ``openai_kwargs`` / ``hf_kwargs`` may carry
        ``max_tokens``, ``top_p`` and ``seed``; ``guided`` takes ``guided_choice``,
        ``guided_regex``, ``guided_json`` or ``guided_type``, or LLM-VM's own names
        ``choices``, ``regex`` and ``type``."""
        extra = {**(hf_kwargs or {}), **(openai_kwargs or {})}
        guided = {_LLMVM_GUIDED.get(key, key): value for key, value in guided.items()}
        body: dict[str, Any] = {
            "prompt": prompt,
            "context": context,
            "openai_key": openai_key,
            "finetune": finetune,
            "data_synthesis": data_synthesis,
            "temperature": temperature,
            "stoptoken": stoptoken,
            "tools": tools,
            "seed": seed if seed is not None else extra.get("seed"),
            "max_tokens": max_tokens or extra.get("max_tokens"),
            "top_p": extra.get("top_p", 1.0),
            "big_model": self.big_model,
            "small_model": self.small_model,
            **guided,
        }
        response = self._http.post(
            "/v1/complete", json={k: v for k, v in body.items() if v is not None}
        )
        data = response.json()
        if response.status_code != 200:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            raise LLMVMClientError(
                response.status_code, error.get("message", response.text), error.get("param")
            )
        return data

    def tasks(self) -> list[dict[str, Any]]:
        response = self._http.get("/v1/tasks")
        response.raise_for_status()
        return response.json()["data"]

    def task(self, task_id: str) -> dict[str, Any]:
        response = self._http.get(f"/v1/tasks/{task_id}")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._http.close()
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
