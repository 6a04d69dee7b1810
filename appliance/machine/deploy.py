"""Deploying the appliance and its components: the settings file, data directories, TLS files,
the service user, the appliance's unit, and PostgreSQL, Redis, MongoDB, MinIO, coturn and
Triton as containers (``bundles/components.toml``) or, for ``--mode native``, Debian's units.

Everything is converged rather than created: a second install with the same options keeps what
is there (containers whose spec did not change, volumes, secrets); a changed spec recreates the
container and keeps its volume. A ``Journal`` remembers what one run created so that a failure
takes exactly that back and leaves what existed before alone.

Paths live under ``root`` (``/`` in production; tests install into a temporary directory).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import docker.types
import requests

from .. import __version__
from ..fsutil import write_atomically
from ..settings import NODE_SETTINGS, host_port
from . import observability, units
from .images import BUNDLES_DIR

COMPONENTS_FILE = BUNDLES_DIR / "components.toml"
LOOPBACK = "127.0.0.1"
# The stores every node of an install shares: on --cluster-address they listen on the nodes' network.
SHARED_STORES = ("postgresql", "redis", "mongodb", "minio", "triton")
APPLIANCE_PORT = 443
COMPONENT_LABEL = "confmeet.component"
SPEC_LABEL = "confmeet.spec"
ROOT_LABEL = "confmeet.root"
SERVICE_USER = "confmeet"
RECORD_FORMAT = 1
NATIVE_UNITS = {"postgresql": "postgresql.service", "redis": "redis-server.service", "coturn": "coturn.service"}
NATIVE_PACKAGES = {"postgresql": "postgresql", "redis": "redis-server", "coturn": "coturn"}
UNIT_SEARCH = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
HEALTH_INTERVAL_NS = 5_000_000_000
STOP_TIMEOUT = 30  # seconds a server gets to shut down cleanly (PostgreSQL checkpoints) before SIGKILL
DEFAULT_RETENTION_DAYS = 15
ALERT_SETTINGS = ("alerts_webhook_url", "alerts_email", "alerts_smarthost")
EMBEDDED = {
    "database": "embedded SQLite database under the data directory",
    "bus": "in-process event bus (memory://): one appliance process only",
    "documents": "embedded SQLite documents under the data directory",
    "objects": "files under the data directory (file://)",
    "inference": "in-process models (local://)",
    "ice_servers": "no TURN server: browsers behind strict NATs cannot connect",
}

Mode = Literal["containers", "native"]


class DeployError(Exception):
    """A step of the installation failed; the message says what and how to fix it."""


# ---------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """One table of bundles/components.toml."""

    name: str
    title: str
    image: str
    port: int
    setting: str = ""  # the appliance setting it serves ("": none, e.g. Prometheus)
    url: str = ""
    health: str = ""  # an HTTP URL that answers 200 when it is up (else the setting's probe asks)
    volume: str = ""
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] = field(default_factory=list)
    mounts: dict[str, str] = field(default_factory=dict)
    extra_ports: dict[str, int] = field(default_factory=dict)
    gpu: bool = False
    shm_size: str = ""
    stop_signal: str = ""
    tls_url: str = ""  # a second URL for the same setting (coturn's TURN over TLS)
    python_packages: list[str] = field(default_factory=list)  # wheels of a derived image (Triton)
    user: str = ""  # the user the container runs as ("": the image's)
    optional_mounts: dict[str, str] = field(default_factory=dict)  # like mounts, where the host has the path
    metrics: str = ""  # HOST:PORT where Prometheus scrapes its /metrics ("": nothing to scrape there)
    tls: str = ""  # where its container finds the appliance's cert.pem and key.pem ("": no TLS)
    exports: str = ""  # the store whose metrics it exports: deployed only with that store and Prometheus

    @property
    def container(self) -> str:
        return f"confmeet-{self.name}"

    @property
    def volume_name(self) -> str:
        return f"confmeet-{self.name}"


def load_components(path: Path = COMPONENTS_FILE) -> dict[str, Component]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}; reinstall confmeet from its source tree") from None
    return {name: Component(name=name, **spec) for name, spec in data.items()}


COMPONENTS = load_components()


def image_override_from_env(name: str) -> str | None:
    """CONFMEET_IMAGE_<COMPONENT> chooses a component's image (as --image does)."""
    return os.environ.get(f"CONFMEET_IMAGE_{name.upper()}") or None


