"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis: ``genicam://NAME?option=value&...``.

Line cameras are GigE Vision or USB3 Vision devices, not ``/dev/video*``. This source reads them through Aravis's
GObject API (``gi.repository.Aravis``, Debian/Ubuntu: ``gir1.2-aravis-0.8`` and ``python3-gi``), not through
``aravissrc`` in a ``gst:`` pipeline: OpenCV's GStreamer capture hands over pixels only, while every record here
carries the camera's own frame id (``camera_frame_id``) and timestamp (``camera_timestamp_ns``, the camera's clock
in ns), the stream's receiver settings can be chosen (``aravissrc`` exposes neither), and a frame that arrives
incomplete is seen as such instead of being decoded. PyGObject is a system package: run from a
``--system-site-packages`` venv (``make jetson``).

NAME is Aravis's device id (``arv-tool-0.8`` / ``arv-camera-test-0.8`` list them, e.g. ``Basler-21234567`` or
``Aravis-Fake-GV01``), or the camera's IP address or host name (a GigE Vision camera opened without discovery;
Aravis then picks the network interface that reaches it), or nothing (``genicam://``: the first camera found).

Options, in the spec's query string so that one string describes the camera (in a ``serve`` cell's config too);
every value is checked here, before anything is sent to the camera, and an unknown or repeated key, a value of
the wrong type or out of range, or a value outside the camera's own range is one line naming the key:

=================  ======================================================  ===========================
key                value                                                   default
=================  ======================================================  ===========================
``exposure_us``    exposure time, µs (10 to 1e8; auto exposure off)        the camera's
``gain``           gain, the camera's unit (usually dB; auto gain off)     the camera's
``pixel_format``   Mono8 Mono10 Mono12 Mono16 RGB8 BGR8 BayerRG8 BayerGR8  the camera's
                   BayerGB8 BayerBG8 (others are refused)
``fps``            acquisition frame rate (0 to 10000)                     ``--fps``, else the camera's
``width``          region of interest from the sensor's top-left corner    ``--width``/``--height``,
``height``                                                                 else the camera's
``packet_size``    GigE Vision: bytes per stream packet (576 to 65500),    the camera's
                   or ``auto`` (Aravis probes the largest that passes)
``packet_socket``  GigE Vision: ``auto`` (a packet socket where Aravis     ``auto``
                   may open one: root or CAP_NET_RAW) or ``off``
``socket_buffer``  GigE Vision, UDP socket: its receive buffer in bytes     ``auto``
                   (65536 to 1 GiB), ``auto``: twice a frame, >= 4 MiB
``resend``         GigE Vision: ask the camera to resend lost packets,     ``on``
                   ``on`` or ``off``
``buffers``        frame buffers given to Aravis (2 to 64): raise it when  8
                   ``aravis.underruns`` grows in the summary
``timeout_s``      seconds without a complete frame before the camera is   ``stall_timeout`` (5 s)
                   taken to be gone and reopened (0.05 to 3600)
=================  ======================================================  ===========================

Receiving on loopback: what was measured here with Aravis 0.8.26's simulated camera (``arv-fake-gv-camera-0.8 -i
127.0.0.1``; it sends each frame as one burst of packets and never resends), 512×512 Mono8 = 262144 bytes = 191
packets of 1400 bytes unless said otherwise, frames complete / frames asked for:

* UDP socket (what Aravis uses without root or CAP_NET_RAW, or with ``packet_socket=off``) and Aravis's default
  buffer (none set: ``net.core.rmem_default``, 212992 bytes): 2/20 and 8/50 in 15 s; every other frame times out
  with packets missing, as in the issue's unprivileged ``aravissrc`` run. The burst overflows the buffer.
