"""The ``llmvm`` command.

Sub-commands only use the package's public pieces (config, runtime, serve builder, dev,
the official ``openai`` client); heavy imports happen inside commands so ``llmvm --help``
stays instant.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llmvm_ray.agents.cli import agent_app
from llmvm_ray.config import Config, load_config, render_reference
from llmvm_ray.errors import ConfigError, DeployError
from llmvm_ray.synthesis.cli import synth_app
from llmvm_ray.train.cli import finetune_app

app = typer.Typer(
    help="llmvm-ray: an LLM virtual machine on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
dev_app = typer.Typer(help="Developer tools (tiny offline models).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dev_app, name="dev")
app.add_typer(finetune_app, name="finetune")
docs_app = typer.Typer(help="Generate the published docs artifacts.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
app.add_typer(agent_app, name="agent")
app.add_typer(synth_app, name="synth")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $LLMVM_CONFIG)."),
]


def _console() -> Console:
    return Console(stderr=True)


def _load(config_path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        _console().print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


def _parse_models(specs: list[str]) -> list[dict[str, Any]]:
    """``NAME=URI`` or ``URI`` (named after the folder) → model config entries."""
    models = []
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep:
            uri, name = spec, Path(spec.rstrip("/")).name
        models.append({"name": name, "model_uri": uri})
    return models


def _parse_adapters(specs: list[str], models: list[dict[str, Any]]) -> None:
    """``MODEL:ADAPTER=PATH`` entries merged into ``models`` (in place)."""
    by_name = {m["name"]: m for m in models}
    for spec in specs:
        key, sep, path = spec.partition("=")
        model, colon, adapter = key.partition(":")
        if not sep or not colon or model not in by_name:
            raise typer.BadParameter(
                f"--adapter {spec!r}: expected MODEL:NAME=PATH with MODEL given by --model"
            )
        by_name[model].setdefault("adapters", {})[adapter] = path


@app.command()
def serve(
    config: ConfigOption = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Serve a model: NAME=URI or URI (repeatable)."),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="LoRA adapter MODEL:NAME=PATH (repeatable)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join; default starts a local Ray.")
    ] = None,
) -> None:
    """Serve the configured models behind the OpenAI-compatible API until Ctrl+C."""
    overrides: dict[str, Any] = {}
    if model:
        models = _parse_models(model)
        _parse_adapters(adapter or [], models)
        overrides["models"] = models
    elif adapter:
        raise typer.BadParameter("--adapter needs --model (or put adapters in the config file)")
    serve_overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if serve_overrides:
        overrides["serve"] = serve_overrides
    if address:
        overrides["ray"] = {"address": address}
    cfg = _load(config, overrides)
    console = _console()
    from llmvm_ray.serve.deploy import ServiceRunner

    stop = _install_stop_handlers()
    runner = ServiceRunner(
        cfg, echo=lambda line: console.print(line, markup=False), should_stop=stop.is_set
    )
    try:
        runner.start()
    except (ConfigError, DeployError) as exc:
        console.print(f"[red]{exc.message}[/red]", highlight=False)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    try:
        if not stop.is_set():
            console.print(f"[green]llmvm is serving[/green] at {runner.url}")
            for url in runner.direct_urls():
                console.print(f"  direct ingress (same API, no proxy hop): {url}")
            for m in cfg.models:
                names = [m.name] + [f"{m.name}:{a}" for a in m.adapters]
                console.print(f"  models: {', '.join(names)}")
            console.print("Press Ctrl+C to stop.")
        while not stop.wait(0.5):
            pass
        console.print("shutting down...")
    finally:
        runner.stop()


def _install_stop_handlers() -> threading.Event:
    """The first Ctrl+C (or SIGTERM) asks for a clean shutdown, even while still starting;
    a second one interrupts whatever is running."""
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    return stop


@app.command()
def complete(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    model: Annotated[str | None, typer.Option(help="Model id (default: the first served).")] = None,
    url: Annotated[str, typer.Option(help="Server base URL.")] = "http://127.0.0.1:3002",
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="API key.")] = "none",
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    chat: Annotated[bool, typer.Option(help="Use the chat endpoint.")] = False,
    stream: Annotated[bool, typer.Option(help="Stream tokens as they arrive.")] = False,
) -> None:
    """One completion from a running server, through the official openai client."""
    import openai

    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key)
    try:
        model = model or client.models.list().data[0].id
        kwargs: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        if chat:
            messages = [{"role": "user", "content": prompt}]
            if stream:
                chunks = client.chat.completions.create(messages=messages, stream=True, **kwargs)
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        sys.stdout.write(chunk.choices[0].delta.content)
                        sys.stdout.flush()
                print()
                return
            response = client.chat.completions.create(messages=messages, **kwargs)
            print(response.choices[0].message.content)
        else:
            if stream:
                for chunk in client.completions.create(prompt=prompt, stream=True, **kwargs):
                    if chunk.choices:
                        sys.stdout.write(chunk.choices[0].text)
                        sys.stdout.flush()
                print()
                return
            response = client.completions.create(prompt=prompt, **kwargs)
            print(response.choices[0].text)
        meta = getattr(response, "llmvm", None)
        if meta:
            _console().print(f"[dim]{json.dumps(meta)}[/dim]")
    except openai.APIError as exc:
        _console().print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (secrets masked) as JSON."""
    print(json.dumps(_load(config).masked(), indent=2))


