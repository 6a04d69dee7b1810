"""Can this host run the appliance? Checks made before installing, each with the fix.

Every check gives one or more Findings: "pass", "warn" (installing works, but something should
be done) or "fail" (installing would not work). ``confmeet install`` runs them first; the
doctor reuses the shared pieces (disk space, the GPU).
"""

from __future__ import annotations

import os
import re
import shutil
import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.table import Table

from . import gpu
from .ports import Protocol, bind_error, describe_bind_error, stun_answers

Status = Literal["pass", "warn", "fail"]
GiB = 1024 ** 3
# The oldest releases whose python3 is 3.11 or later, which confmeet's release needs
# (Debian 11 has 3.9, Ubuntu 22.04 3.10).
SUPPORTED_OS = {"debian": (12,), "ubuntu": (24, 4)}
OS_FIX = {"debian": "upgrade to Debian 12 (bookworm) or later", "ubuntu": "upgrade to Ubuntu 24.04 LTS or later"}
MIN_DOCKER = (20, 10)
STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@dataclass
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class PreflightOptions:
    """What to check, and where to look (every path and source can be replaced for tests).

    ``docker_base_url``: the Docker Engine API (None: DOCKER_HOST or the default socket).
    ``mode``: "containers" needs Docker; "native" does not. ``cpu_count``: None counts the CPUs
    this process may run on. ``media_sample``: how many ports of the media range to bind-test.
    """

    os_release: Path = Path("/etc/os-release")
    meminfo: Path = Path("/proc/meminfo")
    data_dir: Path = Path("/var/lib/confmeet")
    docker_base_url: str | None = None
    mode: Literal["containers", "native"] = "containers"
    address: str = "0.0.0.0"
    https_port: int = 443
    turn_port: int = 3478
    media_udp_min: int = 20000
    media_udp_max: int = 20999
    media_sample: int = 8
    cpu_count: int | None = None
    gpu_probe: gpu.GpuProbe | None = None


def exit_code(findings: list[Finding]) -> int:
    """0: all passed, 1: a warning, 2: a failure (the doctor's and installer's exit codes)."""
    statuses = {f.status for f in findings}
    return 2 if "fail" in statuses else 1 if "warn" in statuses else 0


def render_findings(findings: list[Finding], title: str = "preflight checks") -> Table:
    table = Table(title=title)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for f in findings:
        style = STATUS_STYLE[f.status]
        table.add_row(f.check, f"[{style}]{f.status}[/]", f.detail, f.fix)
    return table


# ---------------------------------------------------------------------- operating system
def _os_release(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"\'')
    return values


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def check_os(options: PreflightOptions) -> Finding:
    supported = "Debian 12 or later, Ubuntu 24.04 or later"
    try:
        release = _os_release(options.os_release)
    except OSError as exc:
        return Finding("operating system", "warn", f"cannot read {options.os_release}: {exc.strerror}",
                       f"confmeet is tested on {supported}")
    name = release.get("PRETTY_NAME") or release.get("ID", "unknown")
    minimum = SUPPORTED_OS.get(release.get("ID", "").lower())
    version = _version(release.get("VERSION_ID", ""))
    if minimum is not None and version and version >= minimum:
        return Finding("operating system", "pass", name)
    if minimum is not None and version:
        return Finding("operating system", "fail", f"{name} is too old: its python3 is older than 3.11, "
                       "which confmeet needs", f"{OS_FIX[release['ID'].lower()]}, then rerun confmeet install")
    return Finding("operating system", "warn", f"{name} is not a tested system",
                   f"confmeet is tested on {supported}; other systems may work")


# ---------------------------------------------------------------------- hardware
def check_cpu(options: PreflightOptions) -> Finding:
    cores = options.cpu_count if options.cpu_count is not None else len(os.sched_getaffinity(0))
    detail = f"{cores} CPU core(s)"
    if cores >= 4:
        return Finding("CPU", "pass", detail)
    fix = "give the host at least 4 cores (media forwarding, databases and captions share them)"
    return Finding("CPU", "warn" if cores >= 2 else "fail", detail, fix)


def check_memory(options: PreflightOptions) -> Finding:
    try:
        meminfo = options.meminfo.read_text()
        total = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError) as exc:
        return Finding("memory", "warn", f"cannot read {options.meminfo}: {exc}", "check /proc is mounted")
    detail = f"{total / GiB:.1f} GiB"
    if total >= 8 * GiB * 0.95:  # firmware and kernel keep a little of an "8 GiB" machine
        return Finding("memory", "pass", detail)
    fix = "give the host 8 GiB of memory (the databases, Triton and the SFU share it)"
    return Finding("memory", "warn" if total >= 4 * GiB * 0.95 else "fail", detail, fix)


def existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest directory above it that exists (the data dir may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(path: Path, warn_below: int = 50 * GiB, fail_below: int = 10 * GiB) -> Finding:
    where = existing_ancestor(path)
    free = shutil.disk_usage(where).free
    detail = f"{free / GiB:.1f} GiB free at {path}" + (f" (on {where})" if where != path else "")
    if free >= warn_below:
        return Finding("disk space", "pass", detail)
    fix = (f"free space on the file system of {where}, or move the data dir to a bigger one "
           f"(recordings and models need {warn_below // GiB} GiB)")
    return Finding("disk space", "warn" if free >= fail_below else "fail", detail, fix)


# ---------------------------------------------------------------------- network
def _media_sample(options: PreflightOptions) -> list[int]:
    ports = range(options.media_udp_min, options.media_udp_max + 1)
    count = max(1, min(options.media_sample, len(ports)))
    if count == 1:
        return [ports[0]]
    return sorted({ports[round(i * (len(ports) - 1) / (count - 1))] for i in range(count)})


def _port_finding(check: str, address: str, port: int, protocol: Protocol) -> Finding:
    error = bind_error(address, port, protocol)
    if error is None:
        return Finding(check, "pass", f"{address}:{port}/{protocol} is free")
    if protocol == "udp" and check.startswith("TURN") and stun_answers(address, port):
        return Finding(check, "pass", f"a STUN/TURN server already answers on {port}/udp (coturn installed before?)")
    detail, fix = describe_bind_error(error, address, port, protocol)
    return Finding(check, "warn" if error.errno == errno.EACCES else "fail", detail, fix)


def check_ports(options: PreflightOptions) -> list[Finding]:
    findings = [
        _port_finding("HTTPS port", options.address, options.https_port, "tcp"),
        _port_finding("TURN port (UDP)", options.address, options.turn_port, "udp"),
        _port_finding("TURN port (TCP)", options.address, options.turn_port, "tcp"),
    ]
    sample = _media_sample(options)
    taken = [(port, err) for port in sample if (err := bind_error(options.address, port, "udp")) is not None]
    span = f"{options.media_udp_min}-{options.media_udp_max}/udp"
    if not taken:
        findings.append(Finding("media ports", "pass", f"{len(sample)} sampled ports of {span} are free"))
    else:
        detail, fix = describe_bind_error(taken[0][1], options.address, taken[0][0], "udp")
        findings.append(Finding(
            "media ports", "warn" if len(taken) < len(sample) else "fail",
            f"{len(taken)} of {len(sample)} sampled ports of {span} are taken, e.g. {detail}",
            f"{fix} (media_udp_min/media_udp_max move the range)"))
    return findings


# ---------------------------------------------------------------------- Docker and GPU
def check_docker(options: PreflightOptions) -> tuple[Finding, dict[str, Any] | None]:
    """The finding, and ``docker info`` when the engine answers (the GPU check reuses it)."""
    if options.mode == "native":
        return Finding("Docker Engine", "pass", "not needed with --mode native"), None
    import docker
    import requests

    where = options.docker_base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=where, timeout=5)
        try:
            client.ping()
            version = client.version()
            info = client.info()
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = str(exc)
        if "Permission denied" in reason:
            return Finding("Docker Engine", "fail", f"no permission to use {where}",
                           "run as root, or add your user to the docker group"), None
        return Finding("Docker Engine", "warn", f"no Docker Engine answers on {where}",
                       "install docker.io (apt-get install docker.io) and start it, or use --mode native"), None
    number = str(version.get("Version", "unknown"))
    engine = next((c.get("Name") for c in version.get("Components") or [] if "Engine" in str(c.get("Name"))),
                  "Docker Engine")
    detail = f"{engine} {number} (API {version.get('ApiVersion', '?')}) on {where}"
    if _version(number) and _version(number) < MIN_DOCKER:
        return Finding("Docker Engine", "warn", detail + " is older than 20.10",
                       "upgrade docker.io to 20.10 or later"), info
    return Finding("Docker Engine", "pass", detail), info


def gpu_finding(report: gpu.GpuReport) -> Finding:
    if report.present and not report.usable_for_containers:
        return Finding("GPU", "warn", report.summary, report.fix)
    return Finding("GPU", "pass", report.summary)


def check_gpu(options: PreflightOptions, docker_info: dict[str, Any] | None = None) -> Finding:
    probe = options.gpu_probe
    if probe is None:
        probe = gpu.GpuProbe(docker_info=lambda: docker_info) if docker_info is not None else gpu.GpuProbe()
    return gpu_finding(gpu.detect(probe))


def run_checks(options: PreflightOptions) -> list[Finding]:
    docker_finding, docker_info = check_docker(options)
    return [check_os(options), check_cpu(options), check_memory(options), check_disk(options.data_dir),
            *check_ports(options), docker_finding, check_gpu(options, docker_info)]
