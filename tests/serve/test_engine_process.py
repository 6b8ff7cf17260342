"""A Serve app whose replica runs its engine in a child process (``engine_process = "on"``,
the default on CUDA), checked against the session's in-process app with the official client:
same seeded texts, streaming, adapters, bad input as 400s, a health check that follows the
child, and no child left behind when the app goes away."""

from __future__ import annotations

import os
import signal
import time

import openai
import psutil
import pytest

from tests.conftest import API_KEY, plain_serving_config

pytestmark = pytest.mark.ray

APP = "test-engine-process"
PROMPT = "Once upon a time"


class ProcessApp:
    def __init__(self, runner, client) -> None:
        self.runner = runner
        self.client = client

    def info(self) -> dict:
        from ray import serve

        from llmvm_ray.runtime import deployment_name

        name = deployment_name(self.runner.config.models[0])
        return serve.get_deployment_handle(name, APP).info.remote().result()


@pytest.fixture(scope="module")
def app(ray_session, serve_port, tiny_llama, adapters, tmp_path_factory):
    from llmvm_ray.serve.deploy import ServiceRunner

    storage = tmp_path_factory.mktemp("process-storage")
    config = plain_serving_config(
        storage, serve_port, tiny_llama, adapters, APP, f"/{APP}", engine_process="on"
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    client = openai.OpenAI(base_url=f"{runner.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    yield ProcessApp(runner, client)
    runner.stop()


def test_answers_like_the_in_process_replica(app, client):
    info = app.info()
    assert psutil.Process(info["engine_pid"]).ppid() == info["pid"]
    for model in ("tiny", "tiny:a1"):
        kwargs = dict(model=model, prompt=PROMPT, max_tokens=12, seed=7)
        expected = client.completions.create(**kwargs).choices[0].text
        assert app.client.completions.create(**kwargs).choices[0].text == expected
        streamed = app.client.completions.create(**kwargs, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    messages = [{"role": "user", "content": "hi"}]
    kwargs = dict(model="tiny", messages=messages, max_tokens=6, seed=1)
    assert (
        app.client.chat.completions.create(**kwargs).choices[0].message.content
        == client.chat.completions.create(**kwargs).choices[0].message.content
    )


def test_bad_input_is_still_a_400_naming_the_field(app):
    with pytest.raises(openai.BadRequestError) as info:
        app.client.completions.create(model="tiny", prompt="hi", max_tokens=100_000)
    assert info.value.body["param"] == "max_tokens"


def test_a_dead_engine_answers_503_until_serve_replaces_the_replica(app):
    before = app.info()
    os.kill(before["engine_pid"], signal.SIGKILL)
    with pytest.raises(openai.APIStatusError) as info:
        app.client.completions.create(model="tiny", prompt="hi", max_tokens=4)
    assert info.value.status_code == 503
    # Serve's health check fails on the dead engine and starts a new replica.
    deadline = time.monotonic() + 120
    while True:
        try:
            app.client.completions.create(model="tiny", prompt="hi", max_tokens=4)
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503, exc
            assert time.monotonic() < deadline, "the replica was never replaced"
            time.sleep(1)
    after = app.info()
    assert after["pid"] != before["pid"]
    assert psutil.Process(after["engine_pid"]).ppid() == after["pid"]


def test_stopping_the_app_stops_its_engine(app):
    engine_pid = app.info()["engine_pid"]
    app.runner.stop()
    deadline = time.monotonic() + 60
    while psutil.pid_exists(engine_pid) and psutil.Process(engine_pid).status() != "zombie":
        assert time.monotonic() < deadline, "the engine process outlived its app"
        time.sleep(0.2)
