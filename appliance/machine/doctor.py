"""``confmeet doctor``: deeper checks of an installed appliance, each problem with its fix.

Where preflight asks whether the host *can* run confmeet, the doctor asks whether this
configuration *works*: the settings load, the certificate is valid, the HTTP port is confmeet's,
two WebRTC peers connect over the SFU's UDP range, every TURN server grants an allocation with
confmeet's credentials, there is disk space, and the models Triton serves are complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import inspect
import ipaddress
import re
import ssl
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.settings import Settings, SettingsError, load_settings

from . import gpu, tls
from .ports import bind_error, confmeet_version, describe_bind_error
from .preflight import GiB, Finding, check_disk, gpu_finding

RENEW_WITHIN = dt.timedelta(days=30)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
TLS_RENEW_FIX = ("rerun confmeet install (it reissues certificates from its private CA) or put a "
                 "renewed certificate at {path}; then systemctl restart confmeet")


@dataclass
class DoctorOptions:
    """``timeout``: seconds per network check. ``model_repository``: Triton's model repository
    (None: the ``model_repository`` setting). ``required_models``: models that must be there.
    ``now``: the time certificates are judged at (tests)."""

    timeout: float = 5.0
    model_repository: Path | None = None
    required_models: tuple[str, ...] = ()
    now: dt.datetime | None = None


# ---------------------------------------------------------------------- TLS
def _url_host(settings: Settings) -> str | None:
    return urlsplit(settings.public_url).hostname if settings.public_url else None


def _covers(names: Sequence[str], host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
        return any(_is_address(n) and ipaddress.ip_address(n) == address for n in names)
    except ValueError:
        host = host.lower()
        return any(n.lower() == host or (n.startswith("*.") and host.split(".", 1)[-1] == n[2:].lower())
                   for n in names)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def check_tls(settings: Settings, now: dt.datetime) -> list[Finding]:
    if not settings.tls_cert:
        if settings.host in LOOPBACK_HOSTS or settings.public_url.startswith("https://"):
            return [Finding("TLS certificate", "pass", "none: confmeet serves plain HTTP on loopback"
                            if settings.host in LOOPBACK_HOSTS else
                            f"none here; {settings.public_url} is served over HTTPS by a proxy")]
        return [Finding("TLS certificate", "warn",
                        f"confmeet serves plain HTTP on {settings.host}:{settings.port}: browsers only "
                        "allow cameras and microphones on HTTPS pages (or localhost)",
                        "set tls_cert and tls_key (confmeet install makes a private CA and a certificate), "
                        "or serve public_url through an HTTPS proxy")]
    path = Path(settings.tls_cert)
    try:
        expiry = tls.certificate_expiry(path)
        names = tls.certificate_names(path)
    except (OSError, ValueError) as exc:
        return [Finding("TLS certificate", "fail", f"cannot read {path} as a PEM certificate: {exc}",
                        TLS_RENEW_FIX.format(path=path))]
    findings = []
    left = expiry - now
    when = expiry.strftime("%Y-%m-%d %H:%M UTC")
    if left <= dt.timedelta(0):
        findings.append(Finding("TLS certificate", "fail", f"{path} expired on {when}: browsers refuse it",
                                TLS_RENEW_FIX.format(path=path)))
    elif left < RENEW_WITHIN:
        findings.append(Finding("TLS certificate", "warn", f"{path} expires in {left.days} day(s), on {when}",
                                TLS_RENEW_FIX.format(path=path)))
    else:
        findings.append(Finding("TLS certificate", "pass", f"valid until {when} for {', '.join(names) or '(no names)'}"))
    try:
        matches = tls.key_matches(path, Path(settings.tls_key))
    except (OSError, ValueError, TypeError) as exc:
        matches, reason = False, f"cannot read {settings.tls_key} as a PEM private key: {exc}"
    else:
        reason = f"{settings.tls_key} is not the private key of {path}"
    if not matches:
        findings.append(Finding("TLS key", "fail", reason,
                                "point tls_key at the key the certificate was issued for, or reissue both "
                                "(rerun confmeet install)"))
    host = _url_host(settings)
    if host and not _covers(names, host):
        findings.append(Finding("TLS names", "warn", f"{path} is not valid for {host} (public_url)",
                                "reissue the certificate for that name (rerun confmeet install) "
                                "or correct public_url"))
    return findings


# ---------------------------------------------------------------------- HTTP port
def check_http_port(settings: Settings, timeout: float) -> Finding:
    where = f"{settings.host}:{settings.port}"
    error = bind_error(settings.host, settings.port, "tcp")
    if error is None:
        return Finding("HTTP port", "pass", f"{where}/tcp is free (confmeet is not running)")
    if error.errno == errno.EADDRINUSE:
        version = confmeet_version(settings.host, settings.port, tls=bool(settings.tls_cert), timeout=timeout)
        if version is not None:
            return Finding("HTTP port", "pass", f"confmeet {version} answers on {where}")
    detail, fix = describe_bind_error(error, settings.host, settings.port, "tcp")
    if error.errno == errno.EADDRINUSE:
        detail = f"{where}/tcp is taken by a program that is not confmeet (no answer on /healthz)"
    return Finding("HTTP port", "warn" if error.errno == errno.EACCES else "fail", detail, fix)


# ---------------------------------------------------------------------- media UDP
async def check_media(settings: Settings, timeout: float) -> Finding:
    """A WebRTC connection between a peer that binds exactly like the SFU and a local client."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from appliance.media import media_ice_settings
    from appliance.sfu.ice import CandidateGatherer, IceSettings

    span = f"{settings.media_udp_min}-{settings.media_udp_max}/udp"
    # No STUN lookups: this tests the SFU's own ports, not the way out.
    sfu_ice = dataclasses.replace(media_ice_settings(settings), ice_servers=())
    sfu_side, client_side = CandidateGatherer(sfu_ice), CandidateGatherer(IceSettings(loopback=settings.media_loopback))
    sfu, client = RTCPeerConnection(sfu_ice.rtc_configuration()), RTCPeerConnection(RTCConfiguration(iceServers=[]))
    echoed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @sfu.on("datachannel")
    def on_channel(channel) -> None:  # type: ignore[no-untyped-def]
        channel.on("message", channel.send)

    channel = client.createDataChannel("doctor")
    channel.on("open", lambda: channel.send("ping"))
    channel.on("message", lambda message: echoed.done() or echoed.set_result(message))
    try:
        client_side.prepare(client)
        await client.setLocalDescription(await client.createOffer())
        await sfu.setRemoteDescription(client.localDescription)
        sfu_side.prepare(sfu)
        await sfu.setLocalDescription(await sfu.createAnswer())
        await client.setRemoteDescription(sfu.localDescription)
        ports = sorted({c.port for c in sfu.sctp.transport.transport.iceGatherer.getLocalCandidates()})
        if not ports:
            return Finding("media UDP", "fail", f"the SFU could not bind any UDP port in {span}",
                           "free ports in that range (ss -lunp) or widen media_udp_min/media_udp_max")
        try:
            await asyncio.wait_for(echoed, timeout)
        except asyncio.TimeoutError:
            return Finding("media UDP", "fail",
                           f"a local WebRTC peer could not reach the SFU's UDP port(s) {ports} in {timeout:g}s",
                           f"allow {span} in the host firewall (nft list ruleset), then rerun confmeet doctor")
        return Finding("media UDP", "pass", f"a WebRTC self-test connected to UDP port(s) {ports} (range {span})")
    finally:
        await client.close()
        await sfu.close()