# ---------------------------------------------------------------------- where things go
@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def config_dir(self) -> Path:
        return self.root / "etc/confmeet"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "confmeet.toml"

    @property
    def record_file(self) -> Path:
        return self.config_dir / "install.json"

    @property
    def tls_dir(self) -> Path:
        return self.config_dir / "tls"

    @property
    def turnserver_conf(self) -> Path:
        return self.config_dir / "coturn/turnserver.conf"

    @property
    def data_dir(self) -> Path:
        return self.root / "var/lib/confmeet"

    @property
    def model_repository(self) -> Path:
        return self.data_dir / "model_repository"

    @property
    def wheels_dir(self) -> Path:
        return self.data_dir / "wheels"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def opt_dir(self) -> Path:
        """The installed appliance: ``releases/<version>/`` (a virtualenv each) and ``current``."""
        return self.root / "opt/confmeet"

    @property
    def is_host(self) -> bool:
        """Installing onto this machine itself (not into a directory tree)."""
        return self.root.resolve() == Path("/")


# ---------------------------------------------------------------------- the install record
@dataclass
class InstallRecord:
    """What was installed, kept in ``/etc/confmeet/install.json`` (0600): the next install
    converges to it, ``status`` and ``uninstall`` read it."""

    mode: Mode
    components: list[str]
    ports: dict[str, int]
    images: dict[str, str]
    secrets: dict[str, str]
    docker_url: str
    listen: str
    public_host: str
    tls_cert: str = ""
    tls_key: str = ""
    tls_generated: bool = True
    public_ips: list[str] = field(default_factory=list)  # coturn's external-ip (1:1 NAT)
    asr_model: str = ""  # Whisper size: "base" or "small"; "" until the first install chooses
    retention_days: int = DEFAULT_RETENTION_DAYS  # Prometheus, Alertmanager, Loki and Jaeger keep this long
    alerts: dict[str, str] = field(default_factory=dict)  # alerts_webhook_url, alerts_email, alerts_smarthost
    # Several nodes (docs/operations.md, "Several nodes"): where this node's shared stores listen and
    # the other nodes reach it ("": loopback, one node); its name among them ("": the host name); the
    # node it joined through ("": it is the install's first node) and what it was handed there.
    cluster_address: str = ""
    node_name: str = ""
    joined: str = ""
    shared: dict[str, Any] = field(default_factory=dict)
    gateway: str = ""  # where this machine's nginx gateway in front of the nodes listens ("": none)
    version: str = __version__
    installed_at: str = ""
    format: int = RECORD_FORMAT

    @classmethod
    def read(cls, layout: Layout) -> InstallRecord | None:
        try:
            values = json.loads(layout.record_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DeployError(f"cannot read {layout.record_file}: {exc}; run as root, or move the "
                              "file away to install afresh") from None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def appliance_port(self) -> int:
        return self.ports["appliance"]


@dataclass
class InstallOptions:
    """What the operator asked for; None means "as the last install had it, else the default"."""

    mode: Mode | None = None
    components: list[str] | None = None
    root: Path = Path("/")
    docker_url: str | None = None
    port_offset: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    listen: str | None = None
    public_host: str | None = None
    public_ips: list[str] | None = None
    asr_model: str | None = None
    cert: Path | None = None
    key: Path | None = None
    retention_days: int | None = None
    alerts: dict[str, str] | None = None  # ALERT_SETTINGS given ("" clears one)
    cluster_address: str | None = None
    node_name: str | None = None
    joined: str | None = None  # --join URL, with ``shared`` what that node handed over
    shared: dict[str, Any] | None = None
    gateway: str | None = None  # "" takes the gateway away


def default_docker_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def resolve(options: InstallOptions, previous: InstallRecord | None, mode: Mode) -> InstallRecord:
    """The record this install converges to: options, else the previous install's, else defaults.
    Secrets are kept from the previous install and generated only where missing."""
    joining = options.shared is not None or bool(previous and previous.joined)
    if options.shared is not None and previous and not previous.joined:
        own = [n for n in previous.components if n in SHARED_STORES]
        if own:
            raise DeployError(f"this machine has an install of its own ({', '.join(own)}): a node that joins uses "
                              "the first node's stores. Join from a fresh machine, or uninstall here first "
                              "(confmeet uninstall)")
    names = options.components if options.components is not None else (
        previous.components if previous else ["coturn"] if joining else list(COMPONENTS))
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise DeployError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    if joining and any(n in SHARED_STORES for n in names):
        raise DeployError(f"a node that joins uses the install's stores: leave "
                          f"{', '.join(n for n in names if n in SHARED_STORES)} out of --components (coturn, for "
                          "this node's TURN, is what a joining node runs)")
    cluster_address = options.cluster_address if options.cluster_address is not None else (
        previous.cluster_address if previous else "")
    if cluster_address:
        try:
            address = ipaddress.ip_address(cluster_address)
        except ValueError:
            raise DeployError(f"--cluster-address {cluster_address!r} is not an IP address: give this machine's "
                              "address on the network its nodes share (e.g. 10.0.0.11)") from None
        if address.is_loopback or address.is_unspecified:
            raise DeployError(f"--cluster-address {cluster_address}: the other nodes cannot reach it; give this "
                              "machine's address on the network its nodes share (e.g. 10.0.0.11)")
        if mode == "native" and not joining:
            raise DeployError("--cluster-address needs --mode containers: Debian's PostgreSQL and Redis listen "
                              "where their own configuration says")
    gateway = options.gateway if options.gateway is not None else (previous.gateway if previous else "")
    for name in names:  # an exporter needs its store and the Prometheus that scrapes it
        store = COMPONENTS[name].exports
        missing = [n for n in (store, "prometheus") if store and n not in names]
        if missing and options.components is not None:
            raise DeployError(f"{name} exports {store}'s metrics to Prometheus: add {' and '.join(missing)} to "
                              f"--components, or leave {name} out")
    names = [n for n in names if not COMPONENTS[n].exports or {COMPONENTS[n].exports, "prometheus"} <= set(names)]
    if mode == "native":
        names = [n for n in names if n in NATIVE_UNITS]
    for name in [*options.ports, *options.images]:
        if name not in COMPONENTS and name != "appliance":
            raise DeployError(f"unknown component {name!r} in --port/--image; "
                              f"choose from appliance, {', '.join(COMPONENTS)}")
    defaults = {"appliance": APPLIANCE_PORT, **{n: c.port for n, c in COMPONENTS.items()}}
    ports: dict[str, int] = {}
    for name, default in defaults.items():
        if name in options.ports:
            ports[name] = options.ports[name]
        elif options.port_offset is not None:
            ports[name] = default + options.port_offset
        elif previous and name in previous.ports:
            ports[name] = previous.ports[name]
        else:
            ports[name] = default
    for name, port in ports.items():
        offsets = COMPONENTS[name].extra_ports.values() if name in COMPONENTS else []
        spread, below = max(offsets, default=0), min(min(offsets, default=0), 0)  # Jaeger's OTLP is below its UI
        if not 0 < port + below <= port <= 65535 - spread:
            raise DeployError(f"port {port} for {name} is out of range; choose a port from {1 - below} "
                              f"to {65535 - spread}")
    images = {n: options.images.get(n) or image_override_from_env(n)
              or (previous.images.get(n) if previous else None) or COMPONENTS[n].image for n in COMPONENTS}
    kept = dict(previous.secrets) if previous else {}
    for name in ("secret_key", "turn_secret"):
        kept.setdefault(name, secrets.token_urlsafe(48))
    for name in COMPONENTS:
        kept.setdefault(name, secrets.token_urlsafe(24))
    for address in options.public_ips or []:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise DeployError(f"--public-ip {address!r} is not an IP address: give the address this host "
                              "is reached at from outside its NAT (e.g. 203.0.113.10)") from None
    if options.retention_days is not None and not 0 < options.retention_days <= 3650:
        raise DeployError(f"--retention {options.retention_days}: give the days to keep metrics, logs and "
                          "traces, 1 to 3650")
    alerts = dict(previous.alerts) if previous else {}
    alerts.update(options.alerts or {})
    alerts = {k: v for k, v in alerts.items() if v}
    if alerts.get("alerts_email") and not alerts.get("alerts_smarthost"):
        raise DeployError("--alerts-email needs --alerts-smarthost HOST:PORT (the mail server Alertmanager "
                          "sends through)")
    if alerts.get("alerts_webhook_url") and not alerts["alerts_webhook_url"].startswith(("http://", "https://")):
        raise DeployError(f"--alerts-webhook {alerts['alerts_webhook_url']!r}: give an http:// or https:// URL")
    smarthost = alerts.get("alerts_smarthost", "")
    if smarthost and not smarthost.rpartition(":")[2].isdigit():
        raise DeployError(f"--alerts-smarthost {smarthost!r}: write HOST:PORT, e.g. mail.example.org:587")
    if options.asr_model is not None and options.asr_model not in ("base", "small"):
        raise DeployError(f"--asr-model {options.asr_model!r}: choose base or small")
    if (options.cert is None) != (options.key is None):
        raise DeployError("give both --cert and --key, or neither (a private CA is made then)")
    if options.cert is not None and options.key is not None:
        for path in (options.cert, options.key):
            if not path.is_file():
                raise DeployError(f"{path} does not exist; give the certificate and key files")
        tls = (str(options.cert.resolve()), str(options.key.resolve()), False)
    elif previous and not previous.tls_generated:
        tls = (previous.tls_cert, previous.tls_key, False)
    else:
        layout = Layout(options.root)
        tls = (str(layout.tls_dir / "cert.pem"), str(layout.tls_dir / "key.pem"), True)
    return InstallRecord(
        mode=mode, components=[n for n in COMPONENTS if n in names], ports=ports, images=images,
        secrets=kept,
        docker_url=options.docker_url or (previous.docker_url if previous else default_docker_url()),
        listen=options.listen or (previous.listen if previous else "0.0.0.0"),
        public_host=options.public_host or (previous.public_host if previous else socket.getfqdn()),
        public_ips=options.public_ips if options.public_ips is not None else (previous.public_ips if previous else []),
        asr_model=options.asr_model or (previous.asr_model if previous else ""),
        retention_days=options.retention_days or (previous.retention_days if previous else DEFAULT_RETENTION_DAYS),
        alerts=alerts,
        tls_cert=tls[0], tls_key=tls[1], tls_generated=tls[2], cluster_address=cluster_address,
        node_name=options.node_name or (previous.node_name if previous else ""),
        joined=options.joined or (previous.joined if previous else ""),
        shared=options.shared if options.shared is not None else (previous.shared if previous else {}),
        gateway=_gateway_listen(gateway, ports["appliance"]))


def _gateway_listen(listen: str, appliance_port: int) -> str:
    """--gateway as nginx's ``listen`` takes it: PORT, ADDRESS:PORT or [IPv6]:PORT."""
    if not listen:
        return ""
    match = re.fullmatch(r"(?:(\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?([0-9]{1,5})", listen)
    if match is None or not 0 < int(match.group(2)) <= 65535:
        raise DeployError(f"--gateway {listen!r}: give the port the gateway listens on (443), or ADDRESS:PORT")
    if int(match.group(2)) == appliance_port:
        raise DeployError(f"--gateway {listen}: the appliance listens on port {appliance_port} too; move the "
                          "appliance (--port appliance=8443) so that the gateway can take the public port")
    return listen


# ---------------------------------------------------------------------- the settings file
def _values(component: Component, record: InstallRecord, layout: Layout) -> dict[str, str]:
    port = record.ports[component.name]
    values = {"port": str(port), "bind": _bind(component.name, record), "password": record.secrets[component.name],
              "public_host": record.public_host, "config_dir": str(layout.config_dir),
              "model_repository": str(layout.model_repository),
              "retention": f"{record.retention_days}d", "retention_hours": str(record.retention_days * 24)}
    values.update({f"{name}_port": str(port + offset) for name, offset in component.extra_ports.items()})
    if component.exports:
        values.update(store_port=str(record.ports[component.exports]),
                      store_password=record.secrets[component.exports], store_bind=_bind(component.exports, record))
    return values


def _bind(name: str, record: InstallRecord) -> str:
    """Where a component listens: a shared store on the cluster address, all else on loopback."""
    return record.cluster_address if record.cluster_address and name in SHARED_STORES else LOOPBACK


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


def health_url(name: str, record: InstallRecord, layout: Layout) -> str:
    """Where a component with a ``health`` URL answers 200 when it is up ("" for the others)."""
    component = COMPONENTS[name]
    return _fill(component.health, _values(component, record, layout)) if component.health else ""


def health_context(name: str, record: InstallRecord, layout: Layout) -> ssl.SSLContext | None:
    """How to check the certificate of a component that serves HTTPS (``tls``) on loopback: against
    the install's private CA (its certificate names 127.0.0.1); an operator's certificate (--cert)
    names the public host, not loopback: not checked here, as the appliance's own health probe
    does not (the doctor checks certificates). None for plain HTTP."""
    if not COMPONENTS[name].tls:
        return None
    if record.tls_generated:
        return ssl.create_default_context(cafile=str(layout.tls_dir / "ca.pem"))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def public_url(record: InstallRecord) -> str:
    port = record.appliance_port
    return f"https://{record.public_host}" + ("" if port == 443 else f":{port}")


def native_urls(record: InstallRecord) -> dict[str, str]:
    """Store URLs for Debian's own servers on their standard ports."""
    urls = {}
    if "postgresql" in record.components:
        urls["database"] = f"postgresql://confmeet:{record.secrets['postgresql']}@{LOOPBACK}:5432/confmeet"
    if "redis" in record.components:
        urls["bus"] = f"redis://{LOOPBACK}:6379/0"
    return urls


def turn_urls(record: InstallRecord, layout: Layout) -> list[str]:
    """What browsers are handed: TURN over UDP/TCP and TURN over TLS (for networks that pass
    only TLS), both at the public host name."""
    if "coturn" not in record.components:
        return []
    coturn = COMPONENTS["coturn"]
    if record.mode == "native":
        return [f"turn:{record.public_host}:3478", f"turns:{record.public_host}:5349?transport=tcp"]
    values = _values(coturn, record, layout)
    return [_fill(coturn.url, values), _fill(coturn.tls_url, values)]


def settings_for(record: InstallRecord, layout: Layout) -> dict[str, Any]:
    """The appliance's settings (confmeet.toml) for this install; stores left out stay embedded."""
    values: dict[str, Any] = {
        "data_dir": str(layout.data_dir), "host": record.listen, "port": record.appliance_port,
        "public_url": public_url(record), "secret_key": record.secrets["secret_key"],
        "turn_secret": record.secrets["turn_secret"], "tls_cert": record.tls_cert, "tls_key": record.tls_key,
    }
    if record.mode == "native":
        urls = native_urls(record)
    else:
        urls = {COMPONENTS[n].setting: _fill(COMPONENTS[n].url, _values(COMPONENTS[n], record, layout))
                for n in record.components if n != "coturn" and COMPONENTS[n].setting}
    values.update(urls)
    values.update(record.alerts)
    if record.shared:  # a joining node: the install's secrets, stores and settings, as the first node has them
        values.update({k: v for k, v in record.shared.items() if k not in NODE_SETTINGS and k not in urls})
    if "coturn" in record.components:
        values["ice_servers"] = turn_urls(record, layout)
    if record.public_ips:
        values["announced_addresses"] = list(record.public_ips)
    if record.node_name:
        values["node_name"] = record.node_name
    if record.cluster_address:
        values["node_url"] = f"https://{host_port(record.cluster_address, record.appliance_port)}"
    if record.cluster_address or record.joined or record.gateway:  # a node of several, behind the gateway
        # Each request's X-Forwarded-For names the client, so that per-address limits count people,
        # not the gateway (every sign-in failure would lock everyone out).
        values["forwarded_proxies"] = 1
        if record.tls_generated:
            values["node_ca_file"] = str(layout.tls_dir / "ca.pem")  # every node's certificate is the install CA's
    return values


def embedded_settings(record: InstallRecord) -> dict[str, str]:
    """Settings no deployed component serves, and what the appliance uses instead."""
    served = set(native_urls(record)) | ({"ice_servers"} if "coturn" in record.components else set()) \
        if record.mode == "native" else {COMPONENTS[n].setting for n in record.components}
    served |= set(record.shared)
    return {setting: text for setting, text in EMBEDDED.items() if setting not in served}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def render_settings(record: InstallRecord, layout: Layout) -> str:
    lines = [f"# Written by 'confmeet install' {__version__}; a second install converges to the same file.",
             "# Secrets and store passwords live here and in install.json: keep both mode 0600."]
    for setting, text in embedded_settings(record).items():
        lines.append(f"# {setting}: {text}")
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings_for(record, layout).items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the journal
@dataclass
class Journal:
    """What one run created or replaced, in order, each with the way to take it back."""

    entries: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)

    def created(self, what: str, undo: Callable[[], None]) -> None:
        self.entries.append((what, undo))

    def rollback(self) -> tuple[list[str], list[str]]:
        """Undo in reverse order; returns (what was removed or restored, what could not be)."""
        done, failed = [], []
        for what, undo in reversed(self.entries):
            try:
                undo()
                done.append(what)
            except Exception as exc:  # keep undoing the rest; report this one
                failed.append(f"{what}: {exc}")
        self.entries.clear()
        return done, failed


