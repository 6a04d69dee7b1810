"""GPU detection on faked hosts (sysfs, /dev, /proc, NVML, nvidia-smi, Docker all replaced) and on
this real host, which has no GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pynvml
import pytest

from appliance.machine.gpu import GpuProbe, detect


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """What pynvml answers on a host with a working driver."""

    def __init__(self, names: list[str], driver: str = "550.54.15", cuda: int = 12040) -> None:
        self.names, self.driver, self.cuda = names, driver, cuda
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.names[handle].encode()  # older pynvml releases return bytes


class NoNvml:
    """pynvml on a host without the driver's libnvidia-ml."""

    def __init__(self, message: str = "NVML Shared Library Not Found") -> None:
        self.message = message

    def nvmlInit(self) -> None:
        raise FakeNvmlError(self.message)


def pci_device(root: Path, address: str, vendor: str, device_class: str, device: str = "0x2330",
               driver: str | None = None) -> None:
    path = root / "sys/bus/pci/devices" / address
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "class").write_text(device_class + "\n")
    (path / "device").write_text(device + "\n")
    if driver:
        target = root / "sys/bus/pci/drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (path / "driver").symlink_to(target)


def kernel_module(root: Path, version: str = "550.54.15", models: tuple[str, ...] = ("NVIDIA H100 80GB HBM3",)) -> None:
    base = root / "proc/driver/nvidia"
    base.mkdir(parents=True)
    (base / "version").write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  "
                                  "Release Build  (dvs-builder@U16-I3-B03-4-3)\nGCC version:  gcc 12\n")
    for i, model in enumerate(models):
        gpu = base / "gpus" / f"0000:0{i}:00.0"
        gpu.mkdir(parents=True)
        (gpu / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 42\n")
    (root / "dev").mkdir(exist_ok=True)
    for i in range(len(models)):
        (root / "dev" / f"nvidia{i}").touch()


def probe(root: Path, nvml: Any = None, programs: dict[str, str] | None = None,
          docker_info: dict[str, Any] | None = None, outputs: dict[str, str] | None = None) -> GpuProbe:
    for sub in ("sys/bus/pci/devices", "dev", "proc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    programs = programs or {}

    def run(argv: list[str]) -> str:
        key = " ".join(argv[1:])
        if outputs is None or key not in outputs:
            raise subprocess.CalledProcessError(9, argv, stderr="NVIDIA-SMI has failed because it couldn't "
                                                "communicate with the NVIDIA driver")
        return outputs[key]

    return GpuProbe(sys_root=root / "sys", dev_root=root / "dev", proc_root=root / "proc",
                    nvml=nvml or NoNvml(), which=programs.get, run=run,
                    docker_info=lambda: docker_info)


DOCKER_WITH_NVIDIA = {"Runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}}}
DOCKER_PLAIN = {"Runtimes": {"runc": {"path": "runc"}}}


def test_no_gpu(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:00:02.0", "0x8086", "0x030000")  # an Intel GPU is not one Triton uses
    pci_device(tmp_path, "0000:00:03.0", "0x1af4", "0x020000")
    report = detect(probe(tmp_path, docker_info=DOCKER_PLAIN))
    assert (report.present, report.driver_loaded, report.devices) == (False, False, [])
    assert report.triton_device == "cpu" and not report.usable_for_containers
    assert report.message.startswith("no NVIDIA GPU found") and "CPU" in report.message
    assert report.fix == ""


def test_gpu_without_driver(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", device="0x2330")
    pci_device(tmp_path, "0000:3b:00.1", "0x10de", "0x040300")  # the GPU's audio function is not a GPU
    report = detect(probe(tmp_path, docker_info=DOCKER_WITH_NVIDIA))
    assert report.present and not report.driver_loaded and report.driver_version is None
    assert report.devices == ["NVIDIA GPU 10de:2330 at 0000:3b:00.0"]
    assert report.triton_device == "cpu" and not report.usable_for_containers
    assert report.message == ("NVIDIA GPU found but no driver: install nvidia-driver (or the CUDA repo's "
                              "cuda-drivers), reboot, then rerun confmeet install")


def test_gpu_held_by_nouveau(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:01:00.0", "0x10de", "0x030000", driver="nouveau")
    report = detect(probe(tmp_path))
    assert report.present and not report.driver_loaded and report.triton_device == "cpu"
    assert "nouveau" in report.summary and "install nvidia-driver" in report.fix and "reboot" in report.fix


def test_gpu_with_driver_and_container_runtime(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", driver="nvidia")
    kernel_module(tmp_path)
    nvml = FakeNvml(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    report = detect(probe(tmp_path, nvml=nvml, docker_info=DOCKER_WITH_NVIDIA))
    assert report.present and report.driver_loaded and report.container_runtime
    assert (report.driver_version, report.cuda_version) == ("550.54.15", "12.4")
    assert report.devices == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]
    assert report.usable_for_containers and report.triton_device == "gpu"
    assert "2 NVIDIA GPU(s)" in report.message and "Triton runs on the GPU" in report.message
    assert report.fix == "" and nvml.shut_down


def test_nvml_given_as_a_callable(tmp_path: Path) -> None:
    report = detect(probe(tmp_path, nvml=lambda: FakeNvml(["NVIDIA L4"], cuda=12020), docker_info=DOCKER_WITH_NVIDIA))
    assert report.devices == ["NVIDIA L4"] and report.cuda_version == "12.2" and report.triton_device == "gpu"


def test_driver_without_container_runtime(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", driver="nvidia")
    report = detect(probe(tmp_path, nvml=FakeNvml(["NVIDIA L40S"]), docker_info=DOCKER_PLAIN))
    assert report.driver_loaded and not report.container_runtime
    assert report.triton_device == "cpu" and not report.usable_for_containers
    assert "Docker cannot use the GPU" in report.message
    assert "install nvidia-container-toolkit" in report.fix and "nvidia-ctk runtime configure" in report.fix
    # Docker down entirely: the same answer, not an error.
    assert detect(probe(tmp_path, nvml=FakeNvml(["NVIDIA L40S"]), docker_info=None)).triton_device == "cpu"


def test_container_toolkit_found_on_path(tmp_path: Path) -> None:
    programs = {"nvidia-container-runtime-hook": "/usr/bin/nvidia-container-runtime-hook"}
    report = detect(probe(tmp_path, nvml=FakeNvml(["NVIDIA A10"]), programs=programs, docker_info=DOCKER_PLAIN))
    assert report.container_runtime and report.triton_device == "gpu"


def test_nvidia_smi_when_nvml_is_unavailable(tmp_path: Path) -> None:
    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", driver="nvidia")
    outputs = {"--query-gpu=name,driver_version --format=csv,noheader": "Tesla T4, 535.104.05\n",
               "": "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |\n"}
    report = detect(probe(tmp_path, programs={"nvidia-smi": "/usr/bin/nvidia-smi"}, outputs=outputs,
                          docker_info=DOCKER_WITH_NVIDIA))
    assert (report.devices, report.driver_version, report.cuda_version) == (["Tesla T4"], "535.104.05", "12.2")
    assert report.triton_device == "gpu"


def test_kernel_module_loaded_but_nvml_broken(tmp_path: Path) -> None:
    """After a driver upgrade without a reboot: /proc shows the module, NVML and nvidia-smi fail."""
    kernel_module(tmp_path, version="550.90.07")
    report = detect(probe(tmp_path, nvml=NoNvml("Driver/library version mismatch"),
                          programs={"nvidia-smi": "/usr/bin/nvidia-smi"}, docker_info=DOCKER_WITH_NVIDIA))
    assert report.present and report.driver_loaded and report.driver_version == "550.90.07"
    assert report.devices == ["NVIDIA H100 80GB HBM3"]
    assert report.triton_device == "cpu" and "version mismatch" in report.summary and "reboot" in report.fix


def test_device_nodes_alone_count_as_present(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()
    (tmp_path / "dev" / "nvidiactl").touch()
    report = detect(probe(tmp_path))
    assert report.present and report.devices == ["/dev/nvidia0"] and "no driver" in report.summary


@pytest.mark.skipif(os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia"),
                    reason="this host has an NVIDIA GPU")
def test_this_host_has_no_gpu() -> None:
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()
    report = detect(GpuProbe(docker_info=lambda: None))  # the real NVML, sysfs, /dev, /proc and PATH
    assert not report.present and not report.driver_loaded and report.triton_device == "cpu"
    assert report.message.startswith("no NVIDIA GPU found")


# ---------------------------------------------------------------------- the asr model's device
def triton_args(repository: Path, name: str) -> dict[str, str]:
    """What Triton's Python backend hands ``initialize`` for the installed config: the instance
    kind and device of its instance group, the model's directory and version."""
    from appliance.inference.models import instance_kind

    return {"model_config": json.dumps({"parameters": {"cpu_threads": {"string_value": "1"}}}),
            "model_instance_kind": instance_kind(repository, name).upper(), "model_instance_device_id": "0",
            "model_repository": str(repository / name), "model_version": "1"}


@pytest.fixture(scope="module")
def installed_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from appliance.inference.models import import_models

    repository = tmp_path_factory.mktemp("models") / "model_repository"
    import_models("packages", repository)
    return repository


def test_asr_is_rendered_for_cuda_when_docker_can_use_the_gpu(tmp_path: Path, installed_models: Path) -> None:
    """NVML, sysfs and Docker's runtimes faked (nothing above them): the installer renders asr
    with KIND_GPU and the model asks CTranslate2 for CUDA; VAD stays on the CPU. On this host
    CTranslate2's own CUDA initialisation then fails, which shows that CUDA was really asked for."""
    from appliance.machine.gpu import asr_placement
    from appliance.inference.models import instance_kind, load_module, set_instance_kind

    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", driver="nvidia")
    report = detect(probe(tmp_path, nvml=FakeNvml(["NVIDIA H100 80GB HBM3"]), docker_info=DOCKER_WITH_NVIDIA))
    device, reason = asr_placement(report)
    assert device == "gpu" and "KIND_GPU" in reason and "NVIDIA H100 80GB HBM3" in reason
    assert set_instance_kind(installed_models, "asr", device)
    config = (installed_models / "asr/config.pbtxt").read_text()
    assert "instance_group [ { count: 1 kind: KIND_GPU } ]" in config
    assert instance_kind(installed_models, "vad") == "cpu"  # VAD is not moved
    module = load_module(installed_models, "asr")
    assert module.device_of(triton_args(installed_models, "asr")) == ("cuda", 0)
    model = module.TritonPythonModel()
    with pytest.raises(RuntimeError, match="CUDA"):  # CTranslate2 tried CUDA: no driver on this host
        model.initialize(triton_args(installed_models, "asr"))


def test_asr_stays_on_the_cpu_and_the_plan_says_why(tmp_path: Path, installed_models: Path) -> None:
    from appliance.machine.gpu import asr_placement
    from appliance.inference.models import load_module, set_instance_kind

    pci_device(tmp_path, "0000:3b:00.0", "0x10de", "0x030200", driver="nvidia")
    report = detect(probe(tmp_path, nvml=FakeNvml(["NVIDIA L40S"]), docker_info=DOCKER_PLAIN))
    device, reason = asr_placement(report)
    assert device == "cpu" and reason.startswith("KIND_CPU (int8): NVIDIA driver 550.54.15 works but Docker "
                                                 "cannot use the GPU")
    assert "install nvidia-container-toolkit" in reason
    set_instance_kind(installed_models, "asr", device)
    assert "kind: KIND_CPU" in (installed_models / "asr/config.pbtxt").read_text()
    model = load_module(installed_models, "asr").TritonPythonModel()
    model.initialize(triton_args(installed_models, "asr"))
    assert model.asr.device.startswith("cpu int8")  # what CTranslate2 reports, not what was asked
    no_gpu = asr_placement(detect(probe(tmp_path / "none", docker_info=DOCKER_PLAIN)))
    assert no_gpu == ("cpu", "KIND_CPU (int8): no NVIDIA GPU found: Triton runs on the CPU (captions work, "
                             "more slowly)")
