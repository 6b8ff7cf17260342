"""``llmvm agent ...``: run one question with an agent, evaluate agents, train step models.

Mounted in the main CLI as ``llmvm agent``. ``run`` sends the question to a server's
``/v1/agents/runs`` (the run happens in the server's actor pool, its model calls on the
optimizing path), or runs it here with ``--local-model`` / ``--openai-url``. ``eval`` scores
agents on the compositional-celebrities questions with the knowledge-tool server on loopback,
in a pool of Ray actors, against the service, any OpenAI-compatible model or a local step
model (``train-steps`` makes one offline in minutes on CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

agent_app = typer.Typer(
    help="Agents (REBEL, backward chaining, FLAT): run, evaluate, train step models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

AGENT_NAMES = ("rebel", "backward", "flat")
DataOption = Annotated[
    Path | None,
    typer.Option(help="compositional_celebrities.json (default: data/agents/ of the repo)."),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: $LLMVM_CONFIG).")
]


def _err() -> Console:
    return Console(stderr=True)


def _load(path: Path | None) -> Any:
    from llmvm_ray.config import load_config
    from llmvm_ray.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        _err().print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


def _check_agent(name: str) -> str:
    if name not in AGENT_NAMES:
        raise typer.BadParameter(f"unknown agent {name!r}; choose one of {', '.join(AGENT_NAMES)}")
    return name


def _kb(data: Path | None) -> Any:
    from llmvm_ray.agents.bench.knowledge import DEFAULT_DATA, KnowledgeBase

    path = data or DEFAULT_DATA
    if not path.exists():
        raise typer.BadParameter(f"data file not found: {path}")
    return KnowledgeBase.load(path)


def _model_spec(
    url: str | None,
    api_key: str | None,
    local_model: Path | None,
    openai_url: str | None,
    openai_model: str | None,
) -> Any:
    from llmvm_ray.agents.model import ModelSpec

    if local_model is not None:
        if not local_model.exists():
            raise typer.BadParameter(f"--local-model folder not found: {local_model}")
        return ModelSpec(kind="local", path=str(local_model.resolve()))
    if openai_url:
        if not openai_model:
            raise typer.BadParameter("--openai-url needs --openai-model")
        return ModelSpec(kind="openai", url=openai_url, model=openai_model, api_key=api_key)
    return ModelSpec(kind="service", url=url or "http://127.0.0.1:3002", api_key=api_key)


@agent_app.command("run")
def run(
    question: Annotated[str, typer.Argument(help="The question.")],
    agent: Annotated[str, typer.Option(help="rebel, backward or flat.")] = "rebel",
    tools: Annotated[
        Path | None, typer.Option(help="JSON file: a list of LLM-VM tool objects.")
    ] = None,
    knowledge: Annotated[
        bool, typer.Option(help="Use the knowledge-tool server (started here, on loopback).")
    ] = False,
    data: DataOption = None,
    url: Annotated[str, typer.Option(help="llmvm server base URL.")] = "http://127.0.0.1:3002",
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", help="API key.")] = None,
    local_model: Annotated[
        Path | None, typer.Option(help="Run here with this local step model.")
    ] = None,
    openai_url: Annotated[
        str | None, typer.Option(help="Run here against this OpenAI-compatible /v1 URL.")
    ] = None,
    openai_model: Annotated[str | None, typer.Option(help="Model name for --openai-url.")] = None,
    trace: Annotated[bool, typer.Option(help="Print the full trace as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Answer one question with an agent and print the answer (and its trace)."""
    import contextlib

    import httpx

    from llmvm_ray.agents.tools import parse_tools

    _check_agent(agent)
    tool_list: list[dict[str, Any]] = []
    if tools is not None:
        try:
            tool_list = [t.model_dump() for t in parse_tools(json.loads(tools.read_text()))]
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--tools {tools}: {exc}") from None
    with contextlib.ExitStack() as stack:
        if knowledge:
            from llmvm_ray.agents.bench.knowledge import KnowledgeServer

            server = stack.enter_context(KnowledgeServer(_kb(data)))
            tool_list += [t.model_dump() for t in server.tools()]
        if local_model is None and openai_url is None:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            try:
                response = httpx.post(
                    url.rstrip("/") + "/v1/agents/runs",
                    json={"agent": agent, "question": question, "tools": tool_list},
                    headers=headers,
                    timeout=600,
                )
            except httpx.HTTPError as exc:
                _err().print(f"[red]cannot reach {url}: {exc}[/red]")
                raise typer.Exit(1) from None
            if response.status_code != 200:
                _err().print(f"[red]error {response.status_code}:[/red] {response.text}")
                raise typer.Exit(1)
            result = response.json()
        else:
            from llmvm_ray.agents.api import run_agent

            spec = _model_spec(None, api_key, local_model, openai_url, openai_model)
            agents_config = _load(config).agents
            if knowledge:  # the knowledge-tool server started above listens on loopback
                agents_config = agents_config.model_copy(update={"allow_private_networks": True})
            result = run_agent(
                question, tool_list, model=spec, agent=agent, config=agents_config
            ).model_dump(mode="json")
    print(result["answer"])
    _err().print(
        f"[dim]{result['status']}"
        + (f" ({result['reason']})" if result.get("reason") else "")
        + f", {len(result['model_calls'])} model calls, {len(result['tool_calls'])} tool calls,"
        f" {result['latency_ms']:.0f} ms[/dim]"
    )
    if trace:
        print(json.dumps(result, indent=2, ensure_ascii=False))


