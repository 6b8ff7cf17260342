"""The ``llmvm`` command, run as a user runs it (subprocesses of the installed script)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import API_KEY, free_port

LLMVM = [sys.executable, "-m", "llmvm_ray.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [*LLMVM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("serve", "complete", "config", "dev", "demo"):
        assert command in out.stdout


def test_config_show_masks_secrets(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[serve]\nport = 4000\napi_keys = ["sk-very-secret"]\n')
    out = run("config", "show", "--config", str(path))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["serve"]["port"] == 4000
    assert "sk-very-secret" not in out.stdout
    # Credentials inside URLs are masked too (user-info, secret-looking query values).
    path.write_text(
        'storage_path = "s3://AKIAEXAMPLE:s3cr3t@bucket/p?session_token=t0k3n&region=x"\n'
        '[teacher]\nbase_url = "https://bob:hunter2@api.example.com/v1?api_key=k3y"\n'
    )
    out = run("config", "show", "--config", str(path))
    assert out.returncode == 0, out.stderr
    for secret in ("AKIAEXAMPLE", "s3cr3t", "t0k3n", "hunter2", "k3y"):
        assert secret not in out.stdout, out.stdout
    shown = json.loads(out.stdout)
    assert shown["teacher"]["base_url"].startswith("https://**********@api.example.com/v1")
    assert shown["storage_path"].endswith("?session_token=**********&region=x")


def test_config_errors_exit_2_with_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[serve]\nport = -1\n")
    out = run("config", "show", "--config", str(path))
    assert out.returncode == 2 and "serve.port" in out.stderr


def test_config_docs_check_passes():
    out = run("config", "docs", "--check")
    assert out.returncode == 0, out.stderr


def test_dev_tiny_model_builds_a_loadable_folder(tmp_path):
    out = run("dev", "tiny-model", str(tmp_path / "m"), "--arch", "gpt2")
    assert out.returncode == 0, out.stderr
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.model_type == "gpt2"


def test_dev_tiny_model_with_task_reports_accuracy(tmp_path):
    out = run("dev", "tiny-model", str(tmp_path / "t"), "--task", "date", "--steps", "20")
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy:" in out.stdout
    bad = run("dev", "tiny-model", str(tmp_path / "u"), "--task", "nope")
    assert bad.returncode != 0 and "nope" in bad.stderr


@pytest.mark.ray
def test_complete_against_a_running_server(service):
    url, _ = service
    out = run(
        "complete",
        "hello",
        "--url",
        url,
        "--model",
        "tiny",
        "--max-tokens",
        "4",
        env={"OPENAI_API_KEY": API_KEY},
    )
    assert out.returncode == 0, out.stderr
    bad = run("complete", "hello", "--url", url, "--model", "nope", env={"OPENAI_API_KEY": API_KEY})
    assert bad.returncode == 1 and "does not exist" in bad.stderr


@pytest.mark.ray
def test_serve_starts_answers_and_stops_on_ctrl_c(tiny_llama, tmp_path):
    """`llmvm serve` starts its own local Ray, says where it serves, answers, and Ctrl+C
    shuts everything down with exit code 0."""
    port = free_port()
    proc = subprocess.Popen(
        [*LLMVM, "serve", "--model", f"tiny={tiny_llama}", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LLMVM_STORAGE_PATH": str(tmp_path)},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not any("llmvm is serving" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        assert any(url in line for line in lines)
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
            timeout=60,
        )
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "shutting down" in output
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_module_has_no_import_time_work():
    """Importing the package and its CLI must not import torch or Ray."""
    code = (
        "import sys, llmvm_ray, llmvm_ray.cli, llmvm_ray.config, llmvm_ray.protocol;"
        "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
