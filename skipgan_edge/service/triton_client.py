"""The scorer on a Triton Inference Server: ``--backend triton://host:port/model[/version][?shm=auto&retry=60]``.

A client, not a runtime: ``activate`` connects over gRPC (``tritonclient``, the ``[triton]`` extra), waits until
the model is ready, and reads the model card from the model's ``skipgan_edge.card`` parameter (written by
``export --triton`` and ``triton-serve``), so threshold, normalization, input size and ``max_batch`` are the
server's model's. ``infer`` is the same contract as every backend (uint8 NHWC in, ScoreBatch out; the base
class checks and times).

* **Shared memory.** With the server on this host (``host`` is a loopback name or address), each call passes the
  images and receives the outputs through POSIX system shared memory registered with the server, instead of
  inside the gRPC messages. ``shm=0`` turns it off; ``shm=1`` insists (a server on another host cannot read
  this host's memory, so it is refused there). If the server refuses to register (a container without a
  shared ``/dev/shm``), ``auto`` falls back to plain gRPC and says so once.
* **A server that goes away** (refused connections, a restart, a model not ready yet, shared-memory
  registrations lost with the restart) is retried with exponential backoff (0.1 s doubling to 2 s), reconnecting
  and re-registering, for up to ``retry`` seconds (default 60) per call; the batch in hand is sent again, so no
  frame in flight is lost, and a video source waits meanwhile (a live camera keeps capturing and the pipeline
  counts what its queue drops). Past the budget it is one line (:class:`ServerError`). Errors that another try
  cannot fix (a wrong input shape, an unknown model at start) are not retried.
* ``version`` pins one served version; without it the server's newest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard
from skipgan_edge.contract import CARD_KEY, INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import ConfigError, ServerError, require
from skipgan_edge.logs import redact
from skipgan_edge.runtime.backends.base import Backend

log = logging.getLogger(__name__)
SCHEME = "triton://"
CLIENT_SHM_PREFIX = "skipgan_client_"
#: shared-memory regions hold at most this many images, and this many bytes (input and outputs) per client
SHM_IMAGES, SHM_BYTES = 64, 256 << 20
#: no scorer input is larger than this per image (4096×4096×4)
MAX_IMAGE_BYTES = 4096 * 4096 * 4
_MODEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: what gRPC says of a host name that does not exist (c-ares' NXDOMAIN, getaddrinfo's EAI_NONAME): before the server
#: ever answered, no retry waits that out (afterwards it may be a container restarting, and is retried)
DNS_FAILURES = ("domain name not found", "name or service not known")
#: gRPC status codes a later try can fix: the server is restarting, overloaded, or lost our registrations
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN")


@dataclass(frozen=True)
class TritonURL:
    host: str
    port: int
    model: str
    version: str = ""  # "" = the server's newest
    shm: str = "auto"  # auto, 1, 0
    retry_s: float = 60.0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_url(url: str) -> TritonURL:
    """Check a ``triton://`` URL in one line (it comes from the command line or a cell's TOML: hostile)."""
    usage = "use triton://HOST:PORT/MODEL[/VERSION] (gRPC port, e.g. triton://127.0.0.1:8001/scorer)"
    if not url.startswith(SCHEME) or any(c in url for c in " \t\r\n\0"):
        raise ConfigError(f"bad Triton URL {url!r}: {usage}")
    try:
        u = urllib.parse.urlsplit(url)
        u.hostname  # noqa: B018 - raises on an unterminated [IPv6 host
    except ValueError as exc:
        raise ConfigError(f"bad Triton URL {redact(url)!r}: {exc}; {usage}") from None
    try:
        port = u.port
    except ValueError:
        raise ConfigError(f"bad Triton URL {url!r}: the port must be a number 1..65535; {usage}") from None
    if not u.hostname or port is None or port == 0 or u.username or u.password or u.fragment:
        raise ConfigError(f"bad Triton URL {url!r}: {usage}")
    parts = [p for p in u.path.split("/") if p]
    if not 1 <= len(parts) <= 2 or not _MODEL_RE.match(parts[0]) or (len(parts) == 2 and not re.fullmatch(r"[1-9][0-9]{0,8}", parts[1])):
        raise ConfigError(f"bad Triton URL {url!r}: the path is /MODEL or /MODEL/VERSION (a model name of letters, digits, _ - .; "
                          f"a version number); {usage}")
    query = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    unknown = set(query) - {"shm", "retry"}
    if unknown:
        raise ConfigError(f"bad Triton URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}; known: shm=auto|0|1, retry=SECONDS")
    shm = query.get("shm", ["auto"])[-1]
    if shm not in ("auto", "0", "1"):
        raise ConfigError(f"bad Triton URL {url!r}: shm is auto, 0 or 1")
    try:
        retry = float(query.get("retry", ["60"])[-1])
    except ValueError:
        retry = -1.0
    if not 0 <= retry <= 86400:
        raise ConfigError(f"bad Triton URL {url!r}: retry is seconds, 0..86400")
    return TritonURL(u.hostname, port, parts[0], parts[1] if len(parts) == 2 else "", shm, retry)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def clean_stale_shm(prefix: str, shm_dir: Path = Path("/dev/shm")) -> int:
    """Remove shared-memory regions named ``PREFIX<pid>_...`` whose process is gone (killed clients or servers of ours)."""
    removed = 0
    with contextlib.suppress(OSError):
        for p in shm_dir.glob(prefix + "*"):
            m = re.match(re.escape(prefix) + r"(\d+)_", p.name)
            if m and not _pid_alive(int(m.group(1))) and p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
    return removed


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine: a loopback name or address, or one of this host's own names."""
    if host in ("localhost", "ip6-localhost", socket.gethostname()):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _status(exc: BaseException) -> str:
    st = getattr(exc, "status", None)
    st = st() if callable(st) else st
    return str(st or "").replace("StatusCode.", "")


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    msg = msg() if callable(msg) else msg
    return " ".join(str(msg or exc).split())[:300]


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, url: str) -> None:
        self.url = parse_url(url)
        super().__init__(Path(self.url.model))  # ``path`` is only a label here; reports name the URL
        self.client: Any = None
        self.use_shm = False
        self.reconnects = 0
        self.answered = False  # the server answered once: a name that stops resolving later is retried (a restart)
        self.chunk = 1
        self._regions: dict[str, Any] = {}
        self._tag = f"{CLIENT_SHM_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"

    def __str__(self) -> str:
        return str(self.url)

    # ------------------------------------------------------------------------------------------------------------
    def activate(self) -> None:
        self.grpc = require("tritonclient.grpc", "triton", "--backend triton://")
        self.shm = require("tritonclient.utils.shared_memory", "triton", "--backend triton://")
        self._connect()
        cfg = self._call(lambda: self.client.get_model_config(self.url.model, self.url.version, as_json=True), "read the model config",
                         first=True)["config"]
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        if CARD_KEY not in params:
            raise ServerError(f"{self.url}: the model has no '{CARD_KEY}' parameter, so it is not a skipgan-edge scorer repository; "
                              "write one with skipgan-edge export --triton or serve one with skipgan-edge triton-serve")
        self.card = ModelCard.from_json(params[CARD_KEY], str(self.url))
        self.precision = self.card.precision
        self.max_batch = max(1, int(cfg.get("max_batch_size", 1)))
        want = [self.card.input.isize, self.card.input.isize, self.card.input.channels]
        inputs = cfg.get("input", [])
        if len(inputs) != 1 or inputs[0].get("name") != INPUT_NAME or [int(d) for d in inputs[0].get("dims", [])] != want \
                or inputs[0].get("data_type") != "TYPE_UINT8":
            raise ServerError(f"{self.url}: the model's input is {inputs}, but its card says uint8 {want} (HWC) named '{INPUT_NAME}'; "
                              "re-export the repository with skipgan-edge export --triton")
        h, w, c = self.input_shape
        if h * w * c > MAX_IMAGE_BYTES:
            raise ServerError(f"{self.url}: the model's input is {h}×{w}×{c}, larger than any scorer ({MAX_IMAGE_BYTES} bytes per image); "
                              "is it serving a skipgan-edge scorer?")
        # images per call through shared memory: the regions are sized for this many, whatever max_batch_size the server claims
        self.chunk = max(1, min(self.max_batch, SHM_IMAGES, SHM_BYTES // (h * w * (c + 4))))
        self.use_shm = self.url.shm == "1" or (self.url.shm == "auto" and is_local(self.url.host))
        if self.url.shm == "1" and not is_local(self.url.host):
            raise ConfigError(f"{self.url}: shm=1 needs the server on this host (system shared memory is this machine's)")
        if self.use_shm:
            clean_stale_shm(CLIENT_SHM_PREFIX)  # regions of clients that were killed before they could free them
            try:
                self._make_regions()
            except Exception as exc:  # noqa: BLE001 - tritonclient's SharedMemoryException and OSError
                self._free_regions()
                raise ServerError(f"{self.url}: cannot create shared memory for {self.chunk} images ({_message(exc)}); free /dev/shm "
                                  "or pass ?shm=0") from None
            try:
                self._register()
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and gRPC's exceptions
                if self.url.shm == "1":
                    self._free_regions()
                    raise ServerError(f"{self.url}: the server refused this host's shared memory ({_message(exc)})") from None
                log.warning("%s: the server refused this host's shared memory (%s); sending frames inside gRPC messages instead",
                            self.url, _message(exc))
                self._free_regions()
                self.use_shm = False

    def _connect(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.client = self.grpc.InferenceServerClient(self.url.address)

    def _ready(self, first: bool = False) -> None:
        if not self.client.is_model_ready(self.url.model, self.url.version):
            if first and self.client.is_server_live():
                index = self.client.get_model_repository_index(as_json=True).get("models", [])
                served = sorted({m.get("name", "") for m in index})
                if self.url.model not in served:
                    raise _Unknown(f"the server has no model '{self.url.model}' (it has: {', '.join(served) or 'none'})")
            raise _NotReady(f"model '{self.url.model}'{' version ' + self.url.version if self.url.version else ''} is not ready")

    def _call(self, fn: Any, what: str, first: bool = False) -> Any:
        """``fn()``, retried with backoff while the server is away (module docstring); one line past the budget."""
        deadline = time.monotonic() + self.url.retry_s
        delay, warned, reconnect = 0.1, False, False
        while True:
            try:
                if reconnect:
                    self._connect()
                    self._ready()
                    if self.use_shm and self._regions:
                        self._register()
                    self.reconnects += 1
                    if warned:
                        log.warning("%s: the server is back; resending", self.url)
                elif first:
                    self._ready(first=True)
                out = fn()
                self.answered = True
                return out
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and gRPC's exceptions
                status, msg = _status(exc), _message(exc)
                lost_shm = "shared memory" in msg.lower() or "shared_memory" in msg.lower()
                transient = isinstance(exc, _NotReady) or status in TRANSIENT or lost_shm or "failed to connect" in msg.lower() \
                    or "Socket closed" in msg or "connection" in msg.lower()
                if isinstance(exc, _Unknown) or not transient:
                    raise ServerError(f"{self.url}: cannot {what}: {msg}") from None
                if not self.answered and any(s in msg.lower() for s in DNS_FAILURES):  # a name that never resolved
                    raise ServerError(f"{self.url}: cannot {what}: the host name does not resolve ({msg}); check HOST in the "
                                      "URL") from None
                if time.monotonic() + delay > deadline:
                    raise ServerError(f"{self.url}: cannot {what}: the server did not answer for {self.url.retry_s:g} s ({msg}); "
                                      "start it (skipgan-edge triton-serve), check HOST:PORT, or raise ?retry=SECONDS") from None
                if not warned:
                    log.warning("%s: %s (%s); retrying for up to %g s", self.url, "server unreachable" if not lost_shm else
                                "shared memory lost", msg, self.url.retry_s)
                    warned = True
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                reconnect = True

    # ------------------------------------------------------------------------------------------------------------
    def _out_layout(self, n: int) -> list[tuple[str, int, int, tuple[int, ...]]]:
        h = self.card.input.isize
        sizes = [("score", n * 4, (n, 1)), ("anomaly_map", n * h * h * 4, (n, 1, h, h)), ("normalized_score", n * 4, (n, 1))]
        out, at = [], 0
        for name, nbytes, shape in sizes:
            out.append((name, at, nbytes, shape))
            at += nbytes
        return out

    def _make_regions(self) -> None:
        h, w, c = self.input_shape
        n = self.chunk
        out_bytes = sum(nb for _, _, nb, _ in self._out_layout(n))
        for role, nbytes in (("in", n * h * w * c), ("out", out_bytes)):
            name = f"{self._tag}_{role}"
            self._regions[role] = (name, "/" + name, nbytes, self.shm.create_shared_memory_region(name, "/" + name, nbytes))

    def _register(self) -> None:
        for name, key, nbytes, _ in self._regions.values():
            with contextlib.suppress(Exception):  # a restarted server has none; ours may still be registered
                self.client.unregister_system_shared_memory(name)
            self.client.register_system_shared_memory(name, key, nbytes)

    def _free_regions(self) -> None:
        for name, _, _, handle in self._regions.values():
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.unregister_system_shared_memory(name)
            with contextlib.suppress(Exception):
                self.shm.destroy_shared_memory_region(handle)
        self._regions = {}

    def _run(self, images: np.ndarray) -> ScoreBatch:
        step = self.chunk if self.use_shm else self.max_batch
        if len(images) > step:
            return ScoreBatch(*(np.concatenate(parts) for parts in
                                zip(*(self._run(images[i : i + step]) for i in range(0, len(images), step)))))
        g = self.grpc
        n = len(images)
        inp = g.InferInput(INPUT_NAME, list(images.shape), "UINT8")
        outs = [g.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        if self.use_shm:
            in_name, _, _, in_handle = self._regions["in"]
            out_name, _, _, out_handle = self._regions["out"]
            self.shm.set_shared_memory_region(in_handle, [np.ascontiguousarray(images)])
            inp.set_shared_memory(in_name, images.nbytes)
            layout = self._out_layout(n)  # in OUTPUT_NAMES order
            for o, (_, at, nbytes, _) in zip(outs, layout):
                o.set_shared_memory(out_name, nbytes, offset=at)
        else:
            inp.set_data_from_numpy(np.ascontiguousarray(images))
        res = self._call(lambda: self.client.infer(self.url.model, [inp], model_version=self.url.version, outputs=outs), "infer")
        if self.use_shm:
            got = {name: np.array(self.shm.get_contents_as_numpy(out_handle, np.float32, shape, offset=at)) for name, at, _, shape in layout}
        else:
            got = {name: res.as_numpy(name) for name in OUTPUT_NAMES}
        h = self.card.input.isize
        want = {"score": n, "anomaly_map": n * h * h, "normalized_score": n}
        for name, size in want.items():  # the server's answer is outside input too
            if got[name] is None or got[name].size != size or got[name].dtype != np.float32:
                a = got[name]
                raise ServerError(f"{self.url}: the server returned output '{name}' as "
                                  f"{'nothing' if a is None else f'{a.dtype} {list(a.shape)}'} for {n} images; is it serving a "
                                  "skipgan-edge scorer?")
        got["anomaly_map"] = got["anomaly_map"].reshape(n, 1, h, h)
        return ScoreBatch(got["score"].reshape(n).astype(np.float32, copy=False), got["anomaly_map"].astype(np.float32, copy=False),
                          got["normalized_score"].reshape(n).astype(np.float32, copy=False))

    def deactivate(self) -> None:
        self._free_regions()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        super().deactivate()


class _NotReady(Exception):
    status = "UNAVAILABLE"


class _Unknown(Exception):
    status = "NOT_FOUND"
