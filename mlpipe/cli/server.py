"""`mlpipe server up|down|status|url`: the managed local Prefect server (API and UI) under MLPIPE_HOME."""

from __future__ import annotations

from contextlib import nullcontext

import typer

from mlpipe import prefect_api
from mlpipe.cli.common import console
from mlpipe.settings import Settings

server_app = typer.Typer(
    help="The local Prefect server (API and UI) that mlpipe starts on demand under MLPIPE_HOME.",
    no_args_is_help=True,
)


def _configured() -> str | None:
    """PREFECT_API_URL as the flows see it (the environment, or the active Prefect profile)."""
    return prefect_api.configured_url()


@server_app.command()
def up() -> None:
    """Start the managed server if it is not running (else reuse it); print where its UI is."""
    settings = Settings()
    configured = _configured()
    if configured:
        console.print(
            f"PREFECT_API_URL is set: flows use {configured}; no local server started", soft_wrap=True
        )
        return
    started = prefect_api.running(settings) is None
    with console.status("starting the local Prefect server") if started else nullcontext():
        server = prefect_api.ensure_server(settings)
    _describe(server, settings, "started" if started else "already running")


@server_app.command()
def down() -> None:
    """Stop the managed server (flows start it again when they need it)."""
    stopped = prefect_api.stop_server(Settings())
    if stopped is None:
        console.print("the local Prefect server was not running")
    else:
        console.print(f"stopped the local Prefect server (pid {stopped.pid}, {stopped.url})", soft_wrap=True)


@server_app.command()
def status() -> None:
    """Whether the managed server runs (exit 1 if not), its pid, API, UI and log."""
    settings = Settings()
    configured = _configured()
    if configured:
        console.print(f"PREFECT_API_URL is set: flows use {configured}, not the local server", soft_wrap=True)
    server = prefect_api.running(settings)
    if server is None:
        recorded = prefect_api.recorded(settings)
        was = f" (last at {recorded.url}, pid {recorded.pid})" if recorded else ""
        console.print(
            f"the local Prefect server is not running{was}; `mlpipe server up` starts it", soft_wrap=True
        )
        raise typer.Exit(1)
    _describe(server, settings, "running")


@server_app.command()
def url() -> None:
    """Print the API URL flows use (PREFECT_API_URL, else the managed server's, started if needed)."""
    print(_configured() or prefect_api.ensure_server(Settings()).url)


def _describe(server: prefect_api.ManagedServer, settings: Settings, state: str) -> None:
    console.print(f"local Prefect server {state} (pid {server.pid})", highlight=False)
    console.print(f"  API: {server.url}", highlight=False, soft_wrap=True)
    console.print(f"  UI:  {server.ui_url}", highlight=False, soft_wrap=True)
    console.print(f"  log: {prefect_api.log_path(settings)}", highlight=False, soft_wrap=True)