# ---------------------------------------------------------------------- TURN
@dataclass(frozen=True)
class TurnServer:
    url: str
    host: str
    port: int
    transport: str
    secure: bool


def parse_turn_url(url: str) -> TurnServer:
    """``turn:HOST[:PORT][?transport=udp|tcp]`` or ``turns:...`` (RFC 7065)."""
    scheme, _, rest = url.partition(":")
    address, _, query = rest.partition("?")
    secure = scheme == "turns"
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:]+)(?::(?P<port>\d+))?", address)
    if scheme not in ("turn", "turns") or match is None:
        raise ValueError(f"{url!r} is not a turn:HOST:PORT URL")
    host = match.group("v6") or match.group("host")
    port = int(match.group("p6") or match.group("port") or (5349 if secure else 3478))
    transport = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("transport", "tcp" if secure else "udp")
    return TurnServer(url, host, port, transport.lower(), secure)


def read_turn_secret(settings: Settings) -> tuple[str | None, str]:
    """turn_secret from the settings or ``<data_dir>/secrets.toml`` (never creating one), or
    None and the fix."""
    if settings.turn_secret:
        return settings.turn_secret, ""
    path = settings.data_dir / "secrets.toml"
    try:
        with path.open("rb") as fh:
            secret = str(tomllib.load(fh).get("turn_secret") or "")
    except FileNotFoundError:
        return None, f"start confmeet once (it generates {path}) or set turn_secret"
    except PermissionError:
        return None, f"run confmeet doctor as root or as the confmeet user (it reads {path})"
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return None, f"{path} is unreadable ({exc}): set turn_secret in the configuration"
    return (secret, "") if secret else (None, f"{path} has no turn_secret: set turn_secret")


