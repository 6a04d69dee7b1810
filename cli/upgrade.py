"""``confmeet upgrade``, ``confmeet rollback`` and ``confmeet migrate``.

``upgrade`` puts a new release beside the running one and switches to it, with a backup first
and an automatic way back when the new release does not come up (appliance/machine/upgrade.py);
``rollback`` undoes the last upgrade; ``migrate`` brings the database schema up to date (what
``serve`` does at its start), and is how an upgrade runs the new release's migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.machine import release
from appliance.machine.upgrade import Host, Outcome, UpgradeError, plan_rollback, release_source
from appliance.machine.upgrade import rollback as roll_back
from appliance.machine.upgrade import upgrade as run_upgrade

from .options import FAILED, ConfigOpt, DataDirOpt, JsonOpt, console, err, fail

RootOpt = Annotated[Path, typer.Option(help="The directory tree given to install --root.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds the started release has to answer /readyz.")]


def stepper(quiet: bool) -> Callable[[str], contextlib.AbstractContextManager[Callable[[str], None]]]:
    """One spinner with the elapsed time per step (nothing with --json)."""

    @contextlib.contextmanager
    def step(what: str) -> Iterator[Callable[[str], None]]:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=False, disable=quiet) as progress:
            task = progress.add_task(what, total=1)
            try:
                yield lambda message: progress.update(task, description=f"{what}: {message[:110]}")
            except BaseException:
                progress.update(task, description=f"{what}: [red]failed[/]")
                raise
            progress.update(task, completed=1, description=f"{what}: [green]done[/]")

    return step


def report(outcome: Outcome, title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        table = Table(title=title)
        table.add_column("step")
        table.add_column("result", overflow="fold")
        for what, result in outcome.steps:
            table.add_row(what, result)
        console.print(table)
        for note in outcome.notes:
            console.print(f"  {note}", highlight=False)
    if not outcome.ok:
        err.print(f"[bold red]{title} failed:[/] {outcome.error}", highlight=False)
        raise typer.Exit(2)


def _host(root: Path) -> Host:
    from appliance.machine.deploy import Layout

    try:
        return Host(Layout(root.absolute()))
    except UpgradeError as exc:
        fail(str(exc))


def _new_version(source: Path) -> str:
    if source.name.endswith(".whl"):
        return source.name.split("-")[1] if source.name.count("-") >= 2 else "?"
    from appliance.machine.images import ImageError, read_manifest

    try:
        return read_manifest(source).confmeet_version
    except ImageError as exc:
        fail(str(exc))


def upgrade(
    source: Annotated[Path, typer.Argument(help="A confmeet wheel (confmeet-VERSION-*.whl) or an "
                                                "offline bundle ('confmeet bundle create').", show_default=False)],
    wheelhouse: Annotated[Optional[Path], typer.Option(help="The new release's dependencies from this "
                                                            "directory instead of the package index (a bundle "
                                                            "brings its own).")] = None,
    backup_to: Annotated[Optional[str], typer.Option(help="Where the backup taken before the migration goes: a "
                                                          "directory or s3://BUCKET/PREFIX \\[default: "
                                                          "DATA_DIR/backups].", show_default=False)] = None,
    timeout: TimeoutOpt = 120,
    yes: YesOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (needs --yes).")] = False,
    root: RootOpt = Path("/"),
) -> None:
    """Install a new release beside the running one, back up, migrate, switch and restart; go
    back automatically when it does not come up."""
    if as_json and not yes:
        fail("--json cannot ask for confirmation: add --yes")
    host = _host(root)
    try:
        old = host.current
    except UpgradeError as exc:
        fail(str(exc))
    old_version = release.release_version(old) or old.name
    new_version = _new_version(source)
    if not as_json:
        plan = Table(title=f"upgrade plan: confmeet {old_version} → {new_version}")
        plan.add_column("step")
        plan.add_column("what", overflow="fold")
        plan.add_row("release", f"{host.layout.opt_dir}/releases/{new_version} from {source}, dependencies "
                     + ("from the bundle" if not source.name.endswith(".whl") else
                        f"from {wheelhouse}" if wheelhouse else "from the package index"))
        plan.add_row("stop", "confmeet.service (the meetings in progress end)" if host.systemd
                     else "nothing: systemd does not run this host")
        plan.add_row("backup", f"database, documents, objects and settings, with confmeet {old_version}, to "
                     f"{backup_to or host.layout.data_dir / 'backups'}")
        plan.add_row("migrate", f"the database schema, with confmeet {new_version}")
        plan.add_row("switch", f"{host.layout.opt_dir / 'current'} → releases/{new_version}, the unit from "
                     "that release")
        if host.systemd:
            plan.add_row("start", f"confmeet {new_version}; /readyz must answer 200 within {timeout:.0f} s, "
                         f"else back to {old_version} (and to the backup if the schema moved)")
        if host.record.mode == "containers":
            plan.add_row("components", "unchanged (Triton keeps its image and models): run confmeet install "
                         "from the new release to converge them")
        console.print(plan)
        if not yes and not typer.confirm("Upgrade?", default=False):
            fail("nothing was changed", FAILED)
    try:
        say = (lambda message: None) if as_json else (lambda message: console.print(f"  {message}"))
        with host.locked(), release_source(source, wheelhouse.absolute() if wheelhouse else None, say) as (
                found, house):
            outcome = run_upgrade(host, found, house, backup_to, timeout, stepper(as_json))
    except (UpgradeError, release.ReleaseError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted half-way: 'confmeet rollback' goes back to the release that ran before (and to the "
             "backup taken, if the schema moved)", 130)
    report(outcome, f"upgrade {outcome.from_version} → {outcome.to_version}", as_json)


def rollback(
    timeout: TimeoutOpt = 120,
    yes: YesOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (needs --yes).")] = False,
    root: RootOpt = Path("/"),
) -> None:
    """Go back to the release that ran before the last upgrade (restoring the backup taken then
    when the upgrade moved the database schema)."""
    if as_json and not yes:
        fail("--json cannot ask for confirmation: add --yes")
    host = _host(root)
    try:
        plan = plan_rollback(host)
    except UpgradeError as exc:
        fail(str(exc))
    record = plan.record
    if not as_json:
        table = Table(title=f"rollback plan: confmeet {record.to_version} → {record.from_version}"
                      + (" (an upgrade that stopped half-way)" if plan.interrupted else ""))
        table.add_column("step")
        table.add_column("what", overflow="fold")
        table.add_row("stop", "confmeet.service (the meetings in progress end)" if host.systemd else "-")
        if plan.restore:
            table.add_row("database", f"[yellow]restore {record.backup_archive}[/] (from {record.backup_location}, "
                          f"taken at the upgrade, {record.upgraded_at}): the upgrade moved the schema from "
                          f"{record.schema_before} to {plan.schema_now}, which confmeet {record.from_version} "
                          "cannot run on; the current database is set aside, not deleted")
        else:
            table.add_row("database", f"kept as it is (schema {record.schema_before} did not move)")
        table.add_row("switch", f"{host.layout.opt_dir / 'current'} → {record.from_release}")
        if host.systemd:
            table.add_row("start", f"confmeet {record.from_version}; /readyz must answer 200")
        console.print(table)
        if plan.restore:
            console.print(f"[bold yellow]Everything written since the upgrade ({record.upgraded_at}) is lost:[/] "
                          "accounts, meetings, recordings and documents made with confmeet "
                          f"{record.to_version}.", highlight=False)
        if not yes and not typer.confirm("Roll back?", default=False):
            fail("nothing was changed", FAILED)
    try:
        with host.locked():
            outcome = roll_back(host, plan, stepper(as_json), timeout)
    except (UpgradeError, release.ReleaseError) as exc:
        fail(f"{exc}; see 'confmeet status' and 'journalctl -u confmeet'")
    report(outcome, f"rollback {outcome.from_version} → {outcome.to_version}", as_json)


def migrate(
    check: Annotated[bool, typer.Option("--check", help="Only report the schema versions; change nothing.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Bring the database schema up to date and check every store (what serve does at its start)."""
    import peewee as pw

    from appliance.settings import SettingsError, load_settings, mask_url_password
    from appliance.stores import StoreUnavailable, open_stores
    from appliance.stores.relational import SCHEMA_VERSION, connect_database, database_proxy, schema_version

    try:
        settings = load_settings(config, overrides={"data_dir": data_dir})
    except SettingsError as exc:
        fail(str(exc))
    url = mask_url_password(settings.database_url)
    db = connect_database(settings.database_url)
    database_proxy.initialize(db)
    try:
        db.connect()
        before = schema_version(db)
    except pw.PeeweeException as exc:
        fail(f"cannot read the database at {url}: {str(exc).strip()}")
    finally:
        db.close()
    if check:
        found = {"url": url, "schema": before, "release": SCHEMA_VERSION, "compatible": before <= SCHEMA_VERSION}
        if as_json:
            print(json.dumps(found))
        else:
            console.print(f"{url}: schema {before}; this release knows up to {SCHEMA_VERSION}"
                          + ("" if found["compatible"] else " [red](newer than this release)[/]"), highlight=False)
        return
    if before > SCHEMA_VERSION:
        fail(f"the database's schema is version {before}, newer than this release knows ({SCHEMA_VERSION}): "
             "it cannot run on it; run the newer release, or 'confmeet rollback' (it restores the backup taken "
             "at the upgrade)")

    async def run() -> dict[str, Any]:
        stores = await open_stores(settings)
        try:
            after = await stores.db.run(lambda: schema_version(stores.db.db))
            return {"migrations_run": stores.db.migrations_run, "schema_after": after, "stores": await stores.check()}
        finally:
            await stores.close()

    try:
        done = asyncio.run(run())
    except StoreUnavailable as exc:
        fail(str(exc))
    bad = [name for name, item in done["stores"].items() if not item["ok"]]
    result = {"url": url, "schema_before": before, "release": SCHEMA_VERSION, **done}
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"{url}: schema {before} → {done['schema_after']} ({done['migrations_run']} migration(s)); "
                      "stores: " + ", ".join(f"{n} {'ok' if i['ok'] else 'FAILED'}" for n, i in done["stores"].items()),
                      highlight=False)
    if bad:
        failing = ", ".join(f"{name} ({done['stores'][name].get('error')})" for name in bad)
        fail(f"store(s) not working: {failing}")


def register(app: typer.Typer) -> None:
    app.command("upgrade")(upgrade)
    app.command("rollback")(rollback)
    app.command("migrate")(migrate)
