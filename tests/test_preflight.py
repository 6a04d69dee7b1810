"""Preflight checks against faked files, taken ports, a real Docker Engine and faked GPUs."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from appliance.machine import preflight
from appliance.machine.ports import bind_error
from appliance.machine.preflight import GiB, Finding, PreflightOptions, render_findings, run_checks
from conftest import free_port, stop
from test_doctor import coturn  # noqa: F401  (a fixture: a real coturn on loopback)
from test_gpu import DOCKER_PLAIN, pci_device, probe

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP (TURN listens on both)."""
    for _ in range(200):
        port = free_udp_port()
        if bind_error("127.0.0.1", port, "tcp") is None:
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def free_udp_range(size: int) -> int:
    """The first port of ``size`` consecutive UDP ports that are free now."""
    for _ in range(200):
        base = free_udp_port()
        if base + size <= 65535 and all(bind_error("127.0.0.1", p, "udp") is None
                                        for p in range(base, base + size)):
            return base
    raise RuntimeError("no free UDP port range")


def options(tmp_path: Path, **overrides: object) -> PreflightOptions:
    os_release = tmp_path / "os-release"
    if not os_release.exists():
        os_release.write_text(DEBIAN_12)
    meminfo = tmp_path / "meminfo"
    if not meminfo.exists():
        meminfo.write_text(f"MemTotal:       {16 * 1024 * 1024} kB\nMemFree:         1000 kB\n")
    base = free_udp_range(20)
    values: dict = dict(os_release=os_release, meminfo=meminfo, data_dir=tmp_path / "data",
                        docker_base_url=f"unix://{tmp_path}/no-docker.sock", address="127.0.0.1",
                        https_port=free_port(), turn_port=free_udp_and_tcp_port(), media_udp_min=base,
                        media_udp_max=base + 19, cpu_count=8, gpu_probe=probe(tmp_path / "host"))
    values.update(overrides)
    return PreflightOptions(**values)


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


@pytest.mark.parametrize("release, status", [
    (DEBIAN_12, "pass"),
    ('ID=debian\nVERSION_ID="13"\nPRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n', "pass"),
    ('ID=debian\nVERSION_ID="11"\nPRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\n', "fail"),
    ('ID=debian\nVERSION_ID="10"\nPRETTY_NAME="Debian GNU/Linux 10 (buster)"\n', "fail"),
    ('ID=ubuntu\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n', "fail"),
    ('ID=ubuntu\nVERSION_ID="24.04"\n', "pass"),
    ('ID=ubuntu\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\n', "fail"),
    ('ID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n', "warn"),
    ('ID=debian\nPRETTY_NAME="Debian GNU/Linux trixie/sid"\n', "warn"),
])
def test_operating_system(tmp_path: Path, release: str, status: str) -> None:
    (tmp_path / "os-release").write_text(release)
    finding = preflight.check_os(options(tmp_path))
    assert finding.status == status, finding
    assert (finding.fix == "") == (status == "pass")
    if status == "warn":
        assert "Debian 12 or later, Ubuntu 24.04 or later" in finding.fix
    if status == "fail":  # too old: its python3 cannot run confmeet, and the fix says what to run
        assert "older than 3.11" in finding.detail
        assert finding.fix.startswith("upgrade to Debian 12" if "debian" in release else "upgrade to Ubuntu 24.04")


def test_python_for_the_release(tmp_path: Path) -> None:
    """The release's virtualenv needs python3 >= 3.11 with venv; an older one fails with the fix."""
    from appliance.machine import release as release_module

    assert release_module.python_problem(Path("/usr/bin/python3")) is None  # Debian 12's 3.11
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\necho 3 10\n")
    old.chmod(0o755)
    what, fix = release_module.python_problem(old)
    assert "Python 3.10" in what and "Debian 12 or Ubuntu 24.04" in fix
    what, fix = release_module.python_problem(tmp_path / "missing")
    assert "missing" in what and "python3-venv" in fix


