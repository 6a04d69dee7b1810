"""The ``confmeet`` command: a thin Typer + Rich layer over the appliance."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from appliance.settings import Settings

from .backup import backup_app
from .doctor import doctor
from . import install as install_cli, status as status_cli
from .loadtest import loadtest
from .models import models_app
from .node import node_app
from .options import ConfigOpt, DataDirOpt, console, fail, settings_from

app = typer.Typer(help="confmeet: self-hosted web meetings.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
config_app = typer.Typer(help="Show the configuration.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(config_app, name="config")
app.add_typer(backup_app, name="backup")
app.add_typer(models_app, name="models")
app.add_typer(node_app, name="node")
app.command("loadtest")(loadtest)
install_cli.register(app)
status_cli.register(app)
app.command("doctor")(doctor)


def run_with_stores(settings: Settings, work: Any) -> Any:
    """Open the stores, run ``work(stores)`` (a coroutine function), close them; errors become messages."""
    from appliance.stores import StoreUnavailable, open_stores

    async def go() -> Any:
        stores = await open_stores(settings)
        try:
            return await work(stores)
        finally:
            await stores.close()

    try:
        return asyncio.run(go())
    except StoreUnavailable as exc:
        fail(str(exc))


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on \\[default: 127.0.0.1].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on \\[default: 8800].")] = None,
) -> None:
    """Run the appliance in the foreground (Ctrl-C stops it cleanly)."""
    from appliance import logs
    from appliance.app import create_app

    settings = settings_from(config, data_dir=data_dir, host=host, port=port)
    os.umask(0o077)  # the database, documents, objects and secrets are for this user alone
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)
    except OSError as exc:
        fail(f"cannot use the data directory {settings.data_dir}: {exc.strerror or exc}; "
             "run as its owner or choose another with --data-dir")
    if (settings.data_dir / "restore-state.json").exists():
        fail("a restore was interrupted and the stores are half restored: finish it with "
             "'confmeet backup restore ARCHIVE --resume' (or start over with --force)")
    logs.configure(settings)

    async def check(stores: Any) -> None:
        return None

    run_with_stores(settings, check)  # clear errors before Sanic starts, migrations applied
    ssl = {"cert": settings.tls_cert, "key": settings.tls_key} if settings.tls_cert else None
    application = create_app(settings)

    @application.after_server_start
    async def announce(app: Any) -> None:
        console.print(f"confmeet is serving on [bold]{settings.base_url}[/]  (data: {settings.data_dir})")

    try:
        application.run(host=settings.host, port=settings.port, ssl=ssl, single_process=True,
                        access_log=False, motd=False, debug=False)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
             "choose another --port or stop what uses it")


@user_app.command("add")
def user_add(
    email: Annotated[str, typer.Argument(help="The user's e-mail address (their sign-in name).")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Display name.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from standard input.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a user account."""
    from appliance.accounts import create_user, new_user
    from appliance.errors import Conflict, Invalid

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        account = new_user(email, password, name, "admin" if admin else "member")
    except Invalid as exc:
        fail(exc.message)
    settings = settings_from(config, data_dir=data_dir)

    async def add(stores: Any) -> Any:
        return await create_user(stores.db, account.email, account.password, account.name, account.role)

    try:
        user = run_with_stores(settings, add)
    except Conflict as exc:
        fail(exc.message)
    console.print(f"created {user.role} [bold]{user.email}[/] (id {user.id})")


@user_app.command("list")
def user_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List user accounts."""
    settings = settings_from(config, data_dir=data_dir)

    async def rows(stores: Any) -> list[dict]:
        from appliance.stores.relational import User

        def fetch() -> list[dict]:
            return [{"id": u.id, "email": u.email, "name": u.name, "role": u.role, "active": u.active,
                     "created_at": u.created_at.isoformat() + "Z"}
                    for u in User.select().order_by(User.created_at)]

        return await stores.db.run(fetch)

    users = run_with_stores(settings, rows)
    if as_json:
        print(json.dumps(users, indent=2))
        return
    table = Table(title=f"{len(users)} user(s)")
    for column in ("email", "name", "role", "active", "created"):
        table.add_column(column)
    for u in users:
        table.add_row(u["email"], u["name"], u["role"], "yes" if u["active"] else "[red]disabled[/]",
                      u["created_at"][:19].replace("T", " "))
    console.print(table)


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print the effective settings (defaults, file, environment), secrets masked."""
    from appliance.settings import ensure_secrets

    settings = settings_from(config, data_dir=data_dir)
    try:
        ensure_secrets(settings)
    except OSError:
        pass  # an unreadable data dir leaves the secrets shown as "(not set)"
    values = settings.effective(mask_secrets=True)
    if as_json:
        print(json.dumps({"source": settings.source, "settings": values}, indent=2))
        return
    table = Table(title=f"confmeet settings (from {settings.source})")
    table.add_column("setting")
    table.add_column("value")
    for key, value in values.items():
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    console.print(table)


def main() -> None:
    app()
