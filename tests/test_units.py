"""The systemd files confmeet ships: they verify cleanly, score as hardened, enable, and render."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.machine import units

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

VENV_CONFMEET = str(Path(sys.executable).parent / "confmeet")


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def exposure(unit: Path) -> float:
    result = analyze("security", "--offline=yes", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:]
    return float(match.group(1))


def rendered(tmp_path: Path, privileged_port: bool = False, binary: str = VENV_CONFMEET) -> Path:
    written = units.write_appliance_unit(tmp_path, confmeet_bin=binary, config="/etc/confmeet/confmeet.toml",
                                         privileged_port=privileged_port)
    return written[0]


@pytest.mark.parametrize("privileged_port", [False, True], ids=["unprivileged-port", "port-443-drop-in"])
def test_appliance_unit_verifies_and_is_hardened(tmp_path: Path, privileged_port: bool) -> None:
    unit = rendered(tmp_path, privileged_port)
    assert (tmp_path / units.PRIVILEGED_PORT_DROPIN).exists() == privileged_port
    result = analyze("verify", str(unit))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert exposure(unit) < 5.0


def test_verify_catches_a_missing_binary_and_unknown_keys(tmp_path: Path) -> None:
    """The check above can fail: a unit whose program does not exist, or with a typo, is caught."""
    missing = analyze("verify", str(rendered(tmp_path / "a", binary="/nonexistent/confmeet")))
    assert "/nonexistent/confmeet" in missing.stderr
    unit = rendered(tmp_path / "b")
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Unknown key" in analyze("verify", str(unit)).stderr


def test_drop_in_adds_only_the_bind_capability(tmp_path: Path) -> None:
    plain = (tmp_path / "plain")
    dropin = (tmp_path / "dropin")
    low, high = exposure(rendered(plain)), exposure(rendered(dropin, privileged_port=True))
    assert low < high < 5.0
    text = (dropin / units.PRIVILEGED_PORT_DROPIN).read_text()
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text and "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    # Moving the service back to an unprivileged port removes the stale drop-in.
    units.write_appliance_unit(dropin, confmeet_bin=VENV_CONFMEET, privileged_port=False)
    assert not (dropin / units.PRIVILEGED_PORT_DROPIN).exists()


def test_unit_runs_confmeet_serve_as_its_own_user(tmp_path: Path) -> None:
    text = units.render_appliance_unit("/opt/confmeet venv/bin/confmeet", "/etc/confmeet/confmeet.toml")
    assert 'ExecStart="/opt/confmeet venv/bin/confmeet" serve --config /etc/confmeet/confmeet.toml' in text
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["User"] == "confmeet" and settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "confmeet"
    assert "CONFMEET_DATA_DIR=/var/lib/confmeet" in settings["Environment"]
    # aiortc's DTLS needs writable executable memory (pyOpenSSL's cffi callbacks).
    assert "MemoryDenyWriteExecute" not in settings


def test_systemctl_enables_the_unit_in_a_root_tree(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    units.write_appliance_unit(unit_dir, confmeet_bin=VENV_CONFMEET, privileged_port=True)
    assert units.systemctl("is-enabled", "confmeet.service", root=tmp_path) == "disabled"
    units.systemctl("enable", "confmeet.service", root=tmp_path)
    assert (unit_dir / "multi-user.target.wants/confmeet.service").is_symlink()
    assert units.systemctl("is-enabled", "confmeet.service", root=tmp_path) == "enabled"
    with pytest.raises(units.UnitError, match="nothing.service"):
        units.systemctl("enable", "nothing.service", root=tmp_path)


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(units.shipped(units.SYSUSERS))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    assert re.search(r"^confmeet:x:\d+:\d+:[^:]*:/var/lib/confmeet:/usr/sbin/nologin$", passwd, re.MULTILINE)


def test_turnserver_conf_renders_every_placeholder() -> None:
    text = units.render_turnserver_conf("s3cr3t", "meet.example.org", port=3478, relay_min=49152, relay_max=65535,
                                        external_ips=["203.0.113.10/192.168.1.10"], allowed_peer_ips=["192.168.1.10"])
    assert "@" not in text
    lines = text.splitlines()
    for expected in ("use-auth-secret", "static-auth-secret=s3cr3t", "realm=meet.example.org",
                     "listening-port=3478", "min-port=49152", "max-port=65535",
                     "external-ip=203.0.113.10/192.168.1.10", "allowed-peer-ip=192.168.1.10",
                     "denied-peer-ip=192.168.0.0-192.168.255.255"):
        assert expected in lines
    assert not any(line.startswith("listening-ip") for line in lines)  # none given: every address
    # (tests/test_doctor.py boots a real coturn from this template and allocates on it)


@pytest.mark.parametrize("kwargs, message", [
    ({"secret": ""}, "secret must be set"),
    ({"secret": "two words"}, "no spaces"),
    ({"realm": "a realm"}, "without spaces"),
    ({"relay_min": 60000, "relay_max": 50000}, "relay ports"),
    ({"allowed_peer_ips": ["meet.example.org"]}, "not an IP address"),
])
def test_turnserver_conf_refuses_bad_values(kwargs: dict, message: str) -> None:
    values = {"secret": "s3cr3t", "realm": "meet.example.org", **kwargs}
    with pytest.raises(units.UnitError, match=message):
        units.render_turnserver_conf(values.pop("secret"), values.pop("realm"), **values)


def test_turnserver_conf_is_readable_by_coturn_only(tmp_path: Path) -> None:
    path = tmp_path / "turnserver.conf"
    units.write_turnserver_conf(path, "static-auth-secret=x\n", group="root")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "static-auth-secret=x\n"
    with pytest.raises(units.UnitError, match="apt-get install coturn"):
        units.write_turnserver_conf(tmp_path / "other.conf", "x\n", group="no-such-group-confmeet")
    assert not (tmp_path / "other.conf").exists()
