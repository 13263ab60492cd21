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

**Stopping.** SIGINT or SIGTERM stops the server and removes the temporary folders (the server's work folder, and the
repository written for ``--onnx``), at any moment, start-up included. A ``triton-serve`` killed outright (SIGKILL) takes
its server with it (Linux's parent-death signal), and the next ``triton-serve`` removes the folders the dead one left
and waits for (or ends) a server of a dead ``triton-serve`` still holding its ports, so an immediate restart works.

**Bytecode.** The stub imports ``model`` from the version folder; Python would take a ``__pycache__/model.*.pyc`` whose
header matches the source without reading the source. The stub's Python is isolated (it ignores ``PYTHON*`` variables),
so the repository itself blocks bytecode: each version folder holds an empty *file* named ``__pycache__``
(:func:`~.triton_repo.block_bytecode`), and ``find_models`` refuses a ``__pycache__`` folder even in a trusted repository,
and anything else skipgan-edge does not write in an untrusted one. The server runs in its own work folder (the stub
puts its working directory on ``sys.path``).
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
import threading
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
    """In the child, before exec: Linux kills it (SIGKILL: its parent is gone, nothing is left to finish) when the process
    that started it dies, even by SIGKILL, so a killed ``triton-serve`` does not leave a server holding its ports."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


TMP_PREFIXES = ("skipgan-triton-", "skipgan-repo-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def own_tmpdir(prefix: str) -> Path:
    """A temporary folder named after this process (``PREFIX<pid>-XXXX``), so that one left by a killed process is found."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def clean_stale_tmp(base: Path | None = None) -> int:
    """Remove the temporary folders (:data:`TMP_PREFIXES`) of dead ``triton-serve`` processes of this user; how many."""
    base = Path(base or tempfile.gettempdir())
    n = 0
    with contextlib.suppress(OSError):
        for p in base.iterdir():
            m = re.fullmatch(r"(?:skipgan-triton-|skipgan-repo-)(\d+)-\w+", p.name)
            if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.is_symlink() or not p.is_dir() or st.st_uid != os.geteuid():
                continue
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def end_orphan_servers(ports: tuple[int, ...], timeout: float = 10.0) -> int:
    """Servers started by a ``triton-serve`` that is dead (its process id is in their shared-memory prefix) and that still
    hold one of ``ports``: ended (SIGKILL; they are this user's, and nothing waits for them), and waited for until gone."""
    pat = re.compile(r"--backend-config=python,shm-region-prefix-name=" + SHM_PREFIX + r"(\d+)_")
    ended: list[int] = []
    with contextlib.suppress(OSError):
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if d.stat().st_uid != os.geteuid():
                    continue
                args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            owner = next((int(m.group(1)) for a in args if (m := pat.match(a))), None)
            if owner is None or not args[0].endswith("tritonserver") or _alive(owner):
                continue
            held = {int(a.split("=", 1)[1]) for a in args if a.startswith(("--http-port=", "--grpc-port=", "--metrics-port="))
                    and a.split("=", 1)[1].isdigit()}
            if held & set(ports):
                with contextlib.suppress(OSError):
                    os.kill(int(d.name), signal.SIGKILL)
                    ended.append(int(d.name))
    deadline = time.monotonic() + timeout
    while ended and time.monotonic() < deadline:
        ended = [pid for pid in ended if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
        time.sleep(0.05)
    return len(ended)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


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
        clean_stale_tmp()
        end_orphan_servers((self.http_port, self.grpc_port, self.metrics_port))
        self.workdir = own_tmpdir("skipgan-triton-")
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
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                         cwd=self.workdir)
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


class _Stopped(Exception):
    """SIGINT or SIGTERM before the server was up: unwinds start-up so that every folder is removed."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def _on_signals(handler: Any) -> Any:
    """SIGINT and SIGTERM go to ``handler`` meanwhile: :func:`_raise_stopped` while starting (the server is stopped and
    the folders removed by the ``finally`` blocks, instead of the process ending where it stands), ``SIG_IGN`` while
    cleaning up (a second signal does not cut the clean-up short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def triton_serve(onnx: Path | None, export_dir: Path | None, *, http_port: int, grpc_port: int, metrics_port: int,
                 address: str, model_name: str, repository: Path | None, settings: dict[str, Any], preferred_batch: str,
                 trust: bool, echo: Any) -> None:
    """``skipgan-edge triton-serve``: write (``onnx``) or find (``export_dir``) a repository, check it is ours (unless
    ``trust``), serve it until SIGINT / SIGTERM; ``echo(text, err)`` prints. Every temporary folder is removed on the way
    out, whenever the signal comes."""
    from skipgan_edge.service.triton_repo import TritonSettings, find_models, write_repository

    if (onnx is None) == (export_dir is None):
        raise ConfigError("give exactly one of --onnx FILE or --export-dir DIR")
    bundled_server()  # one line now if PyTriton is missing, before anything is written
    tmp: Path | None = None
    try:
        with _on_signals(_raise_stopped):
            if onnx is not None:
                from skipgan_edge.runtime.artifact import Artifact

                try:
                    pref = tuple(int(b) for b in preferred_batch.split(",") if b.strip())
                except ValueError:
                    raise ConfigError(f"--preferred-batch takes comma-separated integers, got {preferred_batch!r}") from None
                ts = TritonSettings(preferred_batch=pref, **settings)
                ts.check()
                if not onnx.is_file():
                    raise ConfigError(f"ONNX file not found: {onnx}")
                card = Artifact("onnx", onnx).read_card()
                if repository is None:
                    clean_stale_tmp()
                    tmp = repository = own_tmpdir("skipgan-repo-")
                repo = write_repository(onnx, repository, card, ts, model_name).repository
            else:
                assert export_dir is not None
                repo = export_dir / "triton" if (export_dir / "triton").is_dir() else export_dir
            models = find_models(repo, trust=trust)
            if not models:
                raise ConfigError(f"{repo} holds no Triton model (no MODEL/config.pbtxt); write one with skipgan-edge export --triton")
            plans = [m["name"] for m in models if m["platform"] != "python"]
            if plans:
                raise ConfigError(f"{repo}: model(s) {', '.join(plans)} need another Triton backend than Python (a TensorRT plan): "
                                  "PyTriton's server has only the Python backend; serve them with NVIDIA's Triton on the GPU that "
                                  f"built them: tritonserver --model-repository {repo.resolve()}")
            server = TritonServer(repo, http_port, grpc_port, metrics_port, address)
        try:
            with _on_signals(_raise_stopped):
                server.start()
                host = server.local_host
                for m in server.models():
                    echo(f"serving {m.get('name')} version {m.get('version')}: {m.get('state')}; stream to it with "
                         f"--backend triton://{host}:{grpc_port}/{m.get('name')}", False)
                echo(f"Triton: HTTP {address}:{http_port}, gRPC {address}:{grpc_port}, metrics http://{host}:{metrics_port}/metrics "
                     f"(repository {repo}); Ctrl-C stops it", True)
                # SIGINT / SIGTERM now stop the server (wait forwards them) and its exit ends the wait; waiting inside this
                # block leaves no moment in which a signal meets the default action and kills this process uncleaned
                code = server.wait()
            if code not in (0, -2, -9, -15):
                raise ConfigError(f"Triton exited with status {code}: {server.failure()}")
        finally:
            with _on_signals(signal.SIG_IGN):
                server.stop()
    except _Stopped as sig:
        echo(f"{sig} received before Triton was ready: stopped", True)
    finally:
        if tmp is not None:
            with _on_signals(signal.SIG_IGN):
                shutil.rmtree(tmp, ignore_errors=True)
