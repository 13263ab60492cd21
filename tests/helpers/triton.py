"""A real Triton server for the tests: ``skipgan-edge triton-serve`` from the Triton venv (make triton-venv), on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def triton_cli() -> Path:
    """The Triton venv's CLI; a failure, not a skip, where it is missing: make test builds it."""
    venv = Path(os.environ.get("SKIPGAN_TRITON_VENV", ROOT / ".venv-triton"))
    cli = venv / "bin" / "skipgan-edge"
    if not cli.exists():
        pytest.fail(f"no Triton venv at {venv}: run make triton-venv (make test builds it)", pytrace=False)
    return cli


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def metrics(port: int) -> dict[str, float]:
    """Triton's Prometheus text, as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


class Server:
    """``triton-serve --onnx`` in its own process group (so a test can SIGKILL the whole server at once)."""

    def __init__(self, onnx: Path, ports: list[int] | None = None, *extra: str) -> None:
        self.onnx = onnx
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.grpc}/scorer"

    def start(self, timeout: float = 180) -> Server:
        cmd = [str(triton_cli()), "triton-serve", "--onnx", str(self.onnx), "--http-port", str(self.http), "--grpc-port", str(self.grpc),
               "--metrics-port", str(self.metrics), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"triton-serve exited {self.proc.returncode}:\n{self.output}")
            self.output += line
            if "READY; stream to it with" in line:
                return self
        self.kill()
        raise AssertionError(f"triton-serve not ready in {timeout} s:\n{self.output}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> int | None:
        """SIGTERM, as Ctrl-C or systemd would; the exit code."""
        self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else None
