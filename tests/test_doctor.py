"""``confmeet doctor`` finds each planted problem and names its fix; a healthy setup (a real coturn
on loopback, a valid certificate, a complete model) reports none. Also the TLS files it checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from appliance.fsutil import write_atomically
from appliance.machine import doctor, tls
from appliance.machine.doctor import DoctorOptions, diagnose, problems
from appliance.machine.preflight import Finding, exit_code
from appliance.machine.units import render_turnserver_conf
from appliance.settings import load_settings
from appliance_server import start_appliance
from conftest import free_port, stop, wait_port

TURN_SECRET = "doctor-test-secret"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Debian's coturn on loopback, configured from confmeet's own template."""
    if shutil.which("turnserver") is None:
        pytest.skip("needs coturn (apt-get install coturn)")
    root = tmp_path_factory.mktemp("coturn")
    port = free_port()
    conf = root / "turnserver.conf"
    conf.write_text(render_turnserver_conf(TURN_SECRET, "confmeet.test", port=port, relay_min=61000,
                                           relay_max=61999, listening_ips=["127.0.0.1"],
                                           allowed_peer_ips=["127.0.0.1"]))
    with (root / "turnserver.log").open("w") as log:
        proc = subprocess.Popen(["turnserver", "-c", str(conf), f"--pidfile={root}/turnserver.pid",
                                 f"--userdb={root}/turndb", "--log-file=stdout", "--simple-log"],
                                stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc)
    yield {"port": port, "url": f"turn:127.0.0.1:{port}"}
    stop(proc)


@pytest.fixture(autouse=True)
def no_confmeet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("CONFMEET_")]:
        monkeypatch.delenv(key)


def free_udp_base(size: int = 10) -> int:
    from test_preflight import free_udp_range

    return free_udp_range(size)