@config_app.command("docs")
def config_docs(
    output: Annotated[Path, typer.Option(help="Where to write.")] = Path("docs/configuration.md"),
    check: Annotated[bool, typer.Option(help="Fail if the file is stale.")] = False,
) -> None:
    """Generate the configuration reference from the config models."""
    text = render_reference()
    if check:
        if not output.exists() or output.read_text() != text:
            _console().print(f"[red]{output} is stale: run `llmvm config docs`[/red]")
            raise typer.Exit(1)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    _console().print(f"wrote {output}")


@docs_app.command("openapi")
def docs_openapi(
    output: Annotated[Path, typer.Option(help="Where to write.")] = Path("docs/openapi.json"),
    check: Annotated[bool, typer.Option(help="Fail if the file is stale.")] = False,
) -> None:
    """Export the HTTP API's OpenAPI document (from the FastAPI app itself)."""
    from llmvm_ray.serve.openapi import render

    text = render()
    if check:
        if not output.exists() or output.read_text() != text:
            _console().print(f"[red]{output} is stale: run `llmvm docs openapi`[/red]")
            raise typer.Exit(1)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    _console().print(f"wrote {output}")


@dev_app.command("tiny-model")
def dev_tiny_model(
    directory: Annotated[Path, typer.Argument(help="Output folder (a normal HF model folder).")],
    arch: Annotated[str, typer.Option(help="llama or gpt2.")] = "llama",
    task: Annotated[
        str | None, typer.Option(help="Also train it on a synthetic task (date, reverse, sort).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps with --task (default: the task's own).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Build a tiny offline model (no downloads); optionally make it a competent teacher."""
    from llmvm_ray.dev import tiny
    from llmvm_ray.dev.tasks import get_task

    console = _console()
    if arch not in ("llama", "gpt2"):
        raise typer.BadParameter("--arch must be llama or gpt2")
    if task is None:
        path = tiny.build_tiny_model(directory, arch=arch, seed=seed)
        console.print(f"built an untrained tiny {arch} model in {path}")
        return
    try:
        task_obj = get_task(task)
    except KeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    total = steps or task_obj.teacher_steps
    with console.status(f"training on '{task}'") as status:

        def progress(step: int, loss: float) -> None:
            status.update(f"training on '{task}': step {step}/{total}, loss {loss:.3f}")

        accuracy = tiny.make_teacher(
            directory, task_obj, arch=arch, steps=total, seed=seed, progress=progress
        )
    console.print(f"trained a tiny {arch} model on '{task}' in {directory}")
    print(f"held-out accuracy: {accuracy:.1%}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where models and data go.")] = Path("demo-output"),
    port: Annotated[int, typer.Option(help="HTTP port for the demo server.")] = 3002,
) -> None:
    """Run the whole thing offline on tiny local models, with visible progress."""
    from llmvm_ray.demo import run_demo

    raise typer.Exit(run_demo(workdir, port, _console()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