class _Closed:
    """A datagram protocol that reports when its TURN allocation has been deleted."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: object) -> None:
        pass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def allocate(server: TurnServer, username: str, password: str, timeout: float) -> tuple[str, int]:
    """Make a TURN allocation and delete it again; returns the relayed address."""
    from aioice.turn import create_turn_endpoint

    context = ssl.create_default_context() if server.secure else None
    transport, protocol = await asyncio.wait_for(
        create_turn_endpoint(_Closed, (server.host, server.port), username, password, lifetime=60,
                             ssl=context, transport=server.transport), timeout)
    relayed = transport.get_extra_info("sockname")
    transport.close()
    try:
        await asyncio.wait_for(asyncio.shield(protocol.closed), timeout)
    except asyncio.TimeoutError:
        pass  # the server frees an allocation it was not told to delete when its lifetime ends
    return relayed


async def check_turn(settings: Settings, timeout: float) -> list[Finding]:
    from aioice import stun

    from appliance.turn import turn_credentials

    urls = [u for u in settings.ice_servers if u.startswith("turn")]
    if not urls:
        if settings.host in LOOPBACK_HOSTS:
            return [Finding("TURN", "pass", "no TURN server configured (loopback-only install)")]
        return [Finding("TURN", "warn", "no TURN server in ice_servers: people behind firewalls that block "
                        "UDP cannot join with media",
                        "install coturn (confmeet install does) and add \"turn:HOST:3478\" to ice_servers")]
    secret, fix = read_turn_secret(settings)
    if secret is None:
        return [Finding("TURN", "fail", "turn_secret is unknown, so no TURN credentials can be made", fix)]
    secret_from = "the turn_secret setting" if settings.turn_secret else str(settings.data_dir / "secrets.toml")
    username, password = turn_credentials(secret, "confmeet-doctor", 1)
    restart = "systemctl restart coturn"
    findings = []
    for url in urls:
        try:
            server = parse_turn_url(url)
        except ValueError as exc:
            findings.append(Finding("TURN", "fail", str(exc), "write it as turn:HOST:3478 in ice_servers"))
            continue
        where = f"{server.host}:{server.port}/{server.transport}"
        reach_fix = (f"start coturn ({restart}), check the host in ice_servers, and open "
                     f"{server.port}/{server.transport} in the firewall")
        try:
            relayed = await allocate(server, username, password, timeout)
        except (asyncio.TimeoutError, stun.TransactionTimeout):
            findings.append(Finding("TURN", "fail", f"no answer from the TURN server {where} ({url}) within "
                                    f"{timeout:g}s", reach_fix))
        except stun.TransactionFailed as exc:
            code = (exc.response.attributes.get("ERROR-CODE") or (0, ""))[0]
            if code == 401:
                findings.append(Finding("TURN", "fail", f"{url} rejected confmeet's credentials (401)",
                                        "coturn needs use-auth-secret and static-auth-secret equal to confmeet's "
                                        f"turn_secret ({secret_from}), then {restart}"))
            else:
                findings.append(Finding("TURN", "fail", f"{url} refused an allocation: {exc}",
                                        "see coturn's log (journalctl -u coturn) for why"))
        except ssl.SSLError as exc:
            findings.append(Finding("TURN", "fail", f"TLS with {url} failed: {exc}",
                                    "give coturn a certificate browsers trust, or use a turn: URL"))
        except (OSError, ConnectionError) as exc:
            findings.append(Finding("TURN", "fail", f"cannot reach the TURN server {where}: "
                                    f"{getattr(exc, 'strerror', None) or exc}", reach_fix))
        else:
            findings.append(Finding("TURN", "pass", f"{url} granted an allocation (relay {relayed[0]}:{relayed[1]})"))
    return findings


# ---------------------------------------------------------------------- models
def _model_problem(model: Path) -> str | None:
    config = model / "config.pbtxt"
    if not config.is_file():
        return f"{model} has no config.pbtxt"
    text = config.read_text(errors="replace")
    name = re.search(r'^\s*name\s*:\s*"([^"]*)"', text, re.MULTILINE)
    if name and name.group(1) != model.name:
        return f"{config} names the model {name.group(1)!r}, but its directory is {model.name!r}"
    versions = [v for v in model.iterdir() if v.is_dir() and v.name.isdigit() and any(v.iterdir())]
    if not versions:
        return f"{model} has no version directory with files (e.g. {model}/1/)"
    backend = re.search(r'^\s*backend\s*:\s*"([^"]*)"', text, re.MULTILINE)
    needs = {"python": "model.py", "onnxruntime": "model.onnx"}.get(backend.group(1) if backend else "")
    latest = max(versions, key=lambda v: int(v.name))
    if needs and not (latest / needs).is_file():
        return f"{latest} has no {needs}, which the {backend.group(1)} backend loads"  # type: ignore[union-attr]
    return None


def check_models(repository: Path, required: Sequence[str]) -> list[Finding]:
    present = sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
    findings = []
    for name in required:
        if not (repository / name).is_dir():
            findings.append(Finding("models", "fail", f"model {name!r} is missing from {repository}",
                                    f"run confmeet models import {name}"))
    for model in present:
        problem = _model_problem(model)
        if problem is not None:
            findings.append(Finding("models", "fail", f"model {model.name!r} cannot be loaded: {problem}",
                                    f"run confmeet models import {model.name} (it replaces the incomplete copy)"))
    if not findings:
        detail = f"{len(present)} model(s) in {repository}: {', '.join(p.name for p in present)}" if present \
            else f"no models in {repository} (none required)"
        findings.append(Finding("models", "pass", detail))
    return findings


# ---------------------------------------------------------------------- running them
Check = Callable[[], list[Finding] | Finding | Awaitable[list[Finding] | Finding]]


async def _guarded(check: str, work: Check) -> list[Finding]:
    """Run one check; one that breaks becomes a finding naming what broke, never a traceback."""
    try:
        result = work()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # the doctor reports every other check even when one breaks
        return [Finding(check, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                        "report this with the output of confmeet doctor --json")]
    return result if isinstance(result, list) else [result]


def check_alert_receivers(settings: Settings) -> list[Finding]:
    """Alertmanager installed (the install record next to the settings says so) with nobody to
    tell: alerts fire and reach no one."""
    if settings.source == "defaults":
        return []
    from .deploy import DeployError, InstallRecord, Layout

    try:
        record = InstallRecord.read(Layout(Path(settings.source).parent.parent.parent))
    except (DeployError, OSError):
        return []  # not root: the install record is root's
    if record is None or "alertmanager" not in record.components:
        return []
    receivers = [text for text in (settings.alerts_webhook_url and f"webhook {settings.alerts_webhook_url}",
                                   settings.alerts_email and f"e-mail to {settings.alerts_email} through "
                                   f"{settings.alerts_smarthost or '(no smarthost)'}") if text]
    if not receivers:
        return [Finding("alert receiver", "warn", "Alertmanager is installed but no receiver is configured: "
                        "alerts fire and reach nobody",
                        "confmeet install --alerts-webhook URL, or --alerts-email ADDR --alerts-smarthost "
                        "HOST:PORT (the settings alerts_webhook_url, alerts_email, alerts_smarthost)")]
    if settings.alerts_email and not settings.alerts_smarthost:
        return [Finding("alert receiver", "warn", f"alerts_email is {settings.alerts_email} but alerts_smarthost "
                        "is empty: Alertmanager cannot send the mail",
                        "confmeet install --alerts-smarthost HOST:PORT")]
    return [Finding("alert receiver", "pass", "Alertmanager sends alerts: " + "; ".join(receivers))]


async def check_directory(settings: Settings, timeout: float) -> list[Finding]:
    """Directory sign-in configured: the appliance reaches the directory over TLS, binds, and
    finds the user base and the groups."""
    if not settings.ldap_url:
        return []
    from ..directory import Directory, DirectoryError

    try:
        detail = await asyncio.to_thread(Directory(settings, timeout=timeout).check)
    except DirectoryError as exc:
        return [Finding("directory", "fail", f"directory sign-in cannot work: {exc}",
                        "correct the ldap_* settings (see docs/configuration.md), then rerun confmeet doctor; "
                        "local accounts sign in meanwhile")]
    return [Finding("directory", "pass", detail)]


async def check_oidc(settings: Settings, timeout: float) -> list[Finding]:
    """OpenID sign-in configured: the provider's discovery document and keys are there and read."""
    if not settings.oidc_issuer:
        return []
    from ..oidc import CALLBACK_PATH, Oidc, OidcUnavailable

    oidc = Oidc(settings, settings.secret_key or "doctor", timeout=timeout)
    try:
        metadata = await oidc.metadata()
    except OidcUnavailable as exc:
        return [Finding("OpenID provider", "fail", f"OpenID sign-in cannot work: {exc}",
                        "correct oidc_issuer (the provider's issuer URL exactly) or oidc_ca_file, then rerun "
                        "confmeet doctor; local accounts sign in meanwhile")]
    finally:
        await oidc.close()
    return [Finding("OpenID provider", "pass", f"{metadata['issuer']}: discovery and keys read; the provider must "
                    f"list {settings.base_url}{CALLBACK_PATH} as client {settings.oidc_client_id}'s redirect URI")]


