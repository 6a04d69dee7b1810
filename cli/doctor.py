"""``confmeet doctor``: the operator's check of an installed appliance (like ``bbb-conf --check``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def doctor(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings file (TOML).",
                                                   envvar="CONFMEET_CONFIG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    models: Annotated[Optional[Path], typer.Option(
        "--models", help="Triton's model repository (default: DATA_DIR/model_repository).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each network check.", min=0.1)] = 5.0,
) -> None:
    """Look for potential problems and print each with its fix.

    Exit code 0: none; 1: warnings only; 2: at least one failure.
    """
    from appliance.machine.doctor import DoctorOptions, diagnose, problems
    from appliance.machine.preflight import exit_code, render_findings

    findings = diagnose(config, DoctorOptions(timeout=timeout, model_repository=models))
    found = problems(findings)
    code = exit_code(findings)
    if as_json:
        print(json.dumps({"exit_code": code, "problems": [asdict(f) for f in found],
                          "checks": [asdict(f) for f in findings]}, indent=2))
        raise typer.Exit(code)
    console = Console(soft_wrap=True)
    console.print(render_findings(findings, title="confmeet doctor"))
    if not found:
        console.print("[green]No potential problems found.[/]")
        raise typer.Exit(code)
    console.print(f"\n[bold]{len(found)} potential problem(s):[/]")
    for number, finding in enumerate(found, 1):
        style = "bold red" if finding.status == "fail" else "yellow"
        console.print(f"{number}. [{style}]{finding.status}[/] {finding.check}: {finding.detail}\n"
                      f"   [bold]fix:[/] {finding.fix}")
    raise typer.Exit(code)