@agent_app.command("eval")
def evaluate(
    agent: Annotated[
        list[str] | None, typer.Option(help="Agent(s) to score (repeatable; default all).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="llmvm server: model calls via its /v1/complete.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", help="API key.")] = None,
    local_model: Annotated[
        Path | None, typer.Option(help="A local step model (llmvm agent train-steps).")
    ] = None,
    openai_url: Annotated[
        str | None, typer.Option(help="Any OpenAI-compatible /v1 URL (plain LLM).")
    ] = None,
    openai_model: Annotated[str | None, typer.Option(help="Model name for --openai-url.")] = None,
    per_category: Annotated[
        int, typer.Option(help="Questions per category (12 categories); 0 = all.")
    ] = 10,
    people: Annotated[
        str, typer.Option(help="heldout (not seen by train-steps), train or all.")
    ] = "heldout",
    seed: Annotated[int, typer.Option(help="Sampling seed of the questions.")] = 0,
    pool_size: Annotated[int | None, typer.Option(help="Agent actors.")] = None,
    runs_per_actor: Annotated[int | None, typer.Option(help="Runs per actor at once.")] = None,
    data: DataOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the full report (JSON) here.")] = None,
    config: ConfigOption = None,
) -> None:
    """Score agents on the multi-hop questions: accuracy per category, calls, latency."""
    from llmvm_ray.agents.bench.runner import evaluate as run_eval
    from llmvm_ray.agents.bench.runner import format_report, select_questions
    from llmvm_ray.runtime import init_ray

    names = [_check_agent(a) for a in (agent or list(AGENT_NAMES))]
    if people not in ("heldout", "train", "all"):
        raise typer.BadParameter("--people must be heldout, train or all")
    if url is None and local_model is None and openai_url is None:
        raise typer.BadParameter("give a model: --url, --local-model or --openai-url")
    cfg = _load(config)
    spec = _model_spec(url, api_key, local_model, openai_url, openai_model)
    kb = _kb(data)
    heldout = {"heldout": True, "train": False, "all": None}[people]
    questions = select_questions(kb, per_category or None, heldout=heldout, seed=seed)
    init_ray(cfg.ray)
    reports = []
    console = _err()
    for name in names:
        with console.status(f"{name}: 0/{len(questions)}") as status:

            def progress(done: int, total: int, _: Any, name: str = name) -> None:
                status.update(f"{name}: {done}/{total}")

            report = run_eval(
                name,
                questions,
                spec,
                cfg.agents,
                kb=kb,
                pool_size=pool_size,
                runs_per_actor=runs_per_actor,
                progress=progress,
            )
        reports.append(report)
        print(format_report(report), flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(reports, indent=2, ensure_ascii=False))
        console.print(f"wrote {out}")


@agent_app.command("train-steps")
def train_steps(
    out_dir: Annotated[Path, typer.Argument(help="Where the step model goes.")],
    steps: Annotated[int, typer.Option(help="Training steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    eval_n: Annotated[int, typer.Option(help="Held-out step examples scored at the end.")] = 200,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay to 10 %).")] = 2e-3,
    resume: Annotated[
        bool, typer.Option(help="Fine-tune the model already in OUT_DIR further.")
    ] = False,
    data: DataOption = None,
    config: ConfigOption = None,
) -> None:
    """Train a tiny model on the agents' decision steps (training people only), offline,
    through the fine-tune pipeline (Parquet dataset, Ray Train, registry); Ctrl+C cancels."""
    from llmvm_ray.agents.bench.finetune import train_step_model
    from llmvm_ray.errors import LLMVMError
    from llmvm_ray.runtime import init_ray

    if resume and not (out_dir / "agent_steps.json").exists():
        raise typer.BadParameter(f"no step model to resume in {out_dir}")
    cfg = _load(config)
    kb = _kb(data)
    init_ray(cfg.ray)
    console = _err()
    try:
        info = train_step_model(
            out_dir,
            kb,
            cfg,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            eval_n=eval_n,
            lr=lr,
            resume=resume,
            echo=lambda line: console.print(line, markup=False),
        )
    except LLMVMError as exc:
        where = f" ({exc.param})" if exc.param else ""
        console.print(f"[red]{type(exc).__name__}{where}: {exc.message}[/red]")
        raise typer.Exit(1) from None
    print(json.dumps(info, indent=2))
