"""Is there an NVIDIA GPU that Triton can use, and if not, what should the operator do?

The sources are asked from the most to the least informative: NVML (the driver's own library),
``nvidia-smi``, the kernel module's ``/dev`` and ``/proc`` files, and finally the PCI bus, which
shows a GPU even when no driver is installed. Triton runs in a container, so the GPU is only
used when Docker can hand it over too (the NVIDIA container toolkit).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

NVIDIA_PCI_VENDOR = "0x10de"
DISPLAY_CLASS_PREFIX = "0x03"  # PCI class 03xx: VGA and 3D controllers (not the GPU's audio function)
CONTAINER_TOOLKIT_BINARIES = ("nvidia-container-runtime-hook", "nvidia-container-runtime", "nvidia-ctk")

NO_DRIVER_FIX = ("install nvidia-driver (or the CUDA repo's cuda-drivers), reboot, "
                 "then rerun confmeet install")
TOOLKIT_FIX = ("install nvidia-container-toolkit, run 'nvidia-ctk runtime configure --runtime=docker' "
               "and 'systemctl restart docker', then rerun confmeet install")


def run_command(argv: list[str]) -> str:
    """Standard output of a command; CalledProcessError/OSError/TimeoutExpired when it fails."""
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=15).stdout


def docker_info_from_env() -> dict[str, Any] | None:
    """``docker info`` of the Docker Engine named by DOCKER_HOST (or the default socket); None if
    it does not answer."""
    import docker

    try:
        client = docker.from_env(timeout=3)
        try:
            return client.info()
        finally:
            client.close()
    except docker.errors.DockerException:
        return None


@dataclass
class GpuProbe:
    """Where ``detect`` looks. Every source can be replaced, so tests fake hosts without a GPU.

    ``nvml``: the NVML module (``pynvml``), a callable returning it, or None to import pynvml.
    ``which``: finds a program on PATH. ``run``: runs a command, returns its standard output and
    raises when it fails. ``docker_info``: returns ``docker info`` as a dict, or None when Docker
    does not answer.
    """

    sys_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    proc_root: Path = Path("/proc")
    nvml: Any = None
    which: Callable[[str], str | None] = shutil.which
    run: Callable[[list[str]], str] = run_command
    docker_info: Callable[[], dict[str, Any] | None] = docker_info_from_env


@dataclass
class GpuReport:
    present: bool
    driver_loaded: bool
    driver_version: str | None
    cuda_version: str | None
    devices: list[str]
    container_runtime: bool
    usable_for_containers: bool
    triton_device: Literal["gpu", "cpu"]
    message: str
    summary: str = ""
    fix: str = ""


@dataclass
class _Driver:
    """What one user-space source (NVML or nvidia-smi) says; ``error`` when it does not answer."""

    version: str | None = None
    cuda: str | None = None
    devices: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_nvml(probe: GpuProbe) -> _Driver:
    nvml = probe.nvml
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return _Driver(error="nvidia-ml-py is not installed")
    elif callable(nvml) and not hasattr(nvml, "nvmlInit"):
        nvml = nvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError and its subclasses, e.g. "NVML Shared Library Not Found"
        return _Driver(error=str(exc) or type(exc).__name__)
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        return _Driver(
            version=_text(nvml.nvmlSystemGetDriverVersion()),
            cuda=f"{cuda // 1000}.{cuda % 1000 // 10}",
            devices=[_text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
                     for i in range(nvml.nvmlDeviceGetCount())])
    except Exception as exc:
        return _Driver(error=str(exc) or type(exc).__name__)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass  # the answer is already taken; a failing shutdown changes nothing


def _from_nvidia_smi(probe: GpuProbe) -> _Driver:
    smi = probe.which("nvidia-smi")
    if smi is None:
        return _Driver(error="nvidia-smi is not installed")
    try:
        rows = probe.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"])
        header = probe.run([smi])
    except (OSError, subprocess.SubprocessError) as exc:
        return _Driver(error=f"nvidia-smi failed: {exc}")
    devices, version = [], None
    for row in rows.splitlines():
        if "," in row:
            name, version = (part.strip() for part in row.rsplit(",", 1))
            devices.append(name)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return _Driver(version=version, cuda=cuda.group(1) if cuda else None, devices=devices)


def _kernel_module(probe: GpuProbe) -> tuple[str | None, list[str]]:
    """The loaded kernel module's version (None: not loaded) and the GPU models it lists."""
    base = probe.proc_root / "driver" / "nvidia"
    try:
        banner = (base / "version").read_text()
    except OSError:
        return None, []
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", banner)
    models = []
    for info in sorted(base.glob("gpus/*/information")):
        model = re.search(r"^Model:\s*(.+)$", info.read_text(), re.MULTILINE)
        if model:
            models.append(model.group(1).strip())
    return (match.group(1) if match else "unknown"), models