def write_config(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


def model(repository: Path, name: str, backend: str = "python", versions: dict[str, str] | None = None) -> Path:
    directory = repository / name
    (directory / "1").mkdir(parents=True)
    (directory / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: 0\n')
    for filename, text in (versions or {"model.py": "class TritonPythonModel: ...\n"}).items():
        (directory / "1" / filename).write_text(text)
    return directory


@pytest.fixture
def healthy(tmp_path: Path, coturn: dict) -> dict:
    """A configuration with nothing wrong: TLS from the private CA, a free port, the SFU's UDP range,
    a TURN server that knows the secret (kept in secrets.toml, as confmeet generates it), a model."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "secrets.toml").write_text(f'secret_key = "k"\nturn_secret = "{TURN_SECRET}"\n')
    files = tls.ensure_certificates(tmp_path / "tls", ["localhost", "127.0.0.1"])
    base, port = free_udp_base(), free_port()
    config = write_config(tmp_path / "confmeet.toml", data_dir=str(data_dir), host="127.0.0.1", port=port,
                          public_url=f"https://localhost:{port}", tls_cert=str(files.cert), tls_key=str(files.key),
                          media_loopback=True, media_udp_min=base, media_udp_max=base + 9,
                          ice_servers=[coturn["url"], f"{coturn['url']}?transport=tcp"])
    repository = tmp_path / "models"
    model(repository, "vad")
    return {"config": config, "tls": files, "port": port, "data_dir": data_dir,
            "options": DoctorOptions(timeout=3, model_repository=repository, required_models=("vad",))}


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in findings:
        out.setdefault(finding.check, []).append(finding)
    return out


# ---------------------------------------------------------------------- the doctor
def test_healthy_setup_reports_no_problems(healthy: dict, coturn: dict) -> None:
    findings = diagnose(healthy["config"], healthy["options"])
    assert problems(findings) == [], problems(findings)
    assert exit_code(findings) == 0
    checks = by_check(findings)
    assert list(checks) == ["configuration", "TLS certificate", "HTTP port", "media UDP", "TURN", "disk space", "models"]
    assert "granted an allocation (relay 127.0.0.1:" in checks["TURN"][0].detail
    assert len(checks["TURN"]) == 2  # UDP and TCP
    assert "a WebRTC self-test connected to UDP port(s)" in checks["media UDP"][0].detail
    assert "1 model(s)" in checks["models"][0].detail


def test_expired_certificate(healthy: dict) -> None:
    ca = tls.CertificateFiles(cert=healthy["tls"].ca_cert, key=healthy["tls"].ca_key)
    tls.issue_server_certificate(healthy["tls"].cert.parent, ca, ["localhost"], days=30,
                                 not_before=NOW - dt.timedelta(days=40))
    findings = diagnose(healthy["config"], healthy["options"])
    [found] = problems(findings)
    assert (found.check, found.status) == ("TLS certificate", "fail")
    assert "expired on" in found.detail and str(healthy["tls"].cert) in found.detail
    assert "rerun confmeet install" in found.fix and "systemctl restart confmeet" in found.fix
    assert exit_code(findings) == 2


def test_certificate_expiring_soon_wrong_key_and_wrong_name(healthy: dict) -> None:
    settings = load_settings(healthy["config"])
    soon = doctor.check_tls(settings, NOW + dt.timedelta(days=380))
    assert soon[0].status == "warn" and "expires in" in soon[0].detail
    other_key = healthy["tls"].cert.parent / "other.key"
    write_atomically(other_key, healthy["tls"].ca_key.read_bytes())
    settings.tls_key, settings.public_url = str(other_key), "https://meet.example.org"
    found = {f.check: f for f in doctor.check_tls(settings, NOW)}
    assert found["TLS key"].status == "fail" and "is not the private key" in found["TLS key"].detail
    assert found["TLS names"].status == "warn" and "meet.example.org" in found["TLS names"].detail


def test_plain_http_on_the_network_warns(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.toml", host="0.0.0.0", data_dir=str(tmp_path)))
    [finding] = doctor.check_tls(settings, NOW)
    assert finding.status == "warn" and "set tls_cert and tls_key" in finding.fix


def test_port_taken_by_another_program(healthy: dict) -> None:
    healthy["options"].timeout = 1  # the squatter accepts but never answers /healthz
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", healthy["port"]))
        squatter.listen()
        findings = diagnose(healthy["config"], healthy["options"])
    [found] = problems(findings)
    assert (found.check, found.status) == ("HTTP port", "fail")
    assert "taken by a program that is not confmeet" in found.detail
    assert f"ss -ltnp 'sport = :{healthy['port']}'" in found.fix


def test_port_held_by_confmeet_itself_is_no_problem(tmp_path: Path) -> None:
    appliance = start_appliance(tmp_path / "running")
    try:
        port = int(appliance.url.rsplit(":", 1)[1])
        settings = load_settings(write_config(tmp_path / "c.toml", data_dir=str(appliance.data_dir), port=port))
        finding = doctor.check_http_port(settings, timeout=3)
    finally:
        stop(appliance.proc)
    assert finding.status == "pass" and finding.detail.startswith("confmeet ") and "answers on" in finding.detail


def test_unreachable_turn_server(healthy: dict) -> None:
    silent = free_udp_base(1)
    settings = load_settings(healthy["config"])
    settings.ice_servers = [f"turn:127.0.0.1:{silent}"]
    [found] = asyncio.run(doctor.check_turn(settings, timeout=1))
    assert found.status == "fail" and f"no answer from the TURN server 127.0.0.1:{silent}/udp" in found.detail
    assert "start coturn" in found.fix and f"open {silent}/udp in the firewall" in found.fix


def test_turn_server_with_another_secret(healthy: dict) -> None:
    settings = load_settings(healthy["config"])
    settings.turn_secret = "not-the-secret-coturn-has"
    findings = asyncio.run(doctor.check_turn(settings, timeout=3))
    assert [f.status for f in findings] == ["fail", "fail"]
    assert "rejected confmeet's credentials (401)" in findings[0].detail
    assert "static-auth-secret equal to confmeet's turn_secret" in findings[0].fix


def test_turn_secret_unknown(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.toml", data_dir=str(tmp_path / "empty"),
                                          ice_servers=["turn:127.0.0.1:3478"]))
    [found] = asyncio.run(doctor.check_turn(settings, timeout=1))
    assert found.status == "fail" and "start confmeet once" in found.fix


def test_missing_and_incomplete_models(healthy: dict) -> None:
    repository = healthy["options"].model_repository
    model(repository, "asr-broken", backend="onnxruntime", versions={"notes.txt": "no model here"})
    (repository / "no-config" / "1").mkdir(parents=True)
    healthy["options"].required_models = ("vad", "asr")
    findings = diagnose(healthy["config"], healthy["options"])
    found = problems(findings)
    assert {f.check for f in found} == {"models"} and all(f.status == "fail" for f in found)
    details = {f.detail: f.fix for f in found}
    assert details[f"model 'asr' is missing from {repository}"] == "run confmeet models import asr"
    broken = next(d for d in details if "'asr-broken'" in d)
    assert "no model.onnx, which the onnxruntime backend loads" in broken
    assert details[broken].startswith("run confmeet models import asr-broken")
    assert any("'no-config'" in d and "has no config.pbtxt" in d for d in details)


def test_model_checks_in_detail(tmp_path: Path) -> None:
    no_version = tmp_path / "r" / "vad"
    no_version.mkdir(parents=True)
    (no_version / "config.pbtxt").write_text('backend: "python"\n')
    assert "no version directory with files" in doctor.check_models(tmp_path / "r", ())[0].detail
    renamed = model(tmp_path / "s", "vad")
    (renamed / "config.pbtxt").write_text('name: "silero"\nbackend: "python"\n')
    assert "names the model 'silero'" in doctor.check_models(tmp_path / "s", ())[0].detail
    empty = doctor.check_models(tmp_path / "none", ())
    assert empty[0].status == "pass" and "none required" in empty[0].detail


def test_media_ports_all_taken(healthy: dict) -> None:
    base = free_udp_base(2)
    settings = load_settings(healthy["config"])
    settings.media_udp_min, settings.media_udp_max = base, base + 1
    taken = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, sock in enumerate(taken):
            sock.bind(("127.0.0.1", base + i))
        finding = asyncio.run(doctor.check_media(settings, timeout=2))
    finally:
        for sock in taken:
            sock.close()
    assert finding.status == "fail" and "could not bind any UDP port" in finding.detail
    assert "widen media_udp_min/media_udp_max" in finding.fix


def test_a_broken_check_becomes_a_finding() -> None:
    def explode() -> list[Finding]:
        raise RuntimeError("boom")

    [finding] = asyncio.run(doctor._guarded("models", explode))
    assert finding.status == "fail" and "RuntimeError: boom" in finding.detail and "--json" in finding.fix


def test_parse_turn_urls() -> None:
    assert doctor.parse_turn_url("turn:meet.example.org") == doctor.TurnServer(
        "turn:meet.example.org", "meet.example.org", 3478, "udp", False)
    assert doctor.parse_turn_url("turn:[2001:db8::1]:3479?transport=tcp").host == "2001:db8::1"
    assert doctor.parse_turn_url("turns:meet.example.org").port == 5349
    with pytest.raises(ValueError):
        doctor.parse_turn_url("stun:meet.example.org")


# ---------------------------------------------------------------------- the command
def confmeet_doctor(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFMEET_")}
    return subprocess.run([sys.executable, "-m", "cli", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_command_prints_problems_with_fixes_and_exit_codes(healthy: dict) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    args = ["doctor", "--config", str(healthy["config"]), "--models", str(healthy["options"].model_repository),
            "--timeout", "3"]
    runner = CliRunner()
    fine = runner.invoke(app, args)
    assert fine.exit_code == 0, fine.output
    assert "confmeet doctor" in fine.output and "No potential problems found." in fine.output
    shutil.rmtree(healthy["options"].model_repository / "vad" / "1")
    table = runner.invoke(app, args)
    assert table.exit_code == 2
    assert "1 potential problem(s):" in table.output
    assert "fix: run confmeet models import vad (it replaces the incomplete copy)" in table.output
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["exit_code"] == 2
    assert [(p["check"], p["status"]) for p in report["problems"]] == [("models", "fail")]
    assert report["problems"][0]["fix"] == "run confmeet models import vad (it replaces the incomplete copy)"
    assert {c["check"] for c in report["checks"]} >= {"configuration", "TLS certificate", "HTTP port", "media UDP",
                                                       "TURN", "disk space", "models"}


def test_command_names_configuration_errors_without_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", bus="kafka://x", data_dir=str(tmp_path))
    result = confmeet_doctor("--config", str(config))
    assert result.returncode == 2
    assert "setting 'bus' = 'kafka://x' is not a URL confmeet knows" in result.stdout
    assert "1 potential problem(s)" in result.stdout and "fix:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# ---------------------------------------------------------------------- TLS files
def test_private_ca_and_server_certificate(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, ["meet.example.org", "192.0.2.10", "2001:db8::10"])
    for key in (files.ca_key, files.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    server, ca = tls.load_certificate(files.cert), tls.load_certificate(files.ca_cert)
    server.verify_directly_issued_by(ca)
    assert tls.certificate_names(files.cert) == ["meet.example.org", "192.0.2.10", "2001:db8::10"]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    expiry = tls.certificate_expiry(files.cert)
    assert expiry.tzinfo is not None and dt.timedelta(days=396) < expiry - NOW <= dt.timedelta(days=397)
    assert tls.key_matches(files.cert, files.key) and not tls.key_matches(files.cert, files.ca_key)
    with pytest.raises(ValueError, match="at least one"):
        tls.issue_server_certificate(tmp_path, tls.CertificateFiles(files.ca_cert, files.ca_key), [])


def test_ensure_certificates_reissues_only_when_needed(tmp_path: Path) -> None:
    first = tls.ensure_certificates(tmp_path, ["meet.example.org"])
    serial = tls.load_certificate(first.cert).serial_number
    ca_serial = tls.load_certificate(first.ca_cert).serial_number
    assert tls.load_certificate(tls.ensure_certificates(tmp_path, ["MEET.example.org"]).cert).serial_number == serial
    later = NOW + dt.timedelta(days=380)
    renewed = tls.ensure_certificates(tmp_path, ["meet.example.org"], now=later)
    assert tls.load_certificate(renewed.cert).serial_number != serial
    widened = tls.ensure_certificates(tmp_path, ["meet.example.org", "10.0.0.5"])
    assert "10.0.0.5" in tls.certificate_names(widened.cert)
    assert tls.load_certificate(widened.ca_cert).serial_number == ca_serial  # the CA people imported stays


def test_a_client_trusting_the_ca_accepts_the_server(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, ["localhost", "127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))

    async def handshake(name: str) -> str:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=name)
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            return version
        finally:
            server.close()

    assert asyncio.run(handshake("localhost")).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake("meet.example.org"))
