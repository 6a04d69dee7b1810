"""What the CLI's commands share: their consoles and the options several of them take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from appliance.settings import Settings, SettingsError, load_settings

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Exit statuses: 0 done; FAILED when the work ran and did not succeed, or was declined (an
# archive that does not verify, a model that does not import, "nothing was changed");
# MUST_FIX when something must be fixed before it can run (the settings, an argument, a store
# that does not answer, a step of an upgrade or install that failed).
FAILED = 1
MUST_FIX = 2


def fail(message: str, code: int = MUST_FIX) -> NoReturn:
    """Print ``error: message`` on standard error and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings file (TOML).",
                                                   envvar="CONFMEET_CONFIG")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where embedded stores keep data.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """The settings a command runs with (file, environment, ``overrides``); a bad file is a message."""
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        fail(str(exc))
