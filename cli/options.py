"""What the CLI's commands share: their consoles and the options several of them take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings file (TOML).",
                                                   envvar="CONFMEET_CONFIG")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where embedded stores keep data.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
