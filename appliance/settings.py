"""The appliance's settings: one TOML file, overridden by CONFMEET_* environment variables.

With nothing configured every backing service is embedded under the data directory, and the
secrets are generated once and kept in ``<data_dir>/secrets.toml`` (mode 0600).
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .fsutil import write_atomically

DEFAULT_CONFIG = Path("/etc/confmeet/confmeet.toml")
ENV_PREFIX = "CONFMEET_"
SECRET_FIELDS = ("secret_key", "turn_secret")
MASKED_FIELDS = (*SECRET_FIELDS, "metrics_token", "ldap_bind_password", "oidc_client_secret")  # never shown by ``config show``
POSITIVE_FIELDS = ("setup_link_seconds", "session_check_seconds", "throttle_window_seconds", "lockout_seconds",
                   "lockout_max_seconds", "login_failures_per_account", "login_failures_per_address",
                   "password_failures_per_meeting", "password_failures_per_address", "guest_tokens_per_address",
                   "chat_messages_per_10s", "max_tracks_per_participant", "max_waiting_per_meeting",
                   "ai_concurrent_decodes", "turn_credential_minutes", "recording_sync_seconds",
                   "stop_timeout_seconds")


class SettingsError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/confmeet")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "confmeet"


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8800
    public_url: str = ""
    # Backing services, each a URL; empty means the embedded default under data_dir.
    database: str = ""
    bus: str = "memory://"
    documents: str = ""
    objects: str = ""
    inference: str = "local://"
    # Triton's model repository, which local:// inference loads too; empty: <data_dir>/model_repository.
    model_repository: str = ""
    # Secrets: generated and kept under data_dir when not configured.
    secret_key: str = ""
    turn_secret: str = ""
    # HTTP
    cors_origins: list[str] = field(default_factory=list)
    tls_cert: str = ""
    tls_key: str = ""
    max_request_bytes: int = 1_000_000
    max_upload_bytes: int = 25 * 1024 * 1024  # files shared in a meeting's chat
    # Reverse proxies in front of the appliance whose X-Forwarded-For names the client (0: none):
    # the per-address limits below count the client, not the proxy.
    forwarded_proxies: int = 0
    # /metrics answers these addresses, and anyone with the bearer token metrics_token (if set).
    metrics_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    metrics_token: str = ""
    # Where Alertmanager sends alerts (written by `confmeet install --alerts-*`): a webhook, and/or
    # e-mail to alerts_email through the mail server alerts_smarthost (HOST:PORT).
    alerts_webhook_url: str = ""
    alerts_email: str = ""
    alerts_smarthost: str = ""
    # Accounts
    allow_registration: bool = False
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    setup_link_seconds: int = 3600  # how long the first-start setup link works
    # Sign-in through an LDAP directory (OpenLDAP, Active Directory) beside local accounts
    # (appliance/directory.py); empty ldap_url: off. ldaps://HOST:636, or ldap://HOST:389 with
    # StartTLS (ldap_start_tls); the directory's certificate is checked against ldap_ca_file (empty:
    # the system's CAs). The appliance finds users with ldap_bind_dn (empty: anonymously) under
    # ldap_user_base by ldap_user_filter ({login}: what the user typed; Active Directory:
    # "(userPrincipalName={login})"), then binds as the user with the password typed.
    ldap_url: str = ""
    ldap_start_tls: bool = True
    ldap_ca_file: str = ""
    ldap_bind_dn: str = ""
    ldap_bind_password: str = ""
    ldap_user_base: str = ""
    ldap_user_filter: str = "(mail={login})"
    ldap_email_attribute: str = "mail"
    ldap_name_attribute: str = "cn"
    ldap_admin_group: str = ""  # DN of the group whose members are administrators (read at each sign-in)
    ldap_allowed_group: str = ""  # DN of the group whose members alone may sign in (empty: anyone found)
    # Sign-in with an OpenID provider (appliance/oidc.py); empty oidc_issuer: off. Register
    # PUBLIC_URL/api/v1/auth/oidc/callback as the client's redirect URI at the provider. The
    # groups claim's oidc_admin_group makes administrators; oidc_allowed_groups and
    # oidc_allowed_domains (e-mail domains), when set, limit who may sign in.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_name: str = "single sign-on"  # the sign-in button reads "Sign in with <oidc_name>"
    oidc_scopes: str = "openid email profile"
    oidc_ca_file: str = ""
    oidc_groups_claim: str = "groups"
    oidc_admin_group: str = ""
    oidc_allowed_groups: list[str] = field(default_factory=list)
    oidc_allowed_domains: list[str] = field(default_factory=list)
    session_check_seconds: int = 60  # how often an open WebSocket's sign-in is checked again
    log_level: str = "INFO"
    # auto: JSON lines when stdout is not a terminal (systemd/journald, a container), text on one.
    log_format: str = "auto"
    # Throttling (appliance/throttle.py): attempts counted over throttle_window_seconds; past the
    # limit, the key is locked out for lockout_seconds, doubling with each lockout in a row up to
    # lockout_max_seconds.
    throttle_window_seconds: int = 600
    lockout_seconds: int = 60
    lockout_max_seconds: int = 3600
    login_failures_per_account: int = 10
    login_failures_per_address: int = 30
    password_failures_per_meeting: int = 30  # meeting passwords: guest tokens and signaling joins
    password_failures_per_address: int = 10
    guest_tokens_per_address: int = 30
    # Meetings
    chat_messages_per_10s: int = 10  # per participant
    max_tracks_per_participant: int = 4  # tracks one participant publishes (microphone, camera, screen, its audio)
    max_waiting_per_meeting: int = 50  # knocks waiting in a lobby
    # Uploaded audio decoded at once for /api/v1/ai/* (a 3 h file is ~700 MB of samples)
    ai_concurrent_decodes: int = 2
    # Media (WebRTC): UDP ports the SFU binds, addresses to announce behind 1:1 NAT, the STUN/TURN
    # servers handed to clients (never a public server by default), and a loopback-only mode
    # for tests on one machine.
    # Below Linux's ephemeral range (32768-60999), so outgoing connections never hold them.
    media_udp_min: int = 20000
    media_udp_max: int = 20999
    announced_addresses: list[str] = field(default_factory=list)
    ice_servers: list[str] = field(default_factory=list)
    turn_credential_minutes: int = 10  # TURN credentials are made per join (per seat) and open relays this long
    media_loopback: bool = False
    # SFU worker processes the rooms are spread over; 0: one per core this process may use. Each
    # takes an equal slice of the media UDP port range.
    sfu_workers: int = 0
    # Several nodes (appliance/cluster.py; on when 'bus' is Redis, which every node shares): this
    # node's name (empty: the host name) and the URL the other nodes reach it at (empty:
    # http://<host name>:<port>, or http://<host>:<port> when 'host' is one address).
    node_name: str = ""
    node_url: str = ""
    # The CA the other nodes' certificates are checked against when this node relays to one over
    # https (empty: the system's CAs). `confmeet install --join` writes the install's private CA here.
    node_ca_file: str = ""
    # Cameras each participant receives: those of the N who spoke most recently (0: everyone's).
    # A screen share always reaches everyone.
    last_n: int = 25
    # Recording: days a recording is kept (0: until deleted), and the free disk space under which
    # a recording stops (it is written to <data_dir>/recordings first).
    recording_retention_days: int = 0
    recording_min_free_mb: int = 500
    # How often a running recording's files are forced to the disk (fsync): what a power cut can
    # lose of it on top of the last half second a killed process loses.
    recording_sync_seconds: int = 1
    # A stop (SIGTERM) finishes recordings, releases seats and checkpoints jobs within this many
    # seconds; whatever is left is repaired at the next start. The unit's TimeoutStopSec is longer.
    stop_timeout_seconds: int = 20
    # Traces (appliance/tracing.py): the OTLP/HTTP endpoint spans are sent to (Jaeger's, say
    # http://127.0.0.1:4318; empty: tracing off), and the share of traces kept (0 to 1).
    trace_endpoint: str = ""
    trace_sample_ratio: float = 1.0
    # Where the values came from (file path or "defaults"); not a setting itself.
    source: str = "defaults"

    # ------------------------------------------------------------------ derived values
    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'confmeet.db'}"

    @property
    def documents_url(self) -> str:
        return self.documents or f"sqlite:///{self.data_dir / 'documents.db'}"

    @property
    def objects_url(self) -> str:
        return self.objects or f"file://{self.data_dir / 'objects'}"

    @property
    def model_repository_path(self) -> Path:
        return Path(self.model_repository).expanduser() if self.model_repository else self.data_dir / "model_repository"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def node(self) -> str:
        return self.node_name or socket.gethostname()

    @property
    def internal_url(self) -> str:
        """Where the other nodes reach this one (its relayed signaling)."""
        if self.node_url:
            return self.node_url.rstrip("/")
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host_port(host, self.port)}"

    def effective(self, mask_secrets: bool = True) -> dict[str, Any]:
        """The settings as an operator sees them: embedded defaults spelled out, secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            if f.name in ("database", "documents", "objects"):
                value = getattr(self, f"{f.name}_url")
            if isinstance(value, Path):
                value = str(value)
            if mask_secrets and f.name in MASKED_FIELDS:
                value = "********" if value else "(not set)"
            elif mask_secrets and isinstance(value, str) and "://" in value:
                value = mask_url_password(value)
            out[f.name] = value
        return out

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        checks = {
            "database": (self.database_url, {"sqlite", "postgresql", "postgres"}),
            "bus": (self.bus, {"memory", "redis"}),
            "documents": (self.documents_url, {"sqlite", "mongodb"}),
            "objects": (self.objects_url, {"file", "s3"}),
            "inference": (self.inference, {"local", "triton"}),
        }
        for name, (url, schemes) in checks.items():
            scheme = urlsplit(url).scheme
            if scheme not in schemes:
                allowed = ", ".join(f"{s}://" for s in sorted(schemes))
                raise SettingsError(
                    f"setting '{name}' = {mask_url_password(url)!r} is not a URL confmeet knows; "
                    f"use one of {allowed} (set it in the config file or {ENV_PREFIX}{name.upper()})"
                )
        if urlsplit(self.inference).scheme == "triton":
            try:
                triton_addresses(self.inference)
            except ValueError as exc:
                raise SettingsError(f"setting 'inference' = {self.inference!r}: {exc} (set it in the config file "
                                    f"or {ENV_PREFIX}INFERENCE)") from None
        if not 0 < self.port < 65536:
            raise SettingsError(f"setting 'port' = {self.port} must be between 1 and 65535")
        if not (1024 <= self.media_udp_min <= self.media_udp_max <= 65535):
            raise SettingsError(f"media UDP ports {self.media_udp_min}-{self.media_udp_max}: set "
                                "1024 <= media_udp_min <= media_udp_max <= 65535")
        if self.last_n < 0:
            raise SettingsError(f"last_n = {self.last_n}: set 0 (every camera) or how many cameras each participant receives")
        if self.sfu_workers < 0:
            raise SettingsError(f"sfu_workers = {self.sfu_workers}: set 0 (one per core) or a number of processes")
        for name in POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise SettingsError(f"setting '{name}' = {getattr(self, name)} must be 1 or more")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError(f"setting 'log_format' = {self.log_format!r}: use auto, json or text")
        if self.forwarded_proxies < 0:
            raise SettingsError(f"setting 'forwarded_proxies' = {self.forwarded_proxies} must be 0 or more")
        for server in self.ice_servers:
            if urlsplit(server).scheme not in ("stun", "stuns", "turn", "turns"):
                raise SettingsError(f"ice_servers entry {server!r}: use stun:HOST:PORT or turn:HOST:PORT")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("set both 'tls_cert' and 'tls_key', or neither")
        for path_name in ("tls_cert", "tls_key", "node_ca_file"):
            path = getattr(self, path_name)
            if path and not Path(path).is_file():
                raise SettingsError(f"setting '{path_name}' names {path}, which does not exist")
        self._validate_ldap()
        self._validate_oidc()
        trace_url = urlsplit(self.trace_endpoint)
        if self.trace_endpoint and (trace_url.scheme not in ("http", "https") or not trace_url.netloc):
            raise SettingsError(f"setting 'trace_endpoint' = {self.trace_endpoint!r}: use the OTLP/HTTP base URL, "
                                "http://HOST:4318 (or https://), or leave it empty to turn tracing off")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise SettingsError(f"setting 'trace_sample_ratio' = {self.trace_sample_ratio} must be between 0 and 1 "
                                "(the share of traces kept)")


    def _validate_ldap(self) -> None:
        if not self.ldap_url:
            return
        url = urlsplit(self.ldap_url)
        if url.scheme not in ("ldap", "ldaps") or not url.hostname:
            raise SettingsError(f"setting 'ldap_url' = {self.ldap_url!r}: use ldaps://HOST:636 or ldap://HOST:389 "
                                "(with ldap_start_tls), or leave it empty to turn directory sign-in off")
        if url.scheme == "ldap" and not self.ldap_start_tls:
            raise SettingsError("ldap_url is ldap:// and ldap_start_tls is off: passwords would cross the network in "
                                "clear; set ldap_start_tls = true or use an ldaps:// URL")
        if not self.ldap_user_base:
            raise SettingsError("ldap_url is set but ldap_user_base is not: set the DN users are found under, "
                                "e.g. ldap_user_base = \"ou=people,dc=example,dc=org\"")
        if "{login}" not in self.ldap_user_filter or not self.ldap_user_filter.startswith("("):
            raise SettingsError(f"setting 'ldap_user_filter' = {self.ldap_user_filter!r}: an LDAP filter in "
                                "parentheses naming {login}, e.g. \"(mail={login})\" or \"(uid={login})\"")
        try:
            self.ldap_user_filter.format(login="x")
        except (IndexError, KeyError, ValueError):
            raise SettingsError(f"setting 'ldap_user_filter' = {self.ldap_user_filter!r}: only {{login}} may be in "
                                "braces") from None
        if bool(self.ldap_bind_dn) != bool(self.ldap_bind_password):
            raise SettingsError("set both 'ldap_bind_dn' and 'ldap_bind_password' (the account that finds users), "
                                "or neither (anonymous search)")
        if self.ldap_ca_file and not Path(self.ldap_ca_file).is_file():
            raise SettingsError(f"setting 'ldap_ca_file' names {self.ldap_ca_file}, which does not exist")


    def _validate_oidc(self) -> None:
        if not self.oidc_issuer:
            return
        url = urlsplit(self.oidc_issuer)
        loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise SettingsError(f"setting 'oidc_issuer' = {self.oidc_issuer!r}: the provider's issuer URL, https:// "
                                "(http:// only on loopback), or leave it empty to turn OpenID sign-in off")
        if not self.oidc_client_id:
            raise SettingsError("oidc_issuer is set but oidc_client_id is not: register confmeet as a client at the "
                                "provider and set its client ID (and oidc_client_secret for a confidential client)")
        if "openid" not in self.oidc_scopes.split():
            raise SettingsError(f"setting 'oidc_scopes' = {self.oidc_scopes!r} must include openid")
        if self.oidc_ca_file and not Path(self.oidc_ca_file).is_file():
            raise SettingsError(f"setting 'oidc_ca_file' names {self.oidc_ca_file}, which does not exist")
        if not self.public_url and self.host in ("0.0.0.0", "::"):
            raise SettingsError("OpenID sign-in needs the address browsers use: set public_url (the provider sends "
                                "them back to PUBLIC_URL/api/v1/auth/oidc/callback)")


