"""The systemd files confmeet ships (``systemd/`` in the source tree), rendered for one host.

``confmeet.service`` runs the appliance hardened as the ``confmeet`` user (created by
``confmeet.sysusers``); the drop-in ``confmeet.service.d/privileged-port.conf`` is added only
when it listens below port 1024. For ``--mode native`` Debian's own units run PostgreSQL, Redis
and coturn; confmeet only writes coturn's configuration (``turnserver.conf.in``).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..fsutil import write_atomically

# The source tree's systemd/, or where a wheel install puts it (setup.cfg data_files).
SYSTEMD_DIR = next((d for d in (Path(__file__).resolve().parents[2] / "systemd",
                                Path(sys.prefix) / "share/confmeet/systemd") if d.is_dir()),
                   Path(__file__).resolve().parents[2] / "systemd")
APPLIANCE_UNIT = "confmeet.service"
GATEWAY_UNIT = "confmeet-gateway.service"
PRIVILEGED_PORT_DROPIN = "confmeet.service.d/privileged-port.conf"
SYSUSERS = "confmeet.sysusers"
TURNSERVER_TEMPLATE = "turnserver.conf.in"
CONFMEET_BIN = "/opt/confmeet/current/bin/confmeet"  # appliance/machine/release.py
CONFIG_FILE = "/etc/confmeet/confmeet.toml"


class UnitError(Exception):
    """A unit cannot be rendered or enabled; the message says why and what to do."""


def shipped(name: str, systemd_dir: Path | None = None) -> Path:
    """A file of ``systemd_dir`` (another release's ``share/confmeet/systemd``), else this one's."""
    path = (systemd_dir or SYSTEMD_DIR) / name
    if not path.is_file():
        raise UnitError(f"{path} is missing: reinstall confmeet from its source tree or bundle")
    return path


def _quote(word: str) -> str:
    if re.search(r'[\s"\'\\]', word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_appliance_unit(confmeet_bin: str = CONFMEET_BIN, config: str = CONFIG_FILE,
                          systemd_dir: Path | None = None) -> str:
    """confmeet.service (from ``systemd_dir``, default this release's) with ExecStart running
    ``confmeet_bin serve --config config``."""
    return _render(APPLIANCE_UNIT, [confmeet_bin, "serve", "--config", config], systemd_dir)


def render_gateway_unit(confmeet_bin: str, config: str, site: str, listen: str, tls_cert: str, tls_key: str,
                        systemd_dir: Path | None = None) -> str:
    """confmeet-gateway.service with ExecStart following the registry into nginx's ``site`` file."""
    return _render(GATEWAY_UNIT, [confmeet_bin, "node", "gateway", "--follow", site, "--listen", listen,
                                  *(["--tls-cert", tls_cert, "--tls-key", tls_key] if tls_cert else []),
                                  "--config", config], systemd_dir)


def _render(unit: str, argv: list[str], systemd_dir: Path | None) -> str:
    """A shipped unit with its one ExecStart= line running ``argv``."""
    exec_start = "ExecStart=" + " ".join(_quote(word) for word in argv)
    source = shipped(unit, systemd_dir)
    text, count = re.subn(r"^ExecStart=.*$", lambda _: exec_start, source.read_text(), flags=re.MULTILINE)
    if count != 1:
        raise UnitError(f"{source} must have exactly one ExecStart= line")
    return text


def write_appliance_unit(unit_dir: Path, confmeet_bin: str = CONFMEET_BIN, config: str = CONFIG_FILE,
                         privileged_port: bool = False, systemd_dir: Path | None = None) -> list[Path]:
    """Write confmeet.service (and the privileged-port drop-in when the appliance listens below
    1024) into ``unit_dir``, e.g. /etc/systemd/system; a stale drop-in is removed. ``systemd_dir``:
    the files of the release the unit runs (``<release>/share/confmeet/systemd``)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_dir / APPLIANCE_UNIT
    unit.write_text(render_appliance_unit(confmeet_bin, config, systemd_dir))
    dropin = unit_dir / PRIVILEGED_PORT_DROPIN
    if privileged_port:
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(shipped(PRIVILEGED_PORT_DROPIN, systemd_dir).read_text())
        return [unit, dropin]
    dropin.unlink(missing_ok=True)
    return [unit]


def systemctl(*args: str, root: Path | None = None) -> str:
    """Run systemctl (``--root=DIR`` works on a tree without a running systemd); UnitError with
    systemctl's own message when it fails."""
    argv = ["systemctl", *([f"--root={root}"] if root is not None else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UnitError("systemctl is not installed: this host does not run systemd") from None
    if done.returncode != 0 and args[0] not in ("is-enabled", "is-active"):  # they answer with their status
        raise UnitError(f"'{' '.join(argv)}' failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def render_turnserver_conf(secret: str, realm: str, *, port: int = 3478, tls_port: int = 5349, cert: str = "",
                           pkey: str = "", relay_min: int = 49152, relay_max: int = 65535,
                           listening_ips: Sequence[str] = (), external_ips: Sequence[str] = (),
                           allowed_peer_ips: Sequence[str] = (), syslog: bool = True) -> str:
    """coturn's configuration with confmeet's shared secret.

    ``allowed_peer_ips``: the SFU's own addresses, which coturn must relay to even when they are
    private. ``external_ips``: ``PUBLIC`` or ``PUBLIC/PRIVATE`` behind a 1:1 NAT. ``cert`` and
    ``pkey``: the TLS files of TURN over TLS on ``tls_port`` (none given: no TLS listener).
    ``syslog``: False in a container, where coturn logs to stdout.
    """
    if not secret or any(c.isspace() for c in secret):
        raise UnitError("the TURN secret must be set and contain no spaces (confmeet's turn_secret)")
    if not realm or any(c.isspace() for c in realm):
        raise UnitError(f"TURN realm {realm!r}: use the appliance's host name, without spaces")
    if not 1024 <= relay_min <= relay_max <= 65535:
        raise UnitError(f"TURN relay ports {relay_min}-{relay_max}: use 1024 <= min <= max <= 65535")
    for address in [*listening_ips, *allowed_peer_ips, *(p for e in external_ips for p in e.split("/"))]:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UnitError(f"{address!r} is not an IP address (coturn needs addresses, not names)") from None
    lines = {
        "@LISTENING_IPS@": [f"listening-ip={a}" for a in listening_ips],
        "@EXTERNAL_IPS@": [f"external-ip={a}" for a in external_ips],
        "@ALLOWED_PEER_IPS@": [f"allowed-peer-ip={a}" for a in allowed_peer_ips],
    }
    values = {"@TURN_PORT@": str(port), "@TLS_PORT@": str(tls_port), "@CERT@": cert, "@PKEY@": pkey,
              "@REALM@": realm, "@TURN_SECRET@": secret, "@RELAY_MIN_PORT@": str(relay_min),
              "@RELAY_MAX_PORT@": str(relay_max)}
    tls = bool(cert and pkey)
    out = []
    for line in shipped(TURNSERVER_TEMPLATE).read_text().splitlines():
        if line in lines:
            out.extend(lines[line])
            continue
        if not tls and line.startswith(("tls-listening-port=", "cert=", "pkey=")):
            continue
        if line == "syslog" and not syslog:
            continue
        for placeholder, value in values.items():
            line = line.replace(placeholder, value)
        out.append(line)
    if not tls:
        out.insert(out.index("no-dtls"), "no-tls")
    return "\n".join(out) + "\n"


def write_turnserver_conf(path: Path, text: str | bytes, group: str | int = "turnserver") -> None:
    """Write coturn's configuration (or its TLS key) readable only by root and coturn's group
    (it holds the secret); ``group`` is a name or, for a container's user, a number."""
    try:
        write_atomically(path, text.encode() if isinstance(text, str) else text, mode=0o640,
                         group=group)  # type: ignore[arg-type]
    except LookupError:
        raise UnitError(f"there is no group {group!r} to let coturn read {path}: "
                        "install coturn first (apt-get install coturn)") from None