def _pci_gpus(probe: GpuProbe) -> list[tuple[str, str]]:
    """NVIDIA display controllers on the PCI bus: (description, bound kernel driver or "")."""
    gpus = []
    for device in sorted((probe.sys_root / "bus" / "pci" / "devices").glob("*")):
        try:
            if (device / "vendor").read_text().strip().lower() != NVIDIA_PCI_VENDOR:
                continue
            device_class = (device / "class").read_text().strip().lower()
        except OSError:
            continue
        if not device_class.startswith(DISPLAY_CLASS_PREFIX):
            continue
        try:
            device_id = (device / "device").read_text().strip().lower().removeprefix("0x")
        except OSError:
            device_id = "????"
        driver = device / "driver"
        gpus.append((f"NVIDIA GPU 10de:{device_id} at {device.name}",
                     driver.resolve().name if driver.exists() else ""))
    return gpus


def _container_runtime(probe: GpuProbe) -> bool:
    if any(probe.which(name) for name in CONTAINER_TOOLKIT_BINARIES):
        return True
    info = probe.docker_info() or {}
    return "nvidia" in (info.get("Runtimes") or {})


def detect(probe: GpuProbe | None = None) -> GpuReport:
    """What the host offers Triton: ``triton_device`` is "gpu" only when a driver answers and
    Docker can use the GPU; ``message`` says what was found and, where something is missing, the fix."""
    probe = probe or GpuProbe()
    driver = _from_nvml(probe)
    if not driver.answered:
        nvml_error = driver.error
        driver = _from_nvidia_smi(probe)
        if not driver.answered:
            driver.error = f"{nvml_error}; {driver.error}"
    module_version, module_models = _kernel_module(probe)
    device_nodes = sorted(p.name for p in probe.dev_root.glob("nvidia[0-9]*"))
    pci = _pci_gpus(probe)

    driver_loaded = driver.answered or module_version is not None
    devices = (driver.devices if driver.answered else []) or module_models or [name for name, _ in pci] \
        or [f"/dev/{node}" for node in device_nodes]
    present = bool(devices)
    runtime = _container_runtime(probe)
    usable = driver.answered and present and runtime
    version = driver.version if driver.answered else module_version

    if not present:
        summary, fix = "no NVIDIA GPU found: Triton runs on the CPU (captions work, more slowly)", ""
    elif not driver_loaded:
        if any(bound == "nouveau" for _, bound in pci):
            summary = "NVIDIA GPU found but the nouveau driver holds it"
            fix = "install nvidia-driver (it blacklists nouveau), reboot, then rerun confmeet install"
        else:
            summary, fix = "NVIDIA GPU found but no driver", NO_DRIVER_FIX
    elif not driver.answered:
        summary = f"NVIDIA kernel module {version} is loaded but NVML does not answer ({driver.error})"
        fix = ("after a driver upgrade, reboot; otherwise reinstall nvidia-driver; "
               "then rerun confmeet install")
    elif not runtime:
        summary = f"NVIDIA driver {version} works but Docker cannot use the GPU (no NVIDIA container toolkit)"
        fix = f"{TOOLKIT_FIX}; until then Triton runs on the CPU"
    else:
        summary = (f"{len(devices)} NVIDIA GPU(s) ({', '.join(devices)}), driver {version}, "
                   f"CUDA {driver.cuda or 'unknown'}; Docker can use them: Triton runs on the GPU")
        fix = ""
    return GpuReport(
        present=present, driver_loaded=driver_loaded, driver_version=version,
        cuda_version=driver.cuda if driver.answered else None, devices=devices,
        container_runtime=runtime, usable_for_containers=usable,
        triton_device="gpu" if usable else "cpu",
        message=f"{summary}: {fix}" if fix else summary, summary=summary, fix=fix)


def asr_placement(report: GpuReport) -> tuple[Literal["gpu", "cpu"], str]:
    """Where the installer tells Triton to run the asr model (its instance group), and why.
    VAD always stays on the CPU (0.1 ms per 32 ms chunk: a GPU would not help)."""
    if report.triton_device == "gpu":
        return "gpu", (f"KIND_GPU: CTranslate2 is asked for CUDA (float16) on {', '.join(report.devices)}; "
                       "confmeet status shows the device the model reports once loaded")
    return "cpu", f"KIND_CPU (int8): {report.summary}" + (f"; {report.fix}" if report.fix else "")