# Settings that belong to one node: the rest of an install's settings are the same on every node
# and are what a joining node is handed (``shared_settings``; ``confmeet install --join``). Files
# named by a setting (ldap_ca_file, oidc_ca_file) are this machine's: copy them and set them on each
# node. trace_endpoint is the node's own Jaeger (on its loopback).
NODE_SETTINGS = frozenset({
    "data_dir", "host", "port", "tls_cert", "tls_key", "node_name", "node_url", "node_ca_file", "ice_servers",
    "announced_addresses", "media_udp_min", "media_udp_max", "media_loopback", "sfu_workers", "metrics_addresses",
    "ldap_ca_file", "oidc_ca_file", "trace_endpoint", "source"})


def shared_settings(settings: Settings) -> dict[str, Any]:
    """What every node of this install must share, as a settings file would say it: each setting
    not in NODE_SETTINGS that differs from its default (the secrets and the stores' URLs among them)."""
    defaults = Settings()
    shared: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name not in NODE_SETTINGS and value != getattr(defaults, f.name):
            shared[f.name] = str(value) if isinstance(value, Path) else value
    return shared


def host_port(host: str, port: int) -> str:
    """HOST:PORT as a URL or an nginx upstream writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


TRITON_FORM = "triton://HOST:PORT, or several servers as one pool: triton://HOST1:PORT,HOST2:PORT"


def triton_addresses(url: str) -> list[str]:
    """The HOST:PORT of each Triton server a ``triton://`` URL names: one, or several, comma-separated,
    that the appliance uses as a pool (appliance/inference/pool.py). A server without a port is on
    Triton's HTTP port, 8000. Raises ValueError saying which server of the list is wrong."""
    addresses: list[str] = []
    servers = url.partition("://")[2].partition("/")[0].split(",")
    for number, server in enumerate(servers, 1):
        server = server.strip()
        which = f"server {number} of {len(servers)}" if len(servers) > 1 else "the server"
        if not server:
            problem = f"{which} is empty (a comma too many?)" if len(servers) > 1 else "no server is named"
            raise ValueError(f"{problem}; use {TRITON_FORM}")
        if not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", server):
            raise ValueError(f"{which}, {server!r}, is not HOST:PORT (servers are separated by commas); "
                             f"use {TRITON_FORM}")
        try:
            parts = urlsplit(f"triton://{server}")
            port = 8000 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError(f"{which}, {server!r}, has no valid port (1 to 65535); use {TRITON_FORM}")
        host = parts.hostname or ""
        if not re.fullmatch(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+", host):
            raise ValueError(f"{which}, {server!r}, is not HOST:PORT; use {TRITON_FORM}")
        address = host_port(host, port)
        if address in addresses:
            raise ValueError(f"{address} is listed twice; name each server once")
        addresses.append(address)
    return addresses


def mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    kind = str(kind)
    try:
        if "bool" in kind:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if "int" in kind:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if "float" in kind:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if "list" in kind:
            if isinstance(raw, list):
                return [str(item) for item in raw]
            return [item.strip() for item in str(raw).split(",") if item.strip()]
        if "Path" in kind:
            return Path(str(raw)).expanduser()
        if not isinstance(raw, (str, int, float)):
            raise ValueError(raw)
        return str(raw)
    except ValueError:
        raise SettingsError(f"setting '{name}' has the wrong type: {raw!r} ({kind} expected)") from None


def load_settings(
    config: Path | str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), then CONFMEET_* variables, then explicit overrides.

    ``config`` may also come from CONFMEET_CONFIG. A missing default file is fine (embedded
    defaults); a missing file that was asked for by name is an error.
    """
    env = dict(os.environ if env is None else env)
    kinds = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "source"}
    values: dict[str, Any] = {}
    source = "defaults"

    explicit = config or env.get(f"{ENV_PREFIX}CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    if path.exists():
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except PermissionError:
            raise SettingsError(f"cannot read {path}: run as root or a user in the confmeet group") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; see 'confmeet config show'")
        values.update({k: _coerce(k, v, kinds[k]) for k, v in data.items()})
        source = str(path)
    elif explicit:
        raise SettingsError(f"config file {path} does not exist")

    for name, kind in kinds.items():
        key = f"{ENV_PREFIX}{name.upper()}"
        if key in env:
            values[name] = _coerce(name, env[key], kind)
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in kinds:
                raise SettingsError(f"unknown setting '{name}'")
            values[name] = _coerce(name, value, kinds[name])

    settings = Settings(**values, source=source)
    settings.validate()
    return settings


def ensure_secrets(settings: Settings) -> Settings:
    """Fill unset secrets from ``<data_dir>/secrets.toml``, generating that file on first use."""
    missing = [name for name in SECRET_FIELDS if not getattr(settings, name)]
    if not missing:
        return settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "secrets.toml"
    stored: dict[str, str] = {}
    if path.exists():
        with path.open("rb") as fh:
            stored = {k: str(v) for k, v in tomllib.load(fh).items()}
    changed = False
    for name in SECRET_FIELDS:
        if not stored.get(name):
            stored[name] = secrets.token_urlsafe(48)
            changed = True
    if changed:
        write_atomically(path, "".join(f'{k} = "{v}"\n' for k, v in stored.items()).encode())
    for name in missing:
        setattr(settings, name, stored[name])
    return settings
