"""``confmeet install``, ``confmeet uninstall`` and ``confmeet bundle create``.

Install runs the preflight checks, shows the plan (what will be created where) and asks before
it changes anything; then it converges the host to the plan, waits for every component to
answer, and opens the stores with the written settings. A failure takes back what this run
created and says how to resume.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance import __version__
from appliance.host import images, units
from appliance.host.deploy import (
    COMPONENT_LABEL, COMPONENTS, MODEL_REPOSITORY, NATIVE_PACKAGES, NATIVE_UNITS, ContainerPlan, DeployError,
    Engine, InstallOptions, InstallRecord, Journal, Layout, Mode, confmeet_program, container_spec,
    copy_model_repository, create_native_database, create_service_user, docker_client, embedded_settings,
    give_to_service_user, make_dir, now, render_settings, resolve, service_user_exists, settings_for,
    systemd_running, unit_file, write_file,
)

from .status import PROBES, Probe, timed

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

bundle_app = typer.Typer(help="Offline bundles: everything an install needs, for hosts without network.",
                         no_args_is_help=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _pairs(values: list[str], what: str, number: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            fail(f"--{what} {value!r}: write NAME={'PORT' if number else 'IMAGE'}, e.g. "
                 f"{'postgresql=15432' if number else 'postgresql=postgres:16'}")
        if number:
            if not setting.isdigit():
                fail(f"--port {value!r}: the port must be a number")
            out[name] = int(setting)
        else:
            out[name] = setting
    return out


# ---------------------------------------------------------------------- the plan
@dataclass
class Step:
    component: str
    what: str
    where: str
    action: str


@dataclass
class Plan:
    record: InstallRecord
    layout: Layout
    steps: list[Step] = field(default_factory=list)
    containers: list[ContainerPlan] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # containers of components no longer selected
    native_units: dict[str, bool] = field(default_factory=dict)

    def add(self, component: str, what: str, where: str, action: str) -> None:
        self.steps.append(Step(component, what, where, action))


def _exists(path: Path) -> str:
    return "keep" if path.exists() else "create"


def build_plan(record: InstallRecord, layout: Layout, engine: Engine | None, bundle: Path | None,
               bundle_ids: dict[str, str]) -> Plan:
    plan = Plan(record, layout)
    plan.add("host", "settings", f"{layout.config_file} (0600)", _exists(layout.config_file))
    plan.add("host", "install record", f"{layout.record_file} (0600)", _exists(layout.record_file))
    plan.add("host", "data directory", str(layout.data_dir), _exists(layout.data_dir))
    if layout.is_host and _is_root():
        plan.add("host", "service user", "confmeet (system user)", "keep" if service_user_exists() else "create")
    else:
        plan.add("host", "service user", "confmeet", "skip (--root is not /)" if not layout.is_host
                 else "skip (not root)")
    if record.tls_generated:
        plan.add("host", "TLS", f"{layout.tls_dir}/ca.pem, cert.pem, key.pem (private CA)",
                 "keep" if (layout.tls_dir / "cert.pem").exists() else "generate")
    else:
        plan.add("host", "TLS", f"{record.tls_cert}, {record.tls_key}", "use (--cert/--key)")
    if bundle is not None:
        plan.add("host", "offline bundle", str(bundle), "verify sha256s, load images, unpack models and wheels")
    elif MODEL_REPOSITORY.is_dir():
        plan.add("triton", "model repository", f"{layout.model_repository}\n(from {MODEL_REPOSITORY})", "copy")
    if record.mode == "containers":
        assert engine is not None
        from appliance.host import gpu

        report = gpu.detect(gpu.GpuProbe(docker_info=lambda: engine.client.info()))
        for name in record.components:
            spec = container_spec(name, record, layout, gpu=report.triton_device == "gpu")
            container = engine.plan(spec)
            if not container.image_present and spec.image in bundle_ids:
                container.image_present = True
            plan.containers.append(container)
            component = COMPONENTS[name]
            ports = ", ".join([str(record.ports[name])] + [str(record.ports[name] + o)
                                                          for o in component.extra_ports.values()])
            where = [f"container {spec.name}", f"image {spec.image}"]
            if component.volume:
                where.append(f"volume {component.volume_name}:{component.volume}")
            where.append(f"port {ports} (host network)")
            if name == "triton":
                where.append("on the GPU" if spec.gpu else "on the CPU (no usable GPU)")
            image = "" if container.image_present else (", load image" if bundle else ", pull image")
            action = container.action + (f" ({container.reason})" if container.reason else "") + image
            plan.add(name, component.title, "\n".join(where), action)
        if "coturn" in record.components:
            plan.add("coturn", "coturn settings", str(layout.turnserver_conf), _exists(layout.turnserver_conf))
        for container in engine.installed():
            name = container.labels.get(COMPONENT_LABEL, "")
            if name not in record.components:
                plan.dropped.append(container.name)
                plan.add(name, "not selected", f"container {container.name}", "remove (its volume is kept)")
    else:
        for name, unit in NATIVE_UNITS.items():
            if name not in record.components:
                continue
            found = unit_file(layout.root, unit)
            plan.native_units[name] = found is not None
            plan.add(name, COMPONENTS[name].title, f"Debian's {unit}", "enable" if found else
                     f"skip: {unit} is not installed (apt-get install {NATIVE_PACKAGES[name]})")
        if "coturn" in record.components and plan.native_units.get("coturn"):
            plan.add("coturn", "coturn settings", str(layout.root / "etc/turnserver.conf"), "write")
        plan.add("host", "left out", "MongoDB, MinIO, Triton (no Debian packages)",
                 "documents, objects and inference stay embedded")
    for setting, text in embedded_settings(record).items():
        if setting == "documents" and record.mode == "containers":
            text += " (no MongoDB: the document store has no PostgreSQL implementation yet)"
        plan.add("appliance", setting, text, "embedded")
    plan.add("appliance", "systemd unit", str(layout.unit_dir / units.APPLIANCE_UNIT),
             "install, enable" + (", start" if systemd_running(layout) else ""))
    url = settings_for(record, layout)["public_url"]
    plan.add("appliance", "listens on", f"{record.listen}:{record.appliance_port} ({url})", "")
    return plan


def render_plan(plan: Plan) -> Table:
    table = Table(title=f"install plan ({plan.record.mode}, root {plan.layout.root})")
    for column in ("component", "what", "where", "action"):
        table.add_column(column, overflow="fold")
    for step in plan.steps:
        style = {"create": "green", "generate": "green", "recreate": "yellow", "start": "yellow",
                 "embedded": "dim", "keep": "dim"}.get(step.action.split(" ")[0].rstrip(","), "")
        table.add_row(step.component, step.what, step.where, f"[{style}]{step.action}[/]" if style else step.action)
    return table


def _is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------------- preflight
def preflight(record: InstallRecord, layout: Layout, engine: Engine | None) -> list[Any]:
    from appliance.host.ports import bind_error, confmeet_version, stun_answers
    from appliance.host.preflight import Finding, PreflightOptions, run_checks

    findings = run_checks(PreflightOptions(
        data_dir=layout.data_dir, docker_base_url=record.docker_url, mode=record.mode, address=record.listen,
        https_port=record.appliance_port, turn_port=record.ports["coturn"]))
    ours = set()
    if engine is not None:
        ours = {c.labels.get(COMPONENT_LABEL) for c in engine.installed() if c.status == "running"}
    for index, finding in enumerate(findings):
        if finding.status != "fail":
            continue
        if finding.check.startswith("HTTPS") and confmeet_version(record.listen, record.appliance_port, tls=True):
            findings[index] = Finding(finding.check, "pass", f"confmeet already serves on {record.appliance_port}")
        elif finding.check.startswith("TURN") and ("coturn" in ours
                                                    or stun_answers(record.listen, record.ports["coturn"])):
            findings[index] = Finding(finding.check, "pass", f"coturn already answers on {record.ports['coturn']}")
    if record.mode == "containers":
        for name in record.components:
            if name in ours or name == "coturn":
                continue
            component = COMPONENTS[name]
            for port in [record.ports[name], *(record.ports[name] + o for o in component.extra_ports.values())]:
                error = bind_error("127.0.0.1", port, "tcp")
                if error is not None:
                    findings.append(Finding(
                        f"{component.title} port", "fail", f"127.0.0.1:{port}/tcp is taken ({error.strerror})",
                        f"choose another with --port {name}=PORT or --port-offset N"))
    return findings


# ---------------------------------------------------------------------- applying the plan
class Installer:
    def __init__(self, plan: Plan, engine: Engine | None, bundle: Path | None, timeout: float,
                 quiet: bool) -> None:
        self.plan, self.engine, self.bundle, self.timeout = plan, engine, bundle, timeout
        self.record, self.layout = plan.record, plan.layout
        self.journal = Journal()
        self.done: dict[str, str] = {}
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            console.print(message)

    def run(self) -> None:
        layout, record = self.layout, self.record
        for directory, mode in ((layout.config_dir, 0o750), (layout.data_dir, 0o750), (layout.tls_dir, 0o750)):
            make_dir(directory, mode, self.journal)
        if layout.is_host and _is_root():
            self.done["service user"] = create_service_user()
        if self.bundle is not None and self.engine is not None:
            manifest = images.load_bundle(self.engine.client, self.bundle, layout.model_repository,
                                          layout.wheels_dir, log=self.say)
            self.done["bundle"] = f"loaded {len(manifest.images)} image(s) from {self.bundle.name}"
        else:
            copied = copy_model_repository(MODEL_REPOSITORY, layout.model_repository)
            layout.model_repository.mkdir(parents=True, exist_ok=True)
            self.done["model repository"] = f"copied {copied} file(s)"
        if record.tls_generated:
            from appliance.host import tls

            names = list(dict.fromkeys(n for n in (record.public_host, "localhost", "127.0.0.1",
                                                   record.listen if record.listen != "0.0.0.0" else "")
                                       if n))
            tls.ensure_certificates(layout.tls_dir, names)
        self.write_settings()
        if record.mode == "containers":
            self.converge_containers()
            self.wait_for_components()
        else:
            self.enable_native()
        self.check_stores()
        self.install_unit()

    def write_settings(self) -> None:
        layout, record = self.layout, self.record
        record.installed_at = now()
        record.version = __version__
        self.done["settings"] = write_file(layout.config_file, render_settings(record, layout), 0o600,
                                           self.journal, str(layout.config_file))
        previous = json.loads(layout.record_file.read_text()) if layout.record_file.exists() else {}
        current = json.loads(record.to_json())
        date, _ = previous.pop("installed_at", None), current.pop("installed_at")
        if date and previous == current:  # nothing changed: the record keeps its date
            record.installed_at = date
        write_file(layout.record_file, record.to_json(), 0o600, self.journal, str(layout.record_file))
        if layout.is_host and _is_root() and service_user_exists():
            give_to_service_user([layout.config_file, layout.data_dir, layout.tls_dir,
                                  Path(record.tls_key), Path(record.tls_cert)])
        if "coturn" in record.components:
            text = units.render_turnserver_conf(
                record.secrets["turn_secret"], record.public_host, port=record.ports["coturn"],
                listening_ips=[record.listen] if record.listen not in ("0.0.0.0", "::") else [],
                allowed_peer_ips=[record.listen] if record.listen not in ("0.0.0.0", "::") else [])
            if record.mode == "containers":
                # In a container coturn logs to stdout (docker logs), not to a syslog it lacks.
                text = "\n".join(line for line in text.splitlines() if line != "syslog") + "\n"
                self.done["coturn settings"] = write_file(layout.turnserver_conf, text, 0o644, self.journal,
                                                          str(layout.turnserver_conf))
            elif self.plan.native_units.get("coturn"):
                target = layout.root / "etc/turnserver.conf"
                write_file(target, text, 0o640, self.journal, str(target))

    def converge_containers(self) -> None:
        assert self.engine is not None
        for container in self.plan.containers:
            self.say(f"  {container.spec.name}: {container.action}…")
            self.done[container.spec.component] = self.engine.converge(container.spec, self.journal)
        for name in self.plan.dropped:
            self.say(f"  {name}: remove…")
            self.engine.remove(name)
            self.journal.replaced.append(name)

    def wait_for_components(self) -> None:
        """Until each component answers over its own protocol, as the appliance will ask it."""
        assert self.engine is not None
        settings = settings_for(self.record, self.layout)
        pending = {name: settings[COMPONENTS[name].setting] for name in self.record.components}
        pending = {name: url[0] if isinstance(url, list) else url for name, url in pending.items()}
        answers: dict[str, Probe] = {}
        deadline = time.monotonic() + self.timeout
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=False, disable=self.quiet) as progress:
            tasks = {name: progress.add_task(f"{COMPONENTS[name].title}: starting", total=1) for name in pending}
            while pending:
                for name, url in list(pending.items()):
                    container = COMPONENTS[name].container
                    status, _, restarts = self.engine.container_state(container)
                    if status in ("exited", "dead", "missing") or restarts > 0:
                        logs = self.engine.logs(container)
                        what = f"restarted {restarts} time(s)" if restarts else status
                        raise DeployError(f"{container} {what} before it answered; its last "
                                          f"log lines:\n{logs}\nfix the cause (see 'docker logs {container}')")
                    probe = timed(lambda: PROBES[COMPONENTS[name].setting](url))
                    answers[name] = probe
                    if probe.state in ("up", "degraded"):  # it answers; the store check comes next
                        progress.update(tasks[name], completed=1,
                                        description=f"{COMPONENTS[name].title}: [green]up[/] {probe.version}")
                        del pending[name]
                    else:
                        progress.update(tasks[name],
                                        description=f"{COMPONENTS[name].title}: waiting ({probe.detail[:60]})")
                if pending and time.monotonic() > deadline:
                    name = next(iter(pending))
                    raise DeployError(f"{COMPONENTS[name].title} did not answer within {self.timeout:.0f}s "
                                      f"({answers[name].detail}); see 'docker logs {COMPONENTS[name].container}', "
                                      "or allow longer with --timeout")
                if pending:
                    time.sleep(0.3)
        self.answers = answers

    def enable_native(self) -> None:
        record, layout = self.record, self.layout
        running = systemd_running(layout)
        for name, installed in self.plan.native_units.items():
            if not installed:
                continue
            unit = NATIVE_UNITS[name]
            units.systemctl("enable", unit, root=None if layout.is_host else layout.root)
            self.done[name] = "enabled"
            if running:
                units.systemctl("restart", unit)
        if running and self.plan.native_units.get("postgresql"):
            create_native_database(record.secrets["postgresql"])

    def check_stores(self) -> None:
        """Open every store with the written settings, as the appliance will at its start."""
        if self.record.mode == "native" and not systemd_running(self.layout):
            self.done["stores"] = "not checked: the native units start with systemd"
            return
        from appliance.settings import load_settings
        from appliance.stores import open_stores

        settings = load_settings(self.layout.config_file, env={})

        async def check() -> dict[str, Any]:
            stores = await open_stores(settings)
            try:
                return await stores.check()
            finally:
                await stores.close()

        result = asyncio.run(check())
        bad = {name: item for name, item in result.items() if not item["ok"]}
        if bad:
            name, item = next(iter(bad.items()))
            raise DeployError(f"the {name} store does not work with the new settings: {item.get('error')}")
        self.done["stores"] = "opened: " + ", ".join(f"{name} ({item['kind']})" for name, item in result.items())

    def install_unit(self) -> None:
        layout = self.layout
        config = "/etc/confmeet/confmeet.toml" if layout.is_host else str(layout.config_file)
        before = {p: p.read_bytes() for p in (layout.unit_dir / units.APPLIANCE_UNIT,) if p.exists()}
        written = units.write_appliance_unit(layout.unit_dir, confmeet_program(), config,
                                             privileged_port=self.record.appliance_port < 1024)
        for path in written:
            if path not in before:
                self.journal.created(str(path), lambda p=path: p.unlink(missing_ok=True))
        if shutil.which("systemctl"):
            units.systemctl("enable", units.APPLIANCE_UNIT, root=None if layout.is_host else layout.root)
            self.done["appliance unit"] = "installed, enabled"
            if systemd_running(layout):
                units.systemctl("daemon-reload")
                units.systemctl("restart", units.APPLIANCE_UNIT)
                self.done["appliance unit"] += ", started"
        else:
            self.done["appliance unit"] = "installed (no systemctl here: enable it by hand)"


def _rollback_report(installer: Installer, error: str) -> None:
    done, failed = installer.journal.rollback()
    err.print(f"[bold red]install failed:[/] {error}")
    if done:
        err.print("took back what this run created: " + ", ".join(done))
    for item in failed:
        err.print(f"[yellow]could not take back[/] {item}")
    if installer.journal.replaced:
        err.print("recreated or removed before the failure (their volumes are kept): "
                  + ", ".join(installer.journal.replaced))
    err.print("nothing that existed before this run was removed; fix the cause above and run the "
              "same command again to resume")


def install(
    mode: Annotated[Optional[str], typer.Option(help="containers (Docker) or native (Debian's units); "
                                                     "default: containers when Docker answers.")] = None,
    components: Annotated[Optional[str], typer.Option(help="Comma-separated subset of: "
                                                           + ", ".join(COMPONENTS) + " (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and stop.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Go on even when a preflight check fails.")] = False,
    bundle: Annotated[Optional[Path], typer.Option(help="Install offline from a bundle "
                                                        "('confmeet bundle create').")] = None,
    root: Annotated[Path, typer.Option(help="Install into this directory tree instead of /.")] = Path("/"),
    docker_url: Annotated[Optional[str], typer.Option(help="Docker Engine API (default: DOCKER_HOST or "
                                                           "unix:///var/run/docker.sock).")] = None,
    cert: Annotated[Optional[Path], typer.Option(help="TLS certificate (chain) to serve; default: a "
                                                      "private CA and certificate are made.")] = None,
    key: Annotated[Optional[Path], typer.Option(help="The certificate's private key.")] = None,
    port_offset: Annotated[Optional[int], typer.Option(help="Add N to every default port.")] = None,
    port: Annotated[Optional[list[str]], typer.Option(help="NAME=PORT for one component (or appliance); "
                                                           "repeatable.")] = None,
    image: Annotated[Optional[list[str]], typer.Option(help="NAME=IMAGE for one component; repeatable "
                                                            "(also CONFMEET_IMAGE_<NAME>).")] = None,
    listen: Annotated[Optional[str], typer.Option(help="Address the appliance and coturn listen on "
                                                       "(default: 0.0.0.0).")] = None,
    public_host: Annotated[Optional[str], typer.Option(help="Name people reach the appliance by "
                                                            "(default: this host's FQDN).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the components to answer.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (needs --yes or "
                                                         "--dry-run).")] = False,
) -> None:
    """Install the appliance and its components on this host (a second run converges)."""
    if mode not in (None, "containers", "native"):
        fail(f"--mode {mode!r}: use containers or native")
    if as_json and not (yes or dry_run):
        fail("--json cannot ask for confirmation: add --yes (or --dry-run)")
    layout = Layout(root.absolute())
    options = InstallOptions(
        mode=mode,  # type: ignore[arg-type]
        components=[c.strip() for c in components.split(",") if c.strip()] if components else None,
        root=layout.root, docker_url=docker_url, port_offset=port_offset,
        ports=_pairs(port or [], "port", True), images=_pairs(image or [], "image", False),
        listen=listen, public_host=public_host, cert=cert, key=key)
    installer: Installer | None = None
    try:
        previous = InstallRecord.read(layout)
        bundle_ids: dict[str, str] = {}
        if bundle is not None:
            manifest = images.read_manifest(bundle)
            options.images = {**{c: i["ref"] for c, i in manifest.images.items()}, **options.images}
            bundle_ids = {i["ref"]: i["id"] for i in manifest.images.values()}
        chosen: Mode = options.mode or (previous.mode if previous else _default_mode(options))
        record = resolve(options, previous, chosen)
        engine = Engine(docker_client(record.docker_url), layout.root) if chosen == "containers" else None
        findings = preflight(record, layout, engine)
        if not as_json:
            from appliance.host.preflight import render_findings

            console.print(render_findings(findings))
        failures = [f for f in findings if f.status == "fail"]
        if failures and not force:
            fail(f"{len(failures)} preflight check(s) failed ({', '.join(f.check for f in failures)}): "
                 "apply the fixes above, or rerun with --force to install anyway")
        plan = build_plan(record, layout, engine, bundle, bundle_ids)
        if as_json and dry_run:
            print(json.dumps({"mode": record.mode, "root": str(layout.root), "dry_run": True,
                              "plan": [step.__dict__ for step in plan.steps]}, indent=2))
            return
        if not as_json:
            console.print(render_plan(plan))
        if dry_run:
            console.print("dry run: nothing was changed")
            return
        if not yes and not typer.confirm("Apply this plan?", default=False):
            fail("nothing was changed", code=1)
        installer = Installer(plan, engine, bundle, timeout, quiet=as_json)
        installer.run()
    except typer.Exit:
        raise
    except (DeployError, images.ImageError, units.UnitError) as exc:
        if installer is None:
            fail(str(exc))
        _rollback_report(installer, str(exc))  # type: ignore[arg-type]
        raise typer.Exit(2)
    except KeyboardInterrupt:
        if installer is not None:
            _rollback_report(installer, "interrupted")
        raise typer.Exit(130)
    except Exception as exc:  # a store that refuses the new settings, an OS error: same handling
        from appliance.stores import StoreUnavailable

        if isinstance(exc, PermissionError):
            message = f"permission denied on {exc.filename}: run install as root (sudo confmeet install …)"
        elif isinstance(exc, (StoreUnavailable, OSError)):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        if installer is None:
            fail(message)
        _rollback_report(installer, message)  # type: ignore[arg-type]
        raise typer.Exit(2)
    summary(installer, as_json)


def _default_mode(options: InstallOptions) -> Mode:
    from appliance.host.deploy import default_docker_url

    try:
        docker_client(options.docker_url or default_docker_url(), timeout=5).close()
        return "containers"
    except DeployError:
        return "native"


def summary(installer: Installer, as_json: bool) -> None:
    record, layout = installer.record, installer.layout
    settings = settings_for(record, layout)
    if as_json:
        print(json.dumps({"mode": record.mode, "root": str(layout.root), "config": str(layout.config_file),
                          "public_url": settings["public_url"], "done": installer.done}, indent=2))
        return
    table = Table(title="installed")
    table.add_column("component")
    table.add_column("result")
    table.add_column("address", overflow="fold")
    for name in record.components:
        url = settings.get(COMPONENTS[name].setting, "")
        url = url[0] if isinstance(url, list) else url
        from appliance.settings import mask_url_password

        table.add_row(COMPONENTS[name].title, installer.done.get(name, "-"), mask_url_password(url))
    for what in ("settings", "coturn settings", "model repository", "bundle", "service user",
                 "stores", "appliance unit"):
        if what in installer.done:
            table.add_row(what, installer.done[what], "")
    console.print(table)
    config = layout.config_file
    if systemd_running(layout):
        console.print(f"confmeet runs at [bold]{settings['public_url']}[/]")
    else:
        console.print(f"start the appliance: [bold]systemctl start confmeet[/] (or "
                      f"[bold]confmeet serve --config {config}[/]), then open {settings['public_url']}")
    if record.tls_generated:
        console.print(f"browsers trust it once they import the private CA {layout.tls_dir / 'ca.pem'}")
    console.print(f"check it: [bold]confmeet status --config {config}[/]")


# ---------------------------------------------------------------------- uninstall
def uninstall(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete volumes, data, settings and TLS files.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    root: Annotated[Path, typer.Option(help="The directory tree given to install --root.")] = Path("/"),
    docker_url: Annotated[Optional[str], typer.Option(help="Docker Engine API (default: the install's).")] = None,
) -> None:
    """Remove the containers and units; keep volumes and data unless --purge."""
    layout = Layout(root.absolute())
    try:
        record = InstallRecord.read(layout)
    except DeployError as exc:
        fail(str(exc))
    if record is None:
        fail(f"no install found under {layout.root} ({layout.record_file} is missing)")
    assert record is not None
    table = Table(title=f"uninstall ({'purge' if purge else 'keep data'})")
    table.add_column("what")
    table.add_column("action")
    engine = None
    if record.mode == "containers":
        try:
            engine = Engine(docker_client(docker_url or record.docker_url), layout.root)
        except DeployError as exc:
            fail(str(exc))
        assert engine is not None
        for container in engine.installed():
            table.add_row(f"container {container.name}", "remove")
        for volume in engine.volumes():
            table.add_row(f"volume {volume.name}", "delete" if purge else "keep")
    else:
        for name in record.components:
            table.add_row(f"unit {NATIVE_UNITS[name]}", "disable (the package stays installed)")
    table.add_row(f"unit {units.APPLIANCE_UNIT}", "disable, remove")
    for path in (layout.config_dir, layout.data_dir):
        table.add_row(str(path), "delete" if purge else "keep")
    console.print(table)
    if not yes and not typer.confirm("Uninstall?", default=False):
        fail("nothing was changed", code=1)
    systemctl_root = None if layout.is_host else layout.root
    try:
        if shutil.which("systemctl") and (layout.unit_dir / units.APPLIANCE_UNIT).exists():
            if systemd_running(layout):
                units.systemctl("stop", units.APPLIANCE_UNIT)
            units.systemctl("disable", units.APPLIANCE_UNIT, root=systemctl_root)
        for path in (layout.unit_dir / units.APPLIANCE_UNIT, layout.unit_dir / units.PRIVILEGED_PORT_DROPIN):
            path.unlink(missing_ok=True)
        if engine is not None:
            for container in engine.installed():
                engine.remove(container.name)
            if purge:
                for volume in engine.volumes():
                    volume.remove(force=True)
        elif shutil.which("systemctl"):
            for name in record.components:
                if unit_file(layout.root, NATIVE_UNITS[name]):
                    units.systemctl("disable", NATIVE_UNITS[name], root=systemctl_root)
    except (units.UnitError, OSError) as exc:
        fail(f"uninstall stopped: {exc}; fix it and run uninstall again")
    except Exception as exc:  # the Docker Engine refusing a removal
        fail(f"uninstall stopped: {exc}; fix it and run uninstall again")
    if purge:
        shutil.rmtree(layout.config_dir, ignore_errors=True)
        shutil.rmtree(layout.data_dir, ignore_errors=True)
        console.print("removed confmeet, its data and its settings")
    else:
        console.print(f"removed confmeet's containers and units; data and settings are kept "
                      f"({layout.data_dir}, {layout.config_dir}): install again to get them back, "
                      "or uninstall --purge to delete them")


# ---------------------------------------------------------------------- bundles
@bundle_app.command("create")
def bundle_create(
    output: Annotated[Path, typer.Argument(help="The bundle file to write (a tar).")],
    components: Annotated[Optional[str], typer.Option(help="Comma-separated subset (default: all).")] = None,
    image: Annotated[Optional[list[str]], typer.Option(help="NAME=IMAGE for one component; repeatable.")] = None,
    docker_url: Annotated[Optional[str], typer.Option(help="Docker Engine holding (or pulling) the images.")] = None,
    wheelhouse: Annotated[Optional[Path], typer.Option(help="Take the dependencies' wheels from this "
                                                            "directory instead of the package index.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write an offline bundle: every component's image, the model repository, and the wheels."""
    import tempfile

    from appliance.host.deploy import default_docker_url, image_override_from_env

    names = [c.strip() for c in components.split(",")] if components else list(COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        fail(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    overrides = _pairs(image or [], "image", False)
    refs = {n: overrides.get(n) or image_override_from_env(n) or COMPONENTS[n].image for n in names}
    project = Path(__file__).resolve().parents[1]
    log = (lambda message: None) if as_json else (lambda message: console.print(f"  {message}"))
    try:
        engine = Engine(docker_client(docker_url or default_docker_url()))
        with tempfile.TemporaryDirectory(prefix="confmeet-wheels-") as tmp:
            if not (project / "setup.cfg").exists():
                raise images.ImageError(f"{project} is not confmeet's source tree: make bundles from a checkout")
            log("building wheels" + (f" from {wheelhouse}" if wheelhouse else ""))
            wheels = images.build_wheels(Path(tmp), project, wheelhouse)
            manifest = images.create_bundle(engine.client, refs, output.absolute(), MODEL_REPOSITORY, wheels,
                                            __version__, log=log)
    except (DeployError, images.ImageError) as exc:
        fail(str(exc))
    if as_json:
        print(manifest.to_json().decode())
        return
    table = Table(title=f"bundle {output} ({output.stat().st_size / 1e6:.0f} MB)")
    table.add_column("content")
    table.add_column("detail")
    for name, item in manifest.images.items():
        table.add_row(f"image ({name})", f"{item['ref']}  {item['id'][:19]}")
    models = [f for f in manifest.files if f.startswith("model_repository/")]
    wheel_files = [f for f in manifest.files if f.startswith("wheels/")]
    table.add_row("model repository", f"{len(models)} file(s)")
    table.add_row("wheels", f"{len(wheel_files)} wheel(s)")
    console.print(table)
    console.print(f"install it offline: [bold]confmeet install --bundle {output}[/]")


def register(app: typer.Typer) -> None:
    app.command("install")(install)
    app.command("uninstall")(uninstall)
    app.add_typer(bundle_app, name="bundle")