def write_file(path: Path, text: str | bytes, mode: int, journal: Journal, what: str,
               group: int | None = None) -> str:
    """Write atomically with ``mode`` (and ``group``); journal the previous content. Returns
    created/updated/kept."""
    data = text.encode() if isinstance(text, str) else text
    before = path.read_bytes() if path.exists() else None
    if before == data and (path.stat().st_mode & 0o777) == mode and group in (None, path.stat().st_gid):
        return "kept"
    write_atomically(path, data, mode, group)  # type: ignore[arg-type]
    if before is None:
        journal.created(what, lambda: path.unlink(missing_ok=True))
        return "created"

    def restore() -> None:
        path.write_bytes(before)

    journal.created(f"{what} (previous content restored)", restore)
    return "updated"


def make_dir(path: Path, mode: int, journal: Journal) -> str:
    if path.is_dir():
        return "kept"
    top = path
    while not top.parent.exists():
        top = top.parent
    path.mkdir(mode=mode, parents=True)
    path.chmod(mode)
    journal.created(str(top), lambda: shutil.rmtree(top, ignore_errors=True))
    return "created"


# ---------------------------------------------------------------------- containers
@dataclass(frozen=True)
class ContainerSpec:
    component: str
    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    volumes: dict[str, dict[str, str]]
    healthcheck: list[str]
    gpu: bool
    shm_size: str
    stop_signal: str
    root: str
    user: str = ""
    config: str = ""  # sha256 of the files rendered for it (a changed file recreates the container)

    def create_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "image": self.image, "name": self.name, "command": self.command, "environment": self.environment,
            "volumes": self.volumes, "network_mode": "host", "restart_policy": {"Name": "unless-stopped"},
            "init": True,  # signals reach the server even where it runs as PID 1 without a handler
            "labels": {COMPONENT_LABEL: self.component, ROOT_LABEL: self.root},
            "log_config": docker.types.LogConfig(type="json-file", config={"max-size": "20m", "max-file": "3"}),
            "detach": True,
        }
        if self.healthcheck:
            args["healthcheck"] = {"test": self.healthcheck, "interval": HEALTH_INTERVAL_NS,
                                   "timeout": HEALTH_INTERVAL_NS, "retries": 5,
                                   "start_period": 12 * HEALTH_INTERVAL_NS}
        if self.gpu:
            args["device_requests"] = [docker.types.DeviceRequest(driver="nvidia", count=-1,
                                                                   capabilities=[["gpu"]])]
        if self.shm_size:
            args["shm_size"] = self.shm_size
        if self.stop_signal:
            args["stop_signal"] = self.stop_signal
        if self.user:
            args["user"] = self.user
        return args

    def digest(self, image_id: str) -> str:
        """Changes when anything the container is made from does (the image's content included)."""
        spec = {k: v for k, v in asdict(self).items() if v or k not in ("user", "config")}
        return hashlib.sha256(json.dumps([spec, image_id], sort_keys=True).encode()).hexdigest()[:20]


