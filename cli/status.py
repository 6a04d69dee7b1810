"""``confmeet status``: every component in one table, each asked over its own protocol (the
probes: ``appliance.machine.probes``).

Only the settings file is needed (a non-root user with read access to it can run this); when the
install record and the Docker Engine are readable too, each container's own state is added.

Exit status: 0 every component up, 1 something degraded, 2 something down.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from appliance.machine.probes import Probe, collect, overall
from appliance.settings import DEFAULT_CONFIG, SettingsError, load_settings

from .options import console, err, fail

STATE_STYLE = {"up": "green", "degraded": "yellow", "down": "bold red", "n/a": "dim"}
EXIT_CODES = {"up": 0, "n/a": 0, "degraded": 1, "down": 2}


def render(probes: list[Probe], source: str) -> Table:
    table = Table(title=f"confmeet status ({source})")
    for column in ("component", "state", "version", "ms", "detail"):
        table.add_column(column, justify="right" if column == "ms" else "left")
    for p in probes:
        style = STATE_STYLE[p.state]
        table.add_row(p.component, f"[{style}]{p.state}[/]", p.version or "-",
                      f"{p.ms:.1f}" if p.ms is not None else "-", p.detail)
    return table


def status(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings file (TOML).",
                                                   envvar="CONFMEET_CONFIG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Every component with its state, version and response time (exit 0 up, 1 degraded, 2 down)."""
    path = (config or DEFAULT_CONFIG).absolute()
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        fail(str(exc))
    except PermissionError:
        fail(f"cannot read {path}: run as root, or give your user read access to it")
    if not path.exists() and config is None:
        err.print(f"[yellow]note:[/] {path} does not exist: showing the embedded defaults "
                  "(run 'confmeet install', or pass --config)")
    probes = collect(settings, path)
    state = overall(probes)
    if as_json:
        print(json.dumps({"state": state, "config": str(path),
                          "components": [asdict(p) for p in probes]}, indent=2))
    else:
        console.print(render(probes, settings.source))
        style = STATE_STYLE[state]
        down = [p.component for p in probes if p.state in ("down", "degraded")]
        console.print(f"overall: [{style}]{state}[/]" + (f" ({', '.join(down)})" if down else ""))
    raise typer.Exit(EXIT_CODES[state])


def register(app: typer.Typer) -> None:
    app.command("status")(status)