async def check_settings(settings: Settings, options: DoctorOptions | None = None) -> list[Finding]:
    """Every check of a configuration that loaded."""
    options = options or DoctorOptions()
    now = options.now or dt.datetime.now(dt.timezone.utc)
    repository = options.model_repository or settings.model_repository_path

    async def inference_gpu() -> list[Finding]:
        if not settings.inference.startswith("triton"):
            return []
        return [gpu_finding(await asyncio.get_running_loop().run_in_executor(None, gpu.detect))]

    checks: list[tuple[str, Check]] = [
        ("TLS certificate", lambda: check_tls(settings, now)),
        ("HTTP port", lambda: check_http_port(settings, options.timeout)),
        ("media UDP", lambda: check_media(settings, options.timeout)),
        ("TURN", lambda: check_turn(settings, options.timeout)),
        ("disk space", lambda: check_disk(settings.data_dir, warn_below=10 * GiB, fail_below=2 * GiB)),
        ("models", lambda: check_models(repository, options.required_models)),
        ("GPU", inference_gpu),
        ("alert receiver", lambda: check_alert_receivers(settings)),
        ("directory", lambda: check_directory(settings, options.timeout)),
        ("OpenID provider", lambda: check_oidc(settings, options.timeout)),
    ]
    findings = [Finding("configuration", "pass", f"{settings.source}: settings are valid")]
    for name, work in checks:
        findings += await _guarded(name, work)
    return findings


def diagnose(config: Path | None = None, options: DoctorOptions | None = None) -> list[Finding]:
    """Load the settings (``config`` or the default file and CONFMEET_* variables) and check them."""
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        return [Finding("configuration", "fail", str(exc),
                        "correct the configuration file (see 'confmeet config show' and docs/configuration.md), "
                        "then rerun confmeet doctor")]
    return asyncio.run(check_settings(settings, options))


def problems(findings: list[Finding]) -> list[Finding]:
    """The potential problems: every finding that did not pass, failures first."""
    return sorted((f for f in findings if f.status != "pass"), key=lambda f: f.status != "fail")