* UDP socket, buffer of one frame (Aravis's ``socket-buffer=auto``; Linux doubles SO_RCVBUF), 1400-byte packets:
  50/50 at 25 fps, 200/200 at 50 and 100 fps, 200 of 201 at 200 fps; but 1/100 with 4000-byte and 0-2/100 with
  8000-byte packets (Mono8 and RGB8): the kernel charges each datagram its allocation, up to twice its size. Twice
  a frame or 4 MiB: 100/100 at 25 fps with 576-, 1400- and 8000-byte packets, Mono8 and RGB8 (786432-byte
  frames). Hence ``socket_buffer=auto`` = twice a frame, at least 4 MiB. Aravis applies
  it when the first frame starts arriving, so that first frame can still come incomplete (counted, not scored).
  SO_RCVBUF is capped at ``net.core.rmem_max`` (Linux's default: 212992): when that is below twice a frame a
  warning says to raise it (``sysctl -w net.core.rmem_max=33554432``) or to run as root.
* Packet socket (root): 0/10 when the camera is opened by name (``genicam://Aravis-Fake-GV01``), 100/100 at 25 fps
  and 200/200 at 50, 100 and 200 fps when it is opened by address (``genicam://127.0.0.1``). By name, Aravis's
  discovery broadcast is answered through the first interface with a broadcast address (here eth0, 192.0.2.2): the
  stream is sent to that interface's address and Aravis's packet socket listens on eth0, while the packets travel
  through ``lo``. That is the issue's "Internal data stream error" of ``aravissrc camera-name=...`` as root. So
  ``packet_socket=auto`` uses the UDP socket for a camera at a loopback address reached through another interface,
  and lets Aravis decide everywhere else.
* A larger ``packet_size`` alone does not help (8000 bytes: 0/50 with the default buffer).

Live semantics, as for the other cameras: Aravis receives into ``buffers`` buffers on its own thread; each read
takes the newest complete frame (older waiting ones are ``skipped``) and the pipeline keeps the newest and counts
what it replaced (``dropped``). A frame that arrives incomplete is not scored (``incomplete``). Every gap in the
camera's frame ids between two complete frames counts as ``missing`` (16-bit GigE Vision block ids wrap from
65535 to 1); a camera that restarts its count (reopened, reset) is not a gap. Aravis's own counts say why frames
went missing: ``aravis.underruns`` (packets that came while every buffer was full: the host fell behind; give more
``buffers``) and ``aravis.missing_packets`` (lost on the way: the network, the receive buffer). At 100 fps of
786432-byte RGB8 frames through the UDP socket on this 2-core machine, 4 buffers lost 90 of 220 frames to
underruns, 16 none (only the first frame incomplete, as above). A camera that delivers no complete
frame for ``timeout_s`` or whose control channel is lost is reopened with exponential backoff (0.5 s doubling to
8 s, at most ``reconnect_attempts`` tries, each logged), then the run ends with one line. The counts are in the
run summary under ``genicam``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import cv2
import numpy as np

from skipgan_edge.errors import MissingDependencyError, SourceError
from skipgan_edge.runtime.sources import Frame, Source, SourceOptions

log = logging.getLogger(__name__)

SCHEME = "genicam://"

#: pixel formats this source converts (GenICam PFNC names) -> how to make a BGR or grayscale image of them
PIXEL_FORMATS = ("Mono8", "Mono10", "Mono12", "Mono16", "RGB8", "BGR8", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8")

#: GenICam names a Bayer pattern by its first two pixels (BayerRG8: R at (0, 0)), OpenCV by the second row's second and
#: third: GenICam RG is OpenCV BG (OpenCV 4.x's COLOR_BayerRGGB2BGR is the same constant; an RGGB mosaic of pure red
#: comes out red)
_BAYER = {"BayerRG8": cv2.COLOR_BayerBG2BGR, "BayerGR8": cv2.COLOR_BayerGB2BGR, "BayerGB8": cv2.COLOR_BayerGR2BGR,
          "BayerBG8": cv2.COLOR_BayerRG2BGR}

_INSTALL = ("genicam:// needs Aravis's Python bindings: apt-get install gir1.2-aravis-0.8 python3-gi, and run from a "
            "--system-site-packages venv over the system python3 (make jetson)")


@dataclass(frozen=True)
class GenicamOptions:
    name: str | None  # Aravis device id, IP address or host name; None: the first camera found
    exposure_us: float | None = None
    gain: float | None = None
    pixel_format: str | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    packet_size: int | str | None = None  # bytes, or "auto"
    packet_socket: str = "auto"  # auto | off
    socket_buffer: int | str = "auto"  # bytes, or "auto" (twice a frame, at least 4 MiB)
    resend: bool = True
    buffers: int = 8
    timeout_s: float = 5.0


def _number(key: str, raw: str, lo: float, hi: float, what: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or not lo <= v <= hi:
        raise SourceError(f"genicam option {key}={raw[:40]!r}: give {what} from {lo:g} to {hi:g}")
    return v


def _integer(key: str, raw: str, lo: int, hi: int, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise SourceError(f"genicam option {key}={raw[:40]!r}: give {what}, a whole number from {lo} to {hi}")
    return int(raw)


def _choice(key: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise SourceError(f"genicam option {key}={raw[:40]!r}: give one of {', '.join(choices)}")
    return raw


def _name(raw: str, spec: str) -> str | None:
    name = unquote(raw)
    if not name:
        return None
    if len(name) > 128 or not name.isascii() or not name.isprintable() or any(c in name for c in "?#&/\\"):
        raise SourceError(f"{spec[:80]!r}: a genicam:// camera name is 1-128 printable ASCII characters without ? # & / \\ "
                          "(the device id arv-tool-0.8 lists, or an IP address)")
    return name


def parse_spec(spec: str, opts: SourceOptions | None = None) -> GenicamOptions:
    """``genicam://NAME?key=value&...`` checked in full (no camera is touched): one-line errors naming the key."""
    opts = opts or SourceOptions()
    if not spec.startswith(SCHEME):
        raise SourceError(f"{spec[:80]!r} is not a genicam:// source")
    rest = spec[len(SCHEME) :]
    if "#" in rest:
        raise SourceError(f"{spec[:80]!r}: a genicam:// source has no #fragment; options go after ? as key=value&key=value")
    raw_name, _, query = rest.partition("?")
    vals: dict[str, Any] = {"name": _name(raw_name, spec), "timeout_s": opts.stall_timeout, "fps": opts.fps,
                            "width": opts.width, "height": opts.height}
    seen: set[str] = set()
    for part in query.split("&") if query else []:
        key, eq, raw = part.partition("=")
        key, raw = unquote(key), unquote(raw)
        if not eq or not key:
            raise SourceError(f"genicam option {part[:40]!r}: give key=value (keys: {', '.join(_PARSERS)})")
        if key not in _PARSERS:
            raise SourceError(f"genicam option {key[:40]!r} is not known: use {', '.join(_PARSERS)}")
        if key in seen:
            raise SourceError(f"genicam option {key} is given twice: give it once")
        seen.add(key)
        vals[key] = _PARSERS[key](key, raw.strip())
    return GenicamOptions(**vals)


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "exposure_us": lambda k, v: _number(k, v, 10, 1e8, "an exposure time in microseconds"),
    "gain": lambda k, v: _number(k, v, -100, 1000, "a gain in the camera's unit (usually dB)"),
    "pixel_format": lambda k, v: _choice(k, v, PIXEL_FORMATS),
    "fps": lambda k, v: _number(k, v, 0.01, 10000, "a frame rate"),
    "width": lambda k, v: _integer(k, v, 1, 65535, "a width in pixels"),
    "height": lambda k, v: _integer(k, v, 1, 65535, "a height in pixels"),
    "packet_size": lambda k, v: "auto" if v == "auto" else _integer(k, v, 576, 65500, "bytes per packet (or auto)"),
    "packet_socket": lambda k, v: _choice(k, v, ("auto", "off")),
    "socket_buffer": lambda k, v: "auto" if v == "auto" else _integer(k, v, 65536, 1 << 30, "bytes (or auto)"),
    "resend": lambda k, v: _choice(k, v, ("on", "off")) == "on",
    "buffers": lambda k, v: _integer(k, v, 2, 64, "a number of buffers"),
    "timeout_s": lambda k, v: _number(k, v, 0.05, 3600, "seconds"),
}


def import_aravis() -> Any:
    """Aravis's GObject bindings (PyGObject), or one line saying what to install; doctor asks the same."""
    try:
        import gi  # type: ignore[import-not-found]

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # type: ignore[import-not-found]
    except (ImportError, ValueError):
        raise MissingDependencyError(_INSTALL) from None
    return Aravis


def missing_between(prev: int, cur: int) -> int:
    """Frames the camera numbered between two complete frames ``prev`` and ``cur``. GigE Vision's 16-bit block id
    wraps from 65535 to 1 (0 is never used): a step back from near the top to near the bottom (fewer than 16384 frames
    lost across it) is that wrap; any other step back is a camera that restarted its count: no gap."""
    if cur > prev:
        return cur - prev - 1
    across = (0xFFFF - prev) + (cur - 1)
    return across if prev <= 0xFFFF and 0 <= across < 0x4000 else 0


def auto_socket_buffer(payload: int) -> int:
    """``socket_buffer=auto``: twice a frame, at least 4 MiB (see the module docstring for why one frame is not enough)."""
    return min(max(2 * payload, 4 << 20), 1 << 30)


def packet_socket_allowed() -> bool:
    """Whether Aravis can open its packet socket here (it tries the same: root or CAP_NET_RAW); else it uses a UDP socket."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)).close()  # type: ignore[attr-defined,unused-ignore]
    except (OSError, AttributeError):
        return False
    return True


def rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


class GenicamSource(Source):
    """``genicam://NAME?...``: a GigE Vision or USB3 Vision camera through Aravis (see the module docstring)."""

    live = True

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        self.o = parse_spec(spec, opts)
        self.arv = import_aravis()
        self.what = f"GenICam camera {self.o.name or '(the first found)'}"
        self.received = self.missing = self.incomplete = self.skipped = self.reconnects = 0
        self.camera: Any = None
        self.stream: Any = None
        self.device_id = ""
        self.receiver: dict[str, Any] = {}
        self.aravis = {"underruns": 0, "missing_packets": 0, "resent_packets": 0}
        self._lost = threading.Event()
        self._prev_id: int | None = None
        self._open()

    # ------------------------------------------------------------------------------------------ open
    def _gerror(self, exc: Exception) -> str:
        return str(getattr(exc, "message", None) or exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

    def _open(self) -> None:
        Arv, o = self.arv, self.o
        try:
            cam = Arv.Camera.new(o.name)
        except Exception as exc:  # noqa: BLE001 - GLib.GError: the camera is absent or held by another controller
            raise SourceError(f"cannot open {self.what}: {self._gerror(exc)}; check arv-tool-0.8 lists it, that it is powered and "
                              "reachable, and that no other program holds it (GigE Vision allows one controller)") from None
        self.camera = cam
        try:
            self._configure(cam)
        except BaseException:
            self._close_camera()
            raise

    def _check_range(self, key: str, value: float, bounds: Any) -> None:
        lo, hi = float(bounds.min), float(bounds.max)
        if not lo <= value <= hi:
            raise SourceError(f"genicam option {key}={value:g} is outside {self.device_id}'s range {lo:g} to {hi:g}")

    def _configure(self, cam: Any) -> None:
        Arv, o = self.arv, self.o
        gv = bool(cam.is_gv_device())
        with contextlib.suppress(Exception):  # vendor-model-serial, as Aravis names GigE Vision cameras
            self.device_id = "-".join(str(x) for x in (cam.get_vendor_name(), cam.get_model_name(), cam.get_device_serial_number()) if x)
        self.device_id = self.device_id or str(o.name or "")
        step = ""
        try:
            if not gv:
                gv_keys = [k for k, v in (("packet_size", o.packet_size), ("packet_socket", o.packet_socket != "auto"),
                                          ("socket_buffer", o.socket_buffer != "auto"), ("resend", not o.resend)) if v]
                if gv_keys:
                    raise SourceError(f"genicam option {gv_keys[0]} applies to GigE Vision cameras; {self.device_id} is not one")
            step = "pixel_format"
            if o.pixel_format is not None:
                available = list(cam.dup_available_pixel_formats_as_strings() or [])
                if o.pixel_format not in available:
                    raise SourceError(f"genicam option pixel_format={o.pixel_format}: {self.device_id} offers "
                                      f"{', '.join(available) or 'none readable'}")
                cam.set_pixel_format_from_string(o.pixel_format)
            step = "width"
            if o.width is not None or o.height is not None:
                w_b, h_b = cam.get_width_bounds(), cam.get_height_bounds()
                if o.width is not None:
                    self._check_range("width", o.width, w_b)
                if o.height is not None:
                    self._check_range("height", o.height, h_b)
                _, _, w0, h0 = cam.get_region()
                cam.set_region(0, 0, o.width or w0, o.height or h0)
            step = "exposure_us"
            if o.exposure_us is not None:
                self._check_range("exposure_us", o.exposure_us, cam.get_exposure_time_bounds())
                if cam.is_exposure_auto_available():
                    cam.set_exposure_time_auto(Arv.Auto.OFF)
                cam.set_exposure_time(o.exposure_us)
            step = "gain"
            if o.gain is not None:
                self._check_range("gain", o.gain, cam.get_gain_bounds())
                if cam.is_gain_auto_available():
                    cam.set_gain_auto(Arv.Auto.OFF)
                cam.set_gain(o.gain)
            step = "fps"
            if o.fps is not None:
                self._check_range("fps", o.fps, cam.get_frame_rate_bounds())
                cam.set_frame_rate(o.fps)
            if gv:
                step = "packet_size"
                if o.packet_size == "auto":
                    cam.gv_auto_packet_size()
                elif o.packet_size is not None:
                    cam.gv_set_packet_size(int(o.packet_size))
                step = "packet_socket"
                packet_socket = o.packet_socket == "auto" and packet_socket_allowed() and not self._loopback_through_other_interface(cam)
                if not packet_socket:
                    cam.gv_set_stream_options(Arv.GvStreamOption.PACKET_SOCKET_DISABLED)
            step = "stream"
            payload = int(cam.get_payload())
            stream = cam.create_stream(None, None)
            if gv:
                sock_buf = auto_socket_buffer(payload) if o.socket_buffer == "auto" else int(o.socket_buffer)
                stream.set_property("socket-buffer", Arv.GvStreamSocketBuffer.FIXED)
                stream.set_property("socket-buffer-size", sock_buf)
                stream.set_property("packet-resend", Arv.GvStreamPacketResend.ALWAYS if o.resend else Arv.GvStreamPacketResend.NEVER)
                self.receiver = {"socket": "packet" if packet_socket else "udp", "packet_size": int(cam.gv_get_packet_size()),
                                 "socket_buffer": None if packet_socket else sock_buf, "resend": o.resend}
                cap = rmem_max()
                if not packet_socket and cap is not None and cap < min(sock_buf, 2 * payload):
                    log.warning("%s: net.core.rmem_max is %d bytes, below the receive buffer this camera needs (%d, twice a frame): "
                                "frames may arrive incomplete; raise it (sysctl -w net.core.rmem_max=%d) or run as root (packet socket)",
                                self.device_id, cap, 2 * payload, max(sock_buf, 1 << 25))
            for _ in range(self.o.buffers):
                stream.push_buffer(Arv.Buffer.new_allocate(payload))
            self.stream = stream
            self.pixel_format = str(cam.get_pixel_format_as_string())
            if self.pixel_format not in PIXEL_FORMATS:
                raise SourceError(f"{self.device_id} sends {self.pixel_format}, which genicam:// does not convert: "
                                  f"add pixel_format=ONE_OF({', '.join(PIXEL_FORMATS)}) to the source")
            self._lost.clear()
            device = cam.get_device()
            device.connect("control-lost", lambda *_: self._lost.set())
            step = "start"
            cam.start_acquisition()
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - GLib.GError from the camera: one line naming what was being set
            raise SourceError(f"{self.device_id}: setting {step} failed: {self._gerror(exc)}") from None
        self._prev_id = None

    def _loopback_through_other_interface(self, cam: Any) -> bool:
        """A camera at a loopback address that Aravis reached through another interface (discovery by name on a host
        with a network card): its packets travel through lo, where a packet socket bound to that card never sees them."""
        try:
            dev = cam.get_device()
            cam_ip = ipaddress.ip_address(dev.get_device_address().get_address().to_string())
            if_ip = ipaddress.ip_address(dev.get_interface_address().get_address().to_string())
        except (AttributeError, ValueError, TypeError):
            return False
        if cam_ip.is_loopback and not if_ip.is_loopback:
            log.info("%s is at %s but was reached through %s: packet socket off (its packets come through lo)", self.device_id, cam_ip, if_ip)
            return True
        return False

    def _close_camera(self) -> None:
        if self.stream is not None:  # Aravis's own counts for this connection: frames it had no free buffer for, packets lost
            for key, name in (("underruns", "n_underruns"), ("missing_packets", "n_missing_packets"), ("resent_packets", "n_resent_packets")):
                with contextlib.suppress(Exception):
                    self.aravis[key] += int(self.stream.get_info_uint64_by_name(name))
        cam, self.camera, self.stream = self.camera, None, None
        if cam is not None:
            with contextlib.suppress(Exception):
                cam.stop_acquisition()
        del cam  # the last reference: Aravis stops the stream thread and releases the control channel

    def _reopen(self) -> bool:
        self._close_camera()
        delay = 0.5
        for attempt in range(1, self.opts.reconnect_attempts + 1):
            if self.stop_requested:
                return False
            log.warning("%s lost; reopening (attempt %d/%d in %.1f s)", self.what, attempt, self.opts.reconnect_attempts, delay)
            if self.pause(delay):
                return False
            try:
                self._open()
            except SourceError as exc:
                log.warning("%s", exc)
                delay = min(delay * 2, 8.0)
                continue
            self.reconnects += 1
            log.warning("%s reopened", self.what)
            return True
        return False

    # ---------------------------------------------------------------------------------------- frames
    def _image(self, buf: Any) -> np.ndarray:
        w, h = int(buf.get_image_width()), int(buf.get_image_height())
        data = buf.get_image_data()
        fmt = self.pixel_format
        wide = fmt in ("Mono10", "Mono12", "Mono16")
        ch = 3 if fmt in ("RGB8", "BGR8") else 1
        row = w * ch * (2 if wide else 1)
        if len(data) < row * h:
            raise ValueError(f"{len(data)} bytes for a {w}x{h} {fmt} image")
        stride = len(data) // h if h else row  # rows may be padded
        rows = np.frombuffer(data, np.uint8, count=stride * h).reshape(h, stride)[:, :row]
        if wide:
            img = rows.copy().view("<u2").reshape(h, w)
            return img << (16 - int(fmt[4:])) if fmt != "Mono16" else img  # 10/12-bit values scaled to the 16-bit range
        if fmt in _BAYER:
            return cv2.cvtColor(rows, _BAYER[fmt])
        if fmt == "RGB8":
            return cv2.cvtColor(rows.reshape(h, w, 3), cv2.COLOR_RGB2BGR)
        if fmt == "BGR8":
            return rows.reshape(h, w, 3).copy()
        return rows.copy()

    def _pop(self, wait_s: float) -> Any:
        """The newest buffer Aravis has filled (waiting up to ``wait_s`` for one); the older ones go back to it."""
        stream = self.stream
        buf = stream.timeout_pop_buffer(max(1, int(wait_s * 1e6)))
        if buf is None:
            return None
        while (newer := stream.try_pop_buffer()) is not None:
            self._account(buf, newest=False)
            stream.push_buffer(buf)
            buf = newer
        return buf

    def _account(self, buf: Any, newest: bool) -> bool:
        """Count a buffer; True when it holds a complete image."""
        if buf.get_status() != self.arv.BufferStatus.SUCCESS or buf.get_payload_type() not in (
                self.arv.BufferPayloadType.IMAGE, self.arv.BufferPayloadType.EXTENDED_CHUNK_DATA):
            self.incomplete += 1
            return False
        fid = int(buf.get_frame_id())
        if self._prev_id is not None:
            self.missing += missing_between(self._prev_id, fid)
        self._prev_id = fid
        self.received += 1
        if not newest:
            self.skipped += 1
        return True

    def frames(self) -> Iterator[Frame]:
        i = 0
        last_good = time.monotonic()
        while not self.stop_requested:
            buf = self._pop(min(0.2, self.o.timeout_s)) if self.stream is not None else None
            if buf is None or not self._account(buf, newest=True):
                if buf is not None:
                    self.stream.push_buffer(buf)
                if self._lost.is_set() or time.monotonic() - last_good > self.o.timeout_s:
                    why = "control channel lost" if self._lost.is_set() else f"no complete frame for {self.o.timeout_s:g} s"
                    log.warning("%s: %s", self.what, why)
                    if not self._reopen():
                        if self.stop_requested:
                            return
                        raise SourceError(f"{self.what} is gone ({why}) and did not come back after "
                                          f"{self.opts.reconnect_attempts} attempts; check its power, cable and address")
                    last_good = time.monotonic()
                continue
            t0 = time.perf_counter()
            fid, cam_ts, sys_ts = int(buf.get_frame_id()), int(buf.get_timestamp()), int(buf.get_system_timestamp())
            try:
                img: np.ndarray | None = self._image(buf)
            except ValueError as exc:
                log.warning("%s: frame %d unreadable: %s", self.what, fid, exc)
                img = None  # the pipeline counts it as unreadable
            self.stream.push_buffer(buf)
            last_good = time.monotonic()
            now = time.time()
            # capture: from the frame's first packet on this host (Aravis's system timestamp) to the image in hand
            ms = max(0.0, now - sys_ts / 1e9) * 1e3 if sys_ts > 0 else (time.perf_counter() - t0) * 1e3
            frame = Frame(self.spec, i, sys_ts / 1e9 if sys_ts > 0 else now, img, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
            frame.extra["camera_frame_id"] = fid
            frame.extra["camera_timestamp_ns"] = cam_ts
            yield frame
            i += 1

    @property
    def source_summary(self) -> dict[str, Any]:
        """In the run summary: what the camera sent and what became of it."""
        return {"genicam": {"camera": self.device_id, "pixel_format": getattr(self, "pixel_format", None), "received": self.received,
                            "missing": self.missing, "incomplete": self.incomplete, "skipped": self.skipped,
                            "reconnects": self.reconnects, "aravis": self.aravis, **({"receiver": self.receiver} if self.receiver else {})}}

    def close(self) -> None:
        self._close_camera()