def container_spec(name: str, record: InstallRecord, layout: Layout, gpu: bool) -> ContainerSpec:
    component = COMPONENTS[name]
    values = _values(component, record, layout)
    volumes = {}
    if component.volume:
        volumes[component.volume_name] = {"bind": component.volume, "mode": "rw"}
    for source, target in component.mounts.items():
        volumes[_fill(source, values)] = {"bind": target, "mode": "ro"}
    for source, target in component.optional_mounts.items():
        if Path(_fill(source, values)).exists():
            volumes[_fill(source, values)] = {"bind": target, "mode": "ro"}
    image = record.images[name]
    if component.python_packages:  # run the image derived from the base with the models' wheels
        from .images import triton_tag

        image = triton_tag(image, __version__)
    return ContainerSpec(
        component=name, name=component.container, image=image,
        command=[_fill(word, values) for word in component.command],
        environment={k: _fill(v, values) for k, v in component.environment.items()},
        volumes=volumes, healthcheck=[_fill(word, values) for word in component.healthcheck],
        gpu=component.gpu and gpu, shm_size=component.shm_size, stop_signal=component.stop_signal,
        root=str(layout.root), user=component.user, config=config_digest(name, record, layout))


def config_digest(name: str, record: InstallRecord, layout: Layout) -> str:
    files = component_files(name, record, layout)
    if not files:
        return ""
    text = json.dumps({str(path): data.hex() for path, (data, _) in sorted(files.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------- the observability layer's files
MONITORING = "monitoring"  # under the configuration directory: one folder per component, mounted
LAYER = ("prometheus", "alertmanager", "jaeger", "grafana", "loki", "promtail")  # configured by files here


def monitoring_dir(layout: Layout) -> Path:
    return layout.config_dir / MONITORING


def component_files(name: str, record: InstallRecord, layout: Layout) -> dict[Path, tuple[bytes, int]]:
    """The files the installer writes for component ``name`` (path → content, mode): its
    configuration, rendered for this install's ports and the other components it has."""
    if record.mode != "containers" or (name not in LAYER and not COMPONENTS[name].tls):
        return {}
    where = monitoring_dir(layout) / name

    def address(component: str, port: str = "{port}") -> str:
        values = _values(COMPONENTS[component], record, layout)
        return f"{values['bind']}:{port.format(**values)}"

    installed = set(record.components)
    values = _values(COMPONENTS[name], record, layout)
    files: dict[Path, tuple[bytes, int]] = {}
    if COMPONENTS[name].tls:  # the appliance's certificate and key, renewed with it (the container's group: 0)
        for file, path, mode in (("cert.pem", record.tls_cert, 0o644), ("key.pem", record.tls_key, 0o640)):
            if Path(path).exists():
                files[where / "tls" / file] = (Path(path).read_bytes(), mode)
    if name == "prometheus":
        from .ports import loopback_for

        ca = layout.tls_dir / "ca.pem"
        scraped = [n for n in record.components if COMPONENTS[n].metrics]
        scrape = observability.Scrape(
            appliance=f"{loopback_for(record.listen)}:{record.appliance_port}",
            alertmanager=address("alertmanager") if "alertmanager" in installed else "",
            triton=address("triton", "{metrics_port}") if "triton" in installed else "", https=True,
            ca_file="/etc/prometheus/ca.pem" if record.tls_generated else "",
            server_name="" if record.tls_generated else record.public_host,
            jobs=tuple((job, _fill(COMPONENTS[job].metrics, _values(COMPONENTS[job], record, layout)))
                       for job in scraped),
            https_jobs=tuple(job for job in scraped if COMPONENTS[job].tls))
        config = observability.prometheus_config(scrape, "/etc/prometheus/alerts.yml")
        files[where / "prometheus.yml"] = (config.encode(), 0o644)
        files[where / "alerts.yml"] = (observability.ALERTS.read_bytes(), 0o644)
        if record.tls_generated and ca.exists():
            files[where / "ca.pem"] = (ca.read_bytes(), 0o644)
    elif name == "alertmanager":
        files[where / "alertmanager.yml"] = (observability.alertmanager_config(
            webhook_url=record.alerts.get("alerts_webhook_url", ""), email=record.alerts.get("alerts_email", ""),
            smarthost=record.alerts.get("alerts_smarthost", "")).encode(), 0o644)
    elif name == "grafana":
        def url(component: str) -> str:
            scheme = "https" if COMPONENTS[component].tls else "http"
            return f"{scheme}://{address(component)}" if component in installed else ""

        sources = observability.grafana_datasources(url("prometheus"), url("loki"), url("jaeger"))
        files[where / "provisioning/datasources/confmeet.yml"] = (sources.encode(), 0o644)
        files[where / "provisioning/dashboards/confmeet.yml"] = (
            (observability.OBSERVABILITY_DIR / "grafana" / "dashboards.yml").read_bytes(), 0o644)
        for board in sorted(observability.DASHBOARDS_DIR.glob("*.json")):
            files[where / "dashboards" / board.name] = (board.read_bytes(), 0o644)
    elif name == "loki":
        config = observability.loki_config(values["bind"], record.ports["loki"], int(values["grpc_port"]),
                                           values["retention"])
        files[where / "loki.yml"] = (config.encode(), 0o644)
    elif name == "promtail":
        loki = f"http://{address('loki')}" if "loki" in installed else "http://127.0.0.1:8805"
        config = observability.promtail_config(values["bind"], record.ports["promtail"], loki)
        files[where / "promtail.yml"] = (config.encode(), 0o644)
    return files


def docker_client(url: str, timeout: int = 120) -> docker.DockerClient:
    """A client for the engine at ``url``; DeployError with the fix when it does not answer."""
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.RequestException) as exc:
        if "Permission denied" in str(exc):
            raise DeployError(f"no permission to use the Docker Engine at {url}: run as root or as "
                              "a member of the docker group") from None
        raise DeployError(f"no Docker Engine answers at {url}: install docker.io and start it "
                          "(systemctl start docker), pass --docker-url, or use --mode native") from None


@dataclass
class ContainerPlan:
    """What converging one component's container will do, found before anything changes."""

    spec: ContainerSpec
    action: Literal["create", "keep", "start", "recreate"]
    image_present: bool
    reason: str = ""


class Engine:
    """The Docker Engine, as the installer uses it."""

    def __init__(self, client: docker.DockerClient, root: Path = Path("/")) -> None:
        self.client = client
        self.root = str(root)

    def image_id(self, ref: str) -> str | None:
        try:
            return self.client.images.get(ref).id
        except docker.errors.ImageNotFound:
            return None

    def plan(self, spec: ContainerSpec) -> ContainerPlan:
        image_id = self.image_id(spec.image)
        try:
            existing = self.client.containers.get(spec.name)
        except docker.errors.NotFound:
            return ContainerPlan(spec, "create", image_id is not None)
        if image_id is None or existing.labels.get(SPEC_LABEL) != spec.digest(image_id):
            return ContainerPlan(spec, "recreate", image_id is not None, "its image or settings changed")
        if existing.status != "running":
            return ContainerPlan(spec, "start", True, f"it is {existing.status}")
        return ContainerPlan(spec, "keep", True)

    def ensure_image(self, ref: str, component: str) -> str:
        image_id = self.image_id(ref)
        if image_id is not None:
            return image_id
        try:
            return self.client.images.pull(ref).id
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise DeployError(
                f"the image {ref} for {component} is not in the engine and cannot be pulled ({exc}); "
                f"without registry access install from an offline bundle (--bundle FILE), or choose "
                f"another image with --image {component}=REF") from None

    def converge(self, spec: ContainerSpec, journal: Journal) -> str:
        """Make the container match its spec; returns what was done."""
        try:
            image_id = self.ensure_image(spec.image, spec.component)
            plan = self.plan(spec)  # again: a bundle may have brought a new image under the same name
            for name, volume in spec.volumes.items():
                if "/" not in name:
                    self._ensure_volume(name, spec.component, journal)
            if plan.action in ("keep", "start"):
                container = self.client.containers.get(spec.name)
                if container.status != "running":
                    container.start()
                    return "started"
                return "kept"
            if plan.action == "recreate":
                self.remove(spec.name)
                journal.replaced.append(spec.name)
            args = spec.create_args()
            args["labels"][SPEC_LABEL] = spec.digest(image_id)
            container = self.client.containers.create(**args)
            journal.created(f"container {spec.name}", lambda: container.remove(force=True))
            container.start()
            return "recreated" if plan.action == "recreate" else "created"
        except docker.errors.APIError as exc:
            raise DeployError(f"Docker could not run {spec.name}: {exc.explanation or exc}") from None

    def remove(self, name: str) -> None:
        """Stop a container cleanly and remove it (its volume stays)."""
        try:
            container = self.client.containers.get(name)
            container.stop(timeout=STOP_TIMEOUT)
            container.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise DeployError(f"Docker could not remove {name}: {exc.explanation or exc}") from None

    def _ensure_volume(self, name: str, component: str, journal: Journal) -> None:
        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            volume = self.client.volumes.create(name, labels={COMPONENT_LABEL: component, ROOT_LABEL: self.root})
            journal.created(f"volume {name}", lambda: volume.remove(force=True))

    def container_state(self, name: str) -> tuple[str, str, int]:
        """(status, health or "", restart count) of a container; ("missing", "", 0) if absent."""
        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return "missing", "", 0
        state = container.attrs.get("State", {})
        return container.status, (state.get("Health") or {}).get("Status", ""), \
            int(container.attrs.get("RestartCount", 0))

    def logs(self, name: str, lines: int = 8) -> str:
        try:
            return self.client.containers.get(name).logs(tail=lines).decode(errors="replace").strip()
        except docker.errors.DockerException:
            return ""

    def installed(self) -> list[Any]:
        """The containers this install (into its root) made."""
        return [c for c in self.client.containers.list(all=True, filters={"label": COMPONENT_LABEL})
                if c.labels.get(ROOT_LABEL) == self.root]

    def volumes(self) -> list[Any]:
        """The volumes this install made (the data: kept unless purged)."""
        return [v for v in self.client.volumes.list(filters={"label": COMPONENT_LABEL})
                if (v.attrs.get("Labels") or {}).get(ROOT_LABEL) == self.root]


# ---------------------------------------------------------------------- host steps


def media_addresses(record: InstallRecord) -> list[str]:
    """The appliance's own media addresses: where the SFU's ICE gathers host candidates (every
    address of this host but loopback; aioice's own list), which coturn must relay to."""
    from aioice.ice import get_host_addresses

    return sorted(get_host_addresses(use_ipv4=True, use_ipv6=True))


def service_user_exists() -> bool:
    try:
        pwd.getpwnam(SERVICE_USER)
        return True
    except KeyError:
        return False


def create_service_user() -> str:
    """The confmeet system user (systemd-sysusers with the shipped file, else useradd)."""
    if service_user_exists():
        return "kept"
    sysusers = Path("/usr/lib/sysusers.d/confmeet.conf")
    try:
        sysusers.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(units.shipped(units.SYSUSERS), sysusers)
        argv = ["systemd-sysusers", str(sysusers)] if shutil.which("systemd-sysusers") else \
            ["useradd", "--system", "--home-dir", "/var/lib/confmeet", "--shell", "/usr/sbin/nologin", SERVICE_USER]
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError, units.UnitError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise DeployError(f"cannot create the {SERVICE_USER} user: {detail.strip()}; "
                          f"create it with 'useradd --system {SERVICE_USER}' and rerun") from None
    return "created"


def give_to_service_user(paths: list[Path]) -> None:
    entry = pwd.getpwnam(SERVICE_USER)
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)


def unit_file(root: Path, unit: str) -> Path | None:
    """Where ``unit`` is installed under ``root``, if it is."""
    for directory in UNIT_SEARCH:
        path = root / directory / unit
        if path.exists():
            return path
    return None


def systemd_running(layout: Layout) -> bool:
    return layout.is_host and Path("/run/systemd/system").is_dir()


def create_native_database(password: str) -> None:
    """The confmeet role and database in Debian's PostgreSQL (as the postgres user)."""
    statements = [
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'confmeet') THEN "
        f"CREATE ROLE confmeet LOGIN PASSWORD '{password}'; END IF; END$$;",
    ]
    try:
        for sql in statements:
            subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           check=True, capture_output=True, text=True)
        exists = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-tAc",
                                 "SELECT 1 FROM pg_database WHERE datname = 'confmeet'"],
                                check=True, capture_output=True, text=True).stdout.strip()
        if not exists:
            subprocess.run(["runuser", "-u", "postgres", "--", "createdb", "-O", "confmeet", "confmeet"],
                           check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise DeployError(f"cannot create the PostgreSQL role and database: {detail.strip()}; "
                          "start PostgreSQL (systemctl start postgresql) and rerun") from None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
