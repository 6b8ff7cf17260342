"""``llmvm finetune ...``: start, list, show and cancel fine-tunes.

Mounted in the main CLI with ``app.add_typer(finetune_app, name="finetune")``; also runs
alone as ``python -m llmvm_ray.train.cli``. Without ``--wait`` a run needs a cluster that
outlives this command (``ray start --head``, or ``ray.address`` in the config); with
``--wait`` a local Ray is started if none is configured, and Ctrl+C cancels the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from llmvm_ray.config import Config, load_config, parse_assignments
from llmvm_ray.errors import ConfigError, LLMVMError

finetune_app = typer.Typer(
    help="Fine-tune student adapters on Ray Train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: $LLMVM_CONFIG).")
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to use (default: ray.address, else 'auto')."),
]


def _err() -> Console:
    return Console(stderr=True)


def _config(path: Path | None, address: str | None) -> Config:
    try:
        config = load_config(path)
    except LLMVMError as exc:
        _err().print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    if address:
        config.ray.address = address
    return config


def _try_connect(config: Config, start_local: bool) -> str | None:
    """Join the configured cluster or a running local one (starting one only if allowed).

    Returns None when connected, else why not.
    """
    from llmvm_ray.runtime import init_ray

    ray_config = config.ray
    if ray_config.address is None and not start_local:
        ray_config = ray_config.model_copy(update={"address": "auto"})
    try:
        init_ray(ray_config)
    except ConnectionError as exc:
        return str(exc)
    return None


def _connect(config: Config, start_local: bool) -> None:
    why = _try_connect(config, start_local)
    if why is not None:
        _err().print(
            f"[red]no Ray cluster to join ({why}).[/red] Start one with "
            "`ray start --head`, set ray.address, or use --wait to train in this process."
        )
        raise typer.Exit(2)


def _service(config: Config) -> Any:
    from llmvm_ray.train.service import FinetuneService

    return FinetuneService(config)


def _fail(exc: LLMVMError) -> typer.Exit:
    where = f" ({exc.param})" if exc.param else ""
    _err().print(f"[red]{type(exc).__name__}{where}: {exc.message}[/red]")
    return typer.Exit(1)


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, lists, tables)."""
    try:
        return parse_assignments(items, "--param")
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from None


@finetune_app.command()
def start(
    dataset: Annotated[
        str, typer.Argument(help="Parquet file or folder of prompt/completion rows.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Base model: configured name, folder or hub id.")
    ],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Hyperparameter KEY=VALUE (any train.* field)."),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant that owns the run.")] = "default",
    task_id: Annotated[str | None, typer.Option(help="Task the adapter is for.")] = None,
    context: Annotated[str | None, typer.Option(help="The task's stable context.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow until done; Ctrl+C cancels the run.")
    ] = False,
    config: ConfigOption = None,
    address: AddressOption = None,
) -> None:
    """Start a fine-tune; print its id (and, with --wait, its progress)."""
    from llmvm_ray.train.follow import EXIT_CODES, follow

    cfg = _config(config, address)
    hyperparameters = _parse_params(param or [])
    _connect(cfg, start_local=wait)
    service = _service(cfg)
    try:
        run = service.create(
            dataset=dataset,
            base_model=model,
            tenant=tenant,
            task_id=task_id,
            context=context,
            hyperparameters=hyperparameters,
            origin="cli",
            detached=not wait,  # a foreground run lives and dies with this command
        )
    except LLMVMError as exc:
        raise _fail(exc) from None
    typer.echo(run.id)
    if not wait:
        return
    console = _err()
    final = follow(service, run.id, echo=lambda line: console.print(line, markup=False))
    raise typer.Exit(EXIT_CODES.get(final.status, 1))


@finetune_app.command("list")
def list_runs(
    task_id: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    limit: Annotated[int, typer.Option(help="Most runs shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOption = None,
    address: AddressOption = None,
) -> None:
    """List fine-tunes, newest first."""
    cfg = _config(config, address)
    runs = _runs(cfg, task_id=task_id, status=status, tenant=tenant, limit=limit)
    if as_json:
        for run in runs:
            typer.echo(run.model_dump_json())
        return
    table = Table()
    table.add_column("id", no_wrap=True)  # the one column people copy from
    for name in ("status", "tenant", "task", "base model", "step", "exact match", "age"):
        table.add_column(name)
    for run in runs:
        p = run.progress
        table.add_row(
            run.id,
            str(run.status) + (" (cancelling)" if _cancelling(run) else ""),
            run.tenant,
            run.task_id or "-",
            Path(run.base_model).name or run.base_model,
            f"{p.step}/{p.total_steps}" if p.total_steps else "-",
            f"{run.metrics['exact_match']:.3f}" if "exact_match" in run.metrics else "-",
            f"{time.time() - run.created_at:.0f}s",
        )
    Console().print(table)


@finetune_app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Fine-tune id.")],
    config: ConfigOption = None,
    address: AddressOption = None,
) -> None:
    """Print one fine-tune's full record as JSON."""
    cfg = _config(config, address)
    if _try_connect(cfg, start_local=False) is None:
        try:
            run = _service(cfg).get(run_id)
        except LLMVMError as exc:
            raise _fail(exc) from None
    else:
        matches = [r for r in _runs_from_store(cfg) if r.id == run_id]
        if not matches:
            _err().print(f"[red]NotFoundError: no fine-tune {run_id!r}[/red]")
            raise typer.Exit(1)
        run = matches[0]
    typer.echo(run.model_dump_json(indent=2))


@finetune_app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="Fine-tune id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is CANCELLED.")] = False,
    config: ConfigOption = None,
    address: AddressOption = None,
) -> None:
    """Cancel a queued or running fine-tune (its last checkpoint is kept)."""
    from llmvm_ray.train.follow import describe

    cfg = _config(config, address)
    _connect(cfg, start_local=False)
    service = _service(cfg)
    try:
        run = service.cancel(run_id)
    except LLMVMError as exc:
        raise _fail(exc) from None
    typer.echo(describe(run))
    if wait:
        typer.echo(describe(service.wait(run_id)))


def _cancelling(run: Any) -> bool:
    return run.cancel_requested_at is not None and not run.status.terminal


def _runs(cfg: Config, **filters: Any) -> list[Any]:
    """From the registry when a cluster is up; else read-only from the durable store."""
    if _try_connect(cfg, start_local=False) is not None:
        return _runs_from_store(cfg, **filters)
    try:
        return _service(cfg).list(**filters)
    except LLMVMError as exc:
        raise _fail(exc) from None


def _runs_from_store(cfg: Config, **filters: Any) -> list[Any]:
    from llmvm_ray.registry.store import RunStore
    from llmvm_ray.store.fs import Storage

    _err().print("(no Ray cluster: read from storage; live runs may be stale)")
    runs = sorted(
        RunStore(Storage.from_uri(cfg.storage_path)).load_all().values(),
        key=lambda r: r.created_at,
        reverse=True,
    )
    for key in ("task_id", "tenant"):
        if filters.get(key):
            runs = [r for r in runs if getattr(r, key) == filters[key]]
    if filters.get("status"):
        runs = [r for r in runs if r.status == filters["status"].upper()]
    return runs[: filters["limit"]] if filters.get("limit") else runs


if __name__ == "__main__":
    finetune_app()
