"""``skipgan-edge triton-serve``: a real Triton Inference Server around the scorer where no Triton install exists.

PyTriton's wheel (``nvidia-pytriton``, the ``[triton-serve]`` extra) bundles a ``tritonserver`` binary, its
libraries, the Python backend and one Python-backend stub per Python minor version. We start that binary
ourselves on a model repository written by :mod:`skipgan_edge.service.triton_repo`, the same repository (and
so the same ``config.pbtxt``: dynamic batching, instance group, the card as parameters) that ``export
--triton`` writes for a GPU server. PyTriton's own ``Triton.bind`` would have served a Python function
instead, with a configuration of its own; serving the repository means what the tests load is exactly what a
plant's Triton loads. How the binary is started follows PyTriton's launcher: its libraries on
``LD_LIBRARY_PATH``, this interpreter's ``bin`` first on ``PATH`` (the stub embeds the system's libpython and
finds this environment's packages through it), a Python backend folder holding the stub for this Python, and a
shared-memory prefix of its own per server.

**Which Python.** The stub links the system's ``libpython3.X.so`` and imports this environment's packages. PyTriton's
own bound models fail under a Python whose standard library is newer than that library (pyenv's 3.11.7 over
Debian's 3.11.2: ``'_thread.RLock' object has no attribute '_recursion_count'`` in
``multiprocessing.resource_tracker``, which their proxy uses). Our ``model.py`` does not use ``multiprocessing``
and loaded under both here, but the venv is still made from the system's own ``python3.11`` (``make
triton-venv``), the combination the stub was built for; and PyTriton 0.7 needs numpy < 2, which the training
venv cannot have. Should the mismatch bite, this module names it in one line.

Only the Python backend is bundled: a repository holding a TensorRT plan is for NVIDIA's Triton container
(``tritonserver --model-repository REPO``) on the GPU server that built the plan.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from skipgan_edge.errors import ConfigError
from skipgan_edge.service.triton_client import clean_stale_shm

INSTALL_HINT = ("pip install 'skipgan-edge[triton-serve]' in a venv made from the system's python3 (from a clone: "
                "make triton-venv, then .venv-triton/bin/skipgan-edge triton-serve)")
SHM_PREFIX = "skipgan_triton_"


@dataclass(frozen=True)
class ServerDist:
    binary: Path
    backend_lib: Path  # backends/python (libtriton_python.so, triton_python_backend_utils.py)
    stub: Path
    libs: Path  # the wheel's bundled shared libraries


def bundled_server() -> ServerDist:
    """PyTriton's bundled ``tritonserver``, its Python backend and the stub for this Python; one line if missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ConfigError(f"triton-serve needs PyTriton's bundled Triton server, which is not installed: {INSTALL_HINT}")
    root = Path(spec.origin).parent
    dist = root / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():  # an editable PyTriton keeps them inside the package
        libs = dist / "external_libs"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = ServerDist(dist / "bin" / "tritonserver", dist / "backends" / "python",
                       dist / "python_backend_stubs" / version / "triton_python_backend_stub", libs)
    for p in (found.binary, found.backend_lib / "libtriton_python.so", found.stub):
        if not p.exists():
            raise ConfigError(f"PyTriton's Triton server is incomplete here ({p} is missing; Python {version} may have no stub): {INSTALL_HINT}")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the process that started it dies, even by SIGKILL, so a
    killed ``triton-serve`` does not leave a server holding its ports."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _first_error(log: str) -> str:
    """The line of Triton's log that says why it did not start, made one line for the user."""
    if "_recursion_count" in log:
        return (f"Triton's Python-backend stub cannot run under this Python ({sys.executable}, {sys.version.split()[0]}): its standard "
                "library is newer than the system libpython the stub links; build the server's venv from the system's python3 "
                "(make triton-venv)")
    for pat in (r'failed to load \'[^\']*\'[^"\n]*', r"error: creating server: [^\n]*", r"failed to start [^\n]*", r"E\d{4} [^\n]*"):
        m = re.search(pat, log)
        if m and "CudaDriverHelper" not in m.group(0):
            return m.group(0).strip().strip('"')
    tail = [ln for ln in log.strip().splitlines() if ln.strip()]
    return tail[-1] if tail else "no output"


class TritonServer:
    """A ``tritonserver`` process on a repository; a context manager that starts it and waits until every model is ready."""

    def __init__(self, repository: Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 address: str = "127.0.0.1", verbose: bool = False, ready_timeout: float = 180.0) -> None:
        for what, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
            if not 1 <= port <= 65535:
                raise ConfigError(f"{what} must be 1..65535, got {port}")
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ConfigError(f"the HTTP, gRPC and metrics ports must differ, got {http_port}, {grpc_port}, {metrics_port}")
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address = address
        self.verbose = verbose
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(3)}_"

    # -------------------------------------------------------------------------------------------------
    def command(self, dist: ServerDist, backends: Path) -> list[str]:
        return [
            str(dist.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            f"--http-address={self.address}", f"--grpc-address={self.address}", f"--metrics-address={self.address}",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true", "--disable-auto-complete-config",
            "--exit-timeout-secs=10", f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    def start(self) -> None:
        dist = bundled_server()
        clean_stale_shm(SHM_PREFIX)
        self.workdir = Path(tempfile.mkdtemp(prefix="skipgan-triton-"))
        py = self.workdir / "backends" / "python"
        py.mkdir(parents=True)
        for f in dist.backend_lib.iterdir():
            if f.is_file():
                (py / f.name).symlink_to(f)
        (py / "triton_python_backend_stub").symlink_to(dist.stub)
        env = os.environ.copy()
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""), str(dist.libs)) if p)
        env["PATH"] = f"{Path(sys.exec_prefix) / 'bin'}:{env.get('PATH', '')}"
        self.log_path = self.workdir / "tritonserver.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it for its whole life
        try:
            self.proc = subprocess.Popen(self.command(dist, self.workdir / "backends"), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ConfigError(f"cannot start {dist.binary}: {exc.strerror or exc}") from None
        finally:
            log.close()
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    @property
    def local_host(self) -> str:
        """How a client on this machine reaches the server (a wildcard bind is reached on loopback), ready for a URL."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.address, self.address)
        return f"[{host}]" if ":" in host else host

    def failure(self) -> str:
        """Why the server stopped or did not start, one line from its log."""
        return _first_error(self.log())

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.local_host}:{self.http_port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                why = self.failure()
                self.stop()
                raise ConfigError(f"Triton did not start on {self.repository}: {why}")
            if self._get("/v2/health/ready")[0] == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"Triton did not become ready within {self.ready_timeout:.0f} s on {self.repository}: {self.failure()}")

    def models(self) -> list[dict[str, Any]]:
        """The repository index as the server reports it (name, version, state)."""
        req = urllib.request.Request(f"http://{self.local_host}:{self.http_port}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return list(json.loads(r.read()))

    def wait(self) -> int:
        """Block until the server exits (SIGINT/SIGTERM to this process stop it cleanly); its exit code."""
        assert self.proc is not None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def forward(signum: int, frame: Any) -> None:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)

        for s in previous:
            signal.signal(s, forward)
        try:
            return self.proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            for p in Path("/dev/shm").glob(self.shm_prefix + "*"):
                p.unlink()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
