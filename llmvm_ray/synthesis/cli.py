"""``llmvm synth run``: a batch synthesis from this shell (the same run as the Ray job).

Mounted in the main CLI with ``app.add_typer(synth_app, name="synth")``. Worker actors need
Ray: the configured cluster, a running local one, or (``--start-ray``) one started here.
``--local`` runs requests in this process instead (a remote teacher only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llmvm_ray.config import load_config, parse_assignments
from llmvm_ray.errors import ConfigError, LLMVMError

synth_app = typer.Typer(
    help="Synthesize training examples with the teacher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(items: list[str]) -> dict[str, Any]:
    try:
        return parse_assignments(items, "--set", hint=" (a synthesis.* field)")
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from None


@synth_app.command("run")
def run(
    seeds: Annotated[str, typer.Argument(help="Seeds: Parquet file/folder or JSONL.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (resumable).")],
    target: Annotated[
        int | None, typer.Option(help="Examples per task (default: synthesis config).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker actors.")] = None,
    existing: Annotated[
        str | None, typer.Option(help="Dataset the new rows are deduped against.")
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: new).")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="No worker actors: run in this process.")
    ] = False,
    start_ray: Annotated[
        bool, typer.Option("--start-ray", help="Start a local Ray if none is configured.")
    ] = False,
    setting: Annotated[
        list[str] | None, typer.Option("--set", help="synthesis KEY=VALUE (repeatable).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
) -> None:
    """Synthesize examples for every task in SEEDS; print the funnel and why each stopped."""
    err = Console(stderr=True)
    overrides = _settings(setting or [])
    if workers:
        overrides["num_workers"] = workers
    try:
        cfg = load_config(config, {"synthesis": overrides} if overrides else None)
    except LLMVMError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    from llmvm_ray.synthesis.job import run_job

    if not local or cfg.teacher.base_url is None:
        from llmvm_ray.runtime import init_ray

        ray_config = cfg.ray
        if ray_config.address is None and not start_ray:
            ray_config = ray_config.model_copy(update={"address": "auto"})
        try:
            init_ray(ray_config)
        except ConnectionError as exc:
            err.print(f"[red]no Ray cluster ({exc}).[/red] Use --start-ray or --local.")
            raise typer.Exit(2) from None
    try:
        report = run_job(
            cfg,
            seeds,
            output,
            target=target,
            run_id=run_id,
            existing=existing,
            use_pool=not local,
        )
    except LLMVMError as exc:
        where = f" ({exc.param})" if exc.param else ""
        err.print(f"[red]{type(exc).__name__}{where}: {exc.message}[/red]")
        raise typer.Exit(2) from None
    out = Console()
    totals = report["totals"]
    out.print(
        " → ".join(
            f"{k} {totals[k]}" for k in ("requested", "generated", "parsed", "valid", "unique")
        )
        + f" → kept {totals['kept']}"
    )
    for task, outcome in report["tasks"].items():
        out.print(f"task {task}: {outcome['stop_reason']}")
    out.print(f"rows: {report['output']}")
    raise typer.Exit(0 if report["reached"] else 3)