def test_operating_system_without_os_release(tmp_path: Path) -> None:
    finding = preflight.check_os(options(tmp_path, os_release=tmp_path / "missing"))
    assert finding.status == "warn" and "cannot read" in finding.detail


@pytest.mark.parametrize("cores, status", [(1, "fail"), (2, "warn"), (3, "warn"), (4, "pass"), (32, "pass")])
def test_cpu_cores(tmp_path: Path, cores: int, status: str) -> None:
    finding = preflight.check_cpu(options(tmp_path, cpu_count=cores))
    assert finding.status == status and finding.detail == f"{cores} CPU core(s)"
    assert ("4 cores" in finding.fix) == (status != "pass")


@pytest.mark.parametrize("gib, status", [(2, "fail"), (3.7, "fail"), (3.9, "warn"), (7.5, "warn"), (7.7, "pass"), (64, "pass")])
def test_memory(tmp_path: Path, gib: float, status: str) -> None:
    (tmp_path / "meminfo").write_text(f"MemTotal:       {int(gib * 1024 * 1024)} kB\n")
    finding = preflight.check_memory(options(tmp_path))
    assert finding.status == status, finding
    assert ("8 GiB" in finding.fix) == (status != "pass")


def test_disk_space_at_a_data_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    data_dir = tmp_path / "var/lib/confmeet"
    free = shutil.disk_usage(tmp_path).free
    passing = preflight.check_disk(data_dir, warn_below=free // 2, fail_below=free // 4)
    assert passing.status == "pass" and f"(on {tmp_path})" in passing.detail
    warning = preflight.check_disk(data_dir, warn_below=free * 2, fail_below=free // 2)
    assert warning.status == "warn" and "free space" in warning.fix
    failure = preflight.check_disk(data_dir, warn_below=free * 4, fail_below=free * 2)
    assert failure.status == "fail" and str(tmp_path) in failure.fix
    assert preflight.check_disk(tmp_path).status == ("pass" if free >= 50 * GiB else "warn" if free >= 10 * GiB else "fail")


def test_free_ports_pass(tmp_path: Path) -> None:
    findings = preflight.check_ports(options(tmp_path))
    assert [(f.check, f.status) for f in findings] == [
        ("HTTPS port", "pass"), ("TURN port (UDP)", "pass"), ("TURN port (TCP)", "pass"), ("media ports", "pass")]
    assert "8 sampled ports" in findings[-1].detail


def test_taken_ports_fail_with_the_fix(tmp_path: Path) -> None:
    opts = options(tmp_path)
    with socket.socket() as https, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as turn, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media:
        https.bind(("127.0.0.1", opts.https_port))
        https.listen()
        turn.bind(("127.0.0.1", opts.turn_port))
        media.bind(("127.0.0.1", opts.media_udp_min))
        found = by_check(preflight.check_ports(opts))
    assert found["HTTPS port"].status == "fail"
    assert found["HTTPS port"].detail == f"127.0.0.1:{opts.https_port}/tcp is taken by another program"
    assert f"ss -ltnp 'sport = :{opts.https_port}'" in found["HTTPS port"].fix
    assert found["TURN port (UDP)"].status == "fail" and "ss -lunp" in found["TURN port (UDP)"].fix
    assert found["TURN port (TCP)"].status == "pass"  # only the UDP side was taken
    media_finding = found["media ports"]
    assert media_finding.status == "warn" and "1 of 8 sampled ports" in media_finding.detail
    assert "media_udp_min/media_udp_max" in media_finding.fix


def test_whole_media_range_taken_fails(tmp_path: Path) -> None:
    opts = options(tmp_path)
    opts.media_udp_max = opts.media_udp_min + 2
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, sock in enumerate(sockets):
            sock.bind(("127.0.0.1", opts.media_udp_min + i))
        finding = by_check(preflight.check_ports(opts))["media ports"]
    finally:
        for sock in sockets:
            sock.close()
    assert finding.status == "fail" and "3 of 3 sampled ports" in finding.detail


def test_address_not_on_this_host(tmp_path: Path) -> None:
    finding = preflight.check_ports(options(tmp_path, address="192.0.2.123"))[0]
    assert finding.status == "fail" and "not an address of this host" in finding.detail


def test_turn_port_held_by_a_turn_server_passes(tmp_path: Path, coturn: dict) -> None:
    finding = by_check(preflight.check_ports(options(tmp_path, turn_port=coturn["port"])))["TURN port (UDP)"]
    assert finding.status == "pass" and "STUN/TURN server already answers" in finding.detail


def test_docker_unreachable_warns(tmp_path: Path) -> None:
    finding, info = preflight.check_docker(options(tmp_path))
    assert finding.status == "warn" and info is None
    assert "no Docker Engine answers" in finding.detail
    assert "install docker.io" in finding.fix and "--mode native" in finding.fix
    native, _ = preflight.check_docker(options(tmp_path, mode="native"))
    assert native.status == "pass" and "--mode native" in native.detail


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("dockerd") is None:
        pytest.skip("needs dockerd (Debian's docker.io)")
    root = tmp_path_factory.mktemp("docker")
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(["dockerd", f"--data-root={root}/data", f"--exec-root={root}/exec", f"-H=unix://{sock}",
                             f"--pidfile={root}/docker.pid", "--iptables=false", "--bridge=none",
                             "--default-ulimit", "nofile=20000:20000", "--default-ulimit", "nproc=32768:32768"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"unix://{sock}"
    stop(proc)
    log.close()


def test_docker_engine_answers(tmp_path: Path, dockerd: str) -> None:
    opts = options(tmp_path, docker_base_url=dockerd, gpu_probe=None)
    finding, info = preflight.check_docker(opts)
    assert finding.status == "pass", finding
    assert f"on {dockerd}" in finding.detail and "(API 1." in finding.detail
    assert info is not None and "runc" in info["Runtimes"]
    # The GPU check reuses what Docker said: no nvidia runtime here.
    assert preflight.check_gpu(opts, info).status == "pass"


def test_gpu_present_but_unusable_warns_with_the_fix(tmp_path: Path) -> None:
    host = tmp_path / "host"
    pci_device(host, "0000:3b:00.0", "0x10de", "0x030200")
    finding = preflight.check_gpu(options(tmp_path, gpu_probe=probe(host, docker_info=DOCKER_PLAIN)))
    assert finding.status == "warn" and finding.detail == "NVIDIA GPU found but no driver"
    assert "install nvidia-driver" in finding.fix
    no_gpu = preflight.check_gpu(options(tmp_path, gpu_probe=probe(tmp_path / "empty")))
    assert no_gpu.status == "pass" and "Triton runs on the CPU" in no_gpu.detail


def test_run_checks_covers_everything_and_renders(tmp_path: Path) -> None:
    findings = run_checks(options(tmp_path, cpu_count=1))
    assert [f.check for f in findings] == ["operating system", "CPU", "memory", "disk space", "HTTPS port",
                                           "TURN port (UDP)", "TURN port (TCP)", "media ports", "Docker Engine", "GPU"]
    assert by_check(findings)["CPU"].status == "fail" and preflight.exit_code(findings) == 2
    console = Console(file=io.StringIO(), record=True, width=200, color_system="truecolor")
    console.print(render_findings(findings))
    text = console.export_text(clear=False)
    assert "preflight checks" in text and "give the host at least 4 cores" in text and "install docker.io" in text
    styled = console.export_html(inline_styles=True)
    assert "color: #800000" in styled or "color: #ff0000" in styled  # fail is red
    assert preflight.exit_code([Finding("x", "pass", "")]) == 0
    assert preflight.exit_code([Finding("x", "pass", ""), Finding("y", "warn", "", "fix")]) == 1


def test_real_host_gpu_probe_is_the_default(tmp_path: Path) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has an NVIDIA GPU")
    finding = preflight.check_gpu(options(tmp_path, gpu_probe=None), {"Runtimes": {}})
    assert finding.status == "pass" and finding.detail.startswith("no NVIDIA GPU found")
