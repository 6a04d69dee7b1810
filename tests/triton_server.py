"""A real Triton server for the tests and benchmarks: the ``tritonserver`` binary of the
nvidia-pytriton wheel (Triton 2.51 with its Python backend), on CPU, on loopback.

The Python backend runs model.py in a stub process with this interpreter's packages; the
backend directory is assembled from the wheel's files (see ../shared notes in docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import free_port

PYTRITON = Path(sysconfig.get_paths()["purelib"]) / "pytriton"
MODELS = ("vad", "asr")


def backend_directory(where: Path) -> Path:
    """DIR/python/ with libtriton_python.so, triton_python_backend_utils.py and the stub of this
    Python version, as tritonserver's --backend-directory wants."""
    python = where / "python"
    python.mkdir(parents=True, exist_ok=True)
    backend = PYTRITON / "tritonserver/backends/python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for source in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py",
                   PYTRITON / f"tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"):
        if not (python / source.name).exists():
            shutil.copy2(source, python / source.name)
    return where


@dataclass
class Triton:
    repository: Path
    backends: Path
    log: Path
    http_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.http_port}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(PYTRITON.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same port) and wait until both models are ready."""
        if not self.http_port:
            self.http_port = free_port()
        command = [str(PYTRITON / "tritonserver/bin/tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={self.backends}", f"--http-port={self.http_port}",
                   "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false",
                   "--exit-timeout-secs=2", "--log-verbose=0"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(command, env=self.environment(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                base = f"http://127.0.0.1:{self.http_port}/v2/models"
                if all(httpx.get(f"{base}/{m}/ready", timeout=1).status_code == 200 for m in MODELS):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"tritonserver not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and its Python-backend stubs (its process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def start_triton(repository: Path, scratch: Path) -> Triton:
    triton = Triton(repository, backend_directory(scratch / "backends"), scratch / "tritonserver.log")
    triton.start()
    return triton
