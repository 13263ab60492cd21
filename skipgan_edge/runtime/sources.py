"""Frame sources, one string each.

=======================================  ==========================================  ======
spec                                     what                                        drops
=======================================  ==========================================  ======
``/dev/video0``, ``v4l2:///dev/video0``  V4L2 camera (OpenCV, CAP_V4L2)              newest
``0`` (a bare index)                     camera by index                             newest
``csi://0``                              Jetson CSI camera: GStreamer nvarguscamerasrc newest
``genicam://NAME?exposure_us=2000``      GigE Vision / USB3 Vision camera (Aravis;   newest
                                         options: skipgan_edge/runtime/genicam.py)
``gst:PIPELINE ! appsink``               any GStreamer pipeline (OpenCV GStreamer)   never
``rtsp://host/path``                     RTSP stream (OpenCV/FFmpeg)                 newest
``line.mp4`` (any video file)            decoded in order, ends at end of file       never
``img.png``, ``dir/``, ``'dir/*.png'``   image file, folder or glob, sorted by name  never
``watch:DIR``                            a scanner's drop folder (see WatchFolder)   never
=======================================  ==========================================  ======

Live sources (cameras, CSI, RTSP) are read as fast as they deliver; the pipeline keeps only the
newest frame and counts the ones it replaced (``dropped``). Files, folders and watch folders are
never dropped: the reader blocks until the model catches up. A real-time source's capture time (``Frame.capture_ms``)
starts when its frame arrives (OpenCV's ``grab`` returned; GenICam: its first packet), not while the reader waits for it.

A ``gst:`` pipeline is read as a file is: every buffer its ``appsink`` delivers is scored, in order, and the
run ends at end of stream. Where a live element feeds it, the pipeline itself decides what to drop
(``appsink drop=true max-buffers=1`` keeps the newest buffer, as ``csi://`` does). It needs an OpenCV built with
GStreamer (JetPack's and Debian's ``python3-opencv``; pip's ``opencv-python-headless`` has none): ``make jetson``
keeps the system's. The appsink must deliver a format OpenCV reads (end in ``videoconvert ! appsink``).

A camera that disappears or an RTSP stream that stalls is reopened with exponential backoff
(0.5 s doubling to 8 s, at most ``reconnect_attempts`` tries, each logged); after that the run
ends with a one-line error. A read that takes longer than ``stall_timeout`` seconds on RTSP
counts as a stall.

Video files and RTSP streams are decoded by FFmpeg with ONE decoder thread by default
(``decode_threads``): it used 1-83 % less CPU per frame than FFmpeg's own default (a thread
per core), which, on 2 cores, was only faster in wall time on mp4v at 1280×720 and above; on 64×64 frames it
was 6x slower (thread hand-offs dominate; benchmarks/results/decode_threads.md). The decode
already overlaps inference in the capture thread, and every core it takes is a core a CPU
backend does not get. Pass ``--decode-threads 0`` (FFmpeg's default) when decoding large frames
is the bottleneck, e.g. a GPU engine fed 1080p video.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skipgan_edge.data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, opencv_path, read_image
from skipgan_edge.errors import SourceError

log = logging.getLogger(__name__)



@dataclass
class Frame:
    source: str
    index: int
    timestamp: float  # wall-clock capture time (time.time())
    image: np.ndarray | None  # None when the frame/file could not be decoded
    name: str | None = None  # file name for file-based sources
    t_capture_ns: int = 0  # perf_counter_ns at capture (for latency)
    capture_ms: float = 0.0  # time spent reading and decoding
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceOptions:
    width: int | None = None  # capture width for cameras that support it
    height: int | None = None
    fps: float | None = None
    reconnect_attempts: int = 10  # bounded reopen attempts for cameras and RTSP
    stall_timeout: float = 5.0  # RTSP: seconds without a frame before reopening
    loop: bool = False  # restart a video file at its end (soak tests)
    replay_fps: float | None = None  # play a video file as a live camera at this rate (drops like a camera)
    watch_poll: float = 0.2  # watch folders: seconds between scans
    watch_settle: float = 0.5  # a file is complete when its size and mtime are unchanged this long
    watch_state: Path | None = None  # where scored names are remembered (default: default_watch_state(DIR), outside DIR)
    watch_follow_symlinks: bool = False  # watch: follow symbolic links that point out of the folder
    stop_after_idle: float | None = None  # watch: end the run after this many seconds with nothing new
    watch_give_up: float = 30.0  # watch: an unchanged file that still does not decode after this long is unreadable
    decode_threads: int = 1  # FFmpeg decoder threads for video files and RTSP (0 = FFmpeg's default, one per core)


class Source:
    """Iterable of :class:`Frame`. ``live`` sources may drop frames; others never do."""

    live = False

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        self.spec = spec
        self.opts = opts
        self.unreadable = 0
        self.stop_requested = False
        self._stopped = threading.Event()

    @property
    def realtime(self) -> bool:
        """Frames come at the pace of the world (a camera, RTSP, a video with ``replay_fps``, a ``gst:`` pipeline): the
        latency that counts is capture to result. Otherwise (files, folders, watch folders: read ahead as fast as they
        decode) it is the frame's processing, without the queue wait (runtime/pipeline.py)."""
        return self.live

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def ack(self, frame: Frame) -> None:
        """Called after the frame's result reached every sink."""

    def stop(self) -> None:
        """Ask :meth:`frames` to end; any wait inside it (a poll, a reopen's backoff) ends at once."""
        self.stop_requested = True
        self._stopped.set()

    def pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, cut short by :meth:`stop`; True when stopped."""
        return self._stopped.wait(seconds) or self.stop_requested

    def close(self) -> None:
        pass


def decode_params(opts: SourceOptions) -> list[int]:
    """FFmpeg open parameters for the decoder thread count (none: FFmpeg's default)."""
    if opts.decode_threads < 0:
        raise SourceError(f"--decode-threads must be 0 (FFmpeg's default) or more, got {opts.decode_threads}")
    if not opts.decode_threads:
        return []
    prop = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV 4.7+; Debian 12's 4.6 has none
    if prop is None:
        _warn_no_thread_control()
        return []
    return [prop, opts.decode_threads]


@functools.cache
def _warn_no_thread_control() -> None:
    """Once per process."""
    log.warning("OpenCV %s cannot set FFmpeg's decoder threads (OpenCV 4.7+ can): --decode-threads is ignored, FFmpeg decides", cv2.__version__)


@contextlib.contextmanager
def opencv_errors_only() -> Iterator[None]:
    """OpenCV's own warnings off (our one line says what was tried instead). pip's OpenCV has the level functions in
    ``cv2.utils.logging``; distribution builds (Debian's 4.6, JetPack's) have them on ``cv2`` itself."""
    mod = getattr(getattr(cv2, "utils", None), "logging", None)
    get, set_ = (mod.getLogLevel, mod.setLogLevel) if mod is not None else (getattr(cv2, "getLogLevel", None), getattr(cv2, "setLogLevel", None))
    if get is None or set_ is None:
        yield
        return
    level = get()
    set_(2)  # cv::utils::logging::LOG_LEVEL_ERROR
    try:
        yield
    finally:
        set_(level)


def _timed_read(cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None, float]:
    t0 = time.perf_counter()
    ok, img = cap.read()
    return ok, img, (time.perf_counter() - t0) * 1e3


def _arrived_read(cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None, float]:
    """A real-time source's next frame, timed from its arrival: ``grab`` waits for the camera (or the stream, or the
    pipeline's clock) and is not counted; ``retrieve`` (the conversion to BGR, a V4L2 camera's MJPG decode) is. Timing
    ``read`` whole counted up to a frame period of waiting for the next frame as capture latency."""
    if not cap.grab():
        return False, None, 0.0
    t0 = time.perf_counter()
    ok, img = cap.retrieve()
    return ok, img, (time.perf_counter() - t0) * 1e3


class VideoFileSource(Source):
    """A video file, decoded in order. With ``replay_fps`` it behaves as a live camera: frames are
    released at that rate whether or not the model keeps up (so the newest-frame policy applies),
    which is how to rehearse a line camera from a recording."""

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        self.live = opts.replay_fps is not None
        self.path = Path(spec[7:] if spec.startswith("file://") else spec)
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}")
        self.cap = cv2.VideoCapture(opencv_path(self.path, SourceError), cv2.CAP_FFMPEG, decode_params(opts))
        if not self.cap.isOpened():
            raise SourceError(f"cannot open video {self.path}: OpenCV (FFmpeg) could not decode it; check the file or re-encode it (mp4v, MJPG)")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS)

    def frames(self) -> Iterator[Frame]:
        i = 0
        failures = 0
        period = 1.0 / self.opts.replay_fps if self.opts.replay_fps else 0.0
        next_t = time.perf_counter()
        while not self.stop_requested:
            if period:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t += period
            ok, img, ms = _timed_read(self.cap)
            if not ok or img is None:
                pos = self.cap.get(cv2.CAP_PROP_POS_FRAMES)
                total = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
                if total > 0 and pos < total - 1 and failures < 10:  # a corrupt frame inside the file
                    failures += 1
                    self.unreadable += 1
                    self.cap.set(cv2.CAP_PROP_POS_FRAMES, pos + 1)
                    continue
                if self.opts.loop and i > 0:
                    self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                return
            failures = 0
            yield Frame(self.spec, i, time.time(), img, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
            i += 1

    def close(self) -> None:
        self.cap.release()


class ImageFilesSource(Source):
    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        p = Path(spec)
        if p.is_dir():
            files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        elif any(ch in spec for ch in "*?["):
            files = [Path(f) for f in glob.glob(spec, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            files = [p]
        else:
            raise SourceError(f"source not found: {spec} (not a file, folder, glob, video, camera or URL)")
        self.files = sorted(files, key=lambda f: str(f))
        if not self.files:
            raise SourceError(f"no image files in {spec} (looked for {', '.join(IMAGE_SUFFIXES)})")

    def frames(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            if self.stop_requested:
                return
            t0 = time.perf_counter()
            img = read_image(f)
            ms = (time.perf_counter() - t0) * 1e3
            yield Frame(self.spec, i, time.time(), img, name=str(f), t_capture_ns=time.perf_counter_ns(), capture_ms=ms)


class LiveSource(Source):
    """Camera, CSI or RTSP: read continuously; reopen with bounded backoff when it fails."""

    live = True

    def __init__(self, spec: str, opts: SourceOptions, target: Any, api: int, what: str) -> None:
        super().__init__(spec, opts)
        self.target, self.api, self.what = target, api, what
        self.reconnects = 0
        self.cap = self._open()
        if self.cap is None:
            raise SourceError(f"cannot open {what} {spec!r} (tried {self._tried()}); check it is connected and not in use")

    def _tried(self) -> str:
        names = {cv2.CAP_V4L2: "OpenCV V4L2", cv2.CAP_GSTREAMER: "OpenCV GStreamer", cv2.CAP_FFMPEG: "OpenCV FFmpeg", cv2.CAP_ANY: "OpenCV"}
        return f"{names.get(self.api, 'OpenCV')} on {self.target!r}"

    def _open(self) -> cv2.VideoCapture | None:
        # OpenCV logs its own warning when a device does not open; ours (one line, what was tried) replaces it
        with opencv_errors_only():
            if self.api == cv2.CAP_FFMPEG:  # timeouts only apply when given at open time
                ms = int(self.opts.stall_timeout * 1000)
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms, *decode_params(self.opts)]
                cap = cv2.VideoCapture(self.target, self.api, params)
            elif self.api == cv2.CAP_GSTREAMER:
                gst = open_gstreamer(self.target, max(self.opts.stall_timeout, 1.0))
                if gst is None:
                    return None
                cap = gst
            else:
                cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            return None
        o = self.opts
        if o.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, o.width)
        if o.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, o.height)
        if o.fps:
            cap.set(cv2.CAP_PROP_FPS, o.fps)
        return cap

    def _reopen(self) -> bool:
        delay = 0.5
        for attempt in range(1, self.opts.reconnect_attempts + 1):
            if self.stop_requested:
                return False
            log.warning("%s %s lost; reopening (attempt %d/%d in %.1f s)", self.what, self.spec, attempt, self.opts.reconnect_attempts, delay)
            if self.pause(delay):
                return False
            cap = self._open()
            if cap is not None:
                self.cap = cap
                self.reconnects += 1
                log.warning("%s %s reopened", self.what, self.spec)
                return True
            delay = min(delay * 2, 8.0)
        return False

    def frames(self) -> Iterator[Frame]:
        i = 0
        while not self.stop_requested:
            assert self.cap is not None
            ok, img, ms = _arrived_read(self.cap)
            if not ok or img is None:
                self.cap.release()
                if not self._reopen():
                    if self.stop_requested:
                        return
                    raise SourceError(f"{self.what} {self.spec} is gone and did not come back after {self.opts.reconnect_attempts} attempts")
                continue
            yield Frame(self.spec, i, time.time(), img, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
            i += 1

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class GstPipelineSource(Source):
    """``gst:PIPELINE``: a GStreamer pipeline ending in ``appsink``, through OpenCV's GStreamer backend.

    Never drops (the reader blocks, so GStreamer's own queues apply back-pressure) and ends at end of stream; a
    pipeline with a live source decides its drops in its ``appsink`` (``drop=true max-buffers=1``).
    """

    @property
    def realtime(self) -> bool:
        """A pipeline's appsink delivers at the pace of its clock (a camera's, or the file's timestamps with sync)."""
        return True

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        self.pipeline = spec[len("gst:") :].strip()
        require_gstreamer(spec)
        last = self.pipeline.rsplit("!", 1)[-1].split()
        if not last or last[0] != "appsink":
            raise SourceError(f"{spec[:80]!r}: a gst: pipeline must end in '! appsink' (for example 'gst:videotestsrc ! videoconvert ! appsink')")
        names = [p.split("=", 1)[1].strip("'\"") for p in last[1:] if p.startswith("name=")]
        if names and "appsink" not in names[0]:
            raise SourceError(f"gst: appsink name={names[0]}: OpenCV finds its sink by a name that contains 'appsink'; "
                              "leave name= out or use one such as name=appsink0")
        reason = gst_parse_error(self.pipeline)
        if reason:
            raise SourceError(f"GStreamer cannot parse {self.pipeline[:120]!r}: {reason}")
        cap = open_gstreamer(self.pipeline, max(opts.stall_timeout, 1.0))
        if cap is None:
            raise SourceError(
                f"GStreamer could not start {self.pipeline[:120]!r}: try it with gst-launch-1.0 (replace appsink by fakesink), "
                "check every element is installed (gst-inspect-1.0 NAME) and that a videoconvert precedes appsink"
            )
        self.cap = cap

    def frames(self) -> Iterator[Frame]:
        i = 0
        while not self.stop_requested:
            ok, img, ms = _arrived_read(self.cap)
            if not ok or img is None:
                return  # end of stream (OpenCV reports an error in the pipeline the same way; GStreamer logs it)
            yield Frame(self.spec, i, time.time(), img, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
            i += 1

    def close(self) -> None:
        self.cap.release()


def gst_parse_error(pipeline: str) -> str | None:
    """GStreamer's own reason when it cannot parse ``pipeline`` (an element that is not installed, a bad property),
    through PyGObject where the system has it (JetPack and Debian do; OpenCV itself may hang on such a pipeline);
    None when it parses or when PyGObject is not there to ask."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import GLib, Gst
    except (ImportError, ValueError):
        return None
    if not Gst.is_initialized():
        Gst.init(None)
    try:
        element = Gst.parse_launch(pipeline)
    except GLib.Error as exc:
        return str(exc.message)
    element.set_state(Gst.State.NULL)
    return None


def open_gstreamer(pipeline: str, timeout_s: float) -> cv2.VideoCapture | None:
    """OpenCV's GStreamer capture, or None when it does not open within ``timeout_s``: OpenCV 4.6's backend can wait
    for ever on a pipeline that never prerolls; the opening thread is then left behind (a daemon) and the caller
    says so in one line."""
    box: list[cv2.VideoCapture] = []

    def _open() -> None:
        with opencv_errors_only():
            box.append(cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER))

    t = threading.Thread(target=_open, name="gst-open", daemon=True)
    t.start()
    t.join(timeout_s)
    if not box:
        log.warning("GStreamer pipeline did not start within %.0f s", timeout_s)
        return None
    cap = box[0]
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def require_gstreamer(spec: str) -> None:
    """One line, before anything is opened, when this OpenCV has no GStreamer."""
    if not gstreamer_available():
        shown = spec if len(spec) <= 60 else spec[:57] + "..."
        raise SourceError(
            f"{shown!r} needs OpenCV built with GStreamer (JetPack's and Debian's python3-opencv have it; pip's opencv-python-headless "
            "does not): make jetson keeps the system's, or pip uninstall opencv-python-headless in a --system-site-packages venv"
        )


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if "GStreamer" in line and ":" in line:
            return "YES" in line.split(":", 1)[1].upper()
    return False


def csi_pipeline(sensor: int, opts: SourceOptions) -> str:
    w, h, fps = opts.width or 1280, opts.height or 720, int(opts.fps or 30)
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )


def default_watch_state(folder: Path) -> Path:
    """Where a watch folder's scored names live by default: in the service's own state directory
    (``$XDG_STATE_HOME``, else ``~/.local/state``), never inside the folder that scanners (and anyone
    else who can write there) drop files into. One file per watched folder, named by a hash of its real path."""
    import hashlib

    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    real = os.fsencode(os.path.realpath(folder))
    return base / "skipgan-edge" / "watch" / f"{hashlib.sha256(real).hexdigest()[:16]}.scored"


def encode_name(name: str) -> str:
    """A file name as one line of the state file: a JSON string, ASCII only. Lossless for any name: a
    newline, carriage return or U+2028 is escaped, and a byte that is not UTF-8 (Python's
    surrogateescape, U+DC80-U+DCFF) is written as its escape (\\udcNN), so the line never breaks."""
    return json.dumps(name, ensure_ascii=True)


#: Free space a watch state needs on its disk when opened: below it, a scored file could not be recorded and would be
#: scored again (a duplicate record) on every restart, so the run is refused before any work instead.
STATE_MIN_FREE = 64 * 1024


class WatchState:
    """The files a watch folder has scored: one JSON line each, appended, flushed and fsynced: ``[name, size, mtime_ns]``
    (a bare JSON string, or a plain line, from older versions: the name alone).

    Opened with ``O_NOFOLLOW`` (a symlink planted where the file should be is refused, not followed)
    and checked to be a regular file owned by this user; created 0600 in a 0700 directory. Lines that
    are not JSON are read as plain names (the format before JSON lines); a torn last line from a crash
    is ignored, so that file is scored again rather than lost. Opening it writes a newline (ending a torn
    line) and checks the disk has room: a state that cannot grow is refused before anything is scored,
    since every file scored then would be scored again, its record duplicated, on each restart.
    """

    def __init__(self, path: Path) -> None:
        import errno

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SourceError(f"watch state {self.path} is a symbolic link; refusing to follow it (remove it, or pass "
                                  "--watch-state PATH in a directory only this service writes)") from None
            raise SourceError(f"cannot open the watch state {self.path}: {exc.strerror}; pass --watch-state PATH") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            os.close(fd)
            raise SourceError(f"watch state {self.path} is not a regular file owned by this user; refusing it (pass --watch-state PATH "
                              "in a directory only this service writes)")
        self.fd = fd
        chunks: list[bytes] = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        self.done: set[str] = set()
        self.sigs: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) of the file scored under it, where known
        data = b"".join(chunks)
        lines = data.split(b"\n")
        if lines and lines[-1]:
            lines = lines[:-1]  # a torn last line: that file is scored again, never lost
        for raw in lines:
            if not raw:
                continue
            if raw.startswith((b'"', b"[")):
                try:
                    item = json.loads(raw.decode("ascii"))
                    if isinstance(item, str):
                        self.done.add(item)
                        self.sigs.pop(item, None)
                        continue
                    if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                            and all(isinstance(v, int) and not isinstance(v, bool) for v in item[1:])):
                        self.done.add(item[0])
                        self.sigs[item[0]] = (item[1], item[2])
                        continue
                except (ValueError, UnicodeDecodeError):
                    pass
            self.done.add(raw.decode("utf-8", "surrogateescape"))
        self._probe()

    def _probe(self) -> None:
        """Write a newline (ending a torn last line) and check the disk's free space; one line if the state cannot grow."""
        try:
            self._write(b"\n")
            vfs = os.fstatvfs(self.fd)
        except OSError as exc:
            os.close(self.fd)
            raise SourceError(f"cannot write the watch state {self.path}: {exc.strerror}; free disk space (or pass --watch-state PATH "
                              "on another disk) before scoring: a file whose name cannot be recorded would be scored again on "
                              "every restart") from None
        free = vfs.f_bavail * vfs.f_frsize
        if free < STATE_MIN_FREE:
            os.close(self.fd)
            raise SourceError(f"the disk holding the watch state {self.path} is full ({free} bytes free); free space (or pass "
                              "--watch-state PATH on another disk) before scoring: a file whose name cannot be recorded would be "
                              "scored again on every restart")

    def _write(self, data: bytes) -> None:
        while data:  # a full disk may take part of a line: the rest, or the error
            n = os.write(self.fd, data)
            data = data[n:]
        os.fsync(self.fd)

    def scored(self, name: str, sig: tuple[int, int] | None) -> bool:
        """Whether the file ``name`` with this (size, mtime_ns) was scored: a name recorded without its signature (an older
        state file) counts as scored; one recorded with another signature is a new file under an old name."""
        if name not in self.done:
            return False
        known = self.sigs.get(name)
        return known is None or sig is None or known == sig

    def add(self, name: str, sig: tuple[int, int] | None = None) -> None:
        line = encode_name(name) if sig is None else json.dumps([name, int(sig[0]), int(sig[1])], ensure_ascii=True)
        try:
            self._write((line + "\n").encode("ascii"))
        except OSError as exc:
            raise SourceError(f"cannot record a scored file in {self.path}: {exc.strerror}; free disk space") from None
        self.done.add(name)
        if sig is not None:
            self.sigs[name] = (int(sig[0]), int(sig[1]))

    def close(self) -> None:
        os.close(self.fd)


def read_nofollow(path: Path) -> bytes | None:
    """A file's bytes, never through a symlink (``O_NOFOLLOW``); None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError:
        return None


class WatchFolder(Source):
    """A scanner's drop folder: score every new file once, in arrival order, never twice.

    * A file is taken only when complete: its size and mtime have not changed for
      ``watch_settle`` seconds (scanners write files in pieces).
    * Arrival order is mtime order (then name).
    * Scored names are appended (flushed and fsynced) to a state file after their results reach
      every sink; on restart, those are skipped and everything else is scored: nothing is lost
      and nothing is scored twice. Any name works, including newlines, carriage returns, U+2028
      and bytes that are not UTF-8 (:func:`encode_name`).
    * The state file lives where only the service writes (:func:`default_watch_state`, or
      ``--watch-state``), is never followed through a symlink and must be this user's regular
      file (:class:`WatchState`): whoever can write into the drop folder cannot make the runtime
      write anywhere else. A state file left inside the folder by an older version is ignored.
    * Symbolic links inside the folder are skipped unless they point inside the folder, or
      ``watch_follow_symlinks`` allows any target; files are read with ``O_NOFOLLOW``.
    * A file that does not decode (or is empty) is taken to be still in transfer: it is retried
      whenever its size or mtime changes. Only when it stays unchanged and undecodable for
      ``watch_give_up`` seconds is it passed on as unreadable (counted, logged, recorded so it is
      not retried forever). A scanner that pauses mid-file therefore never gets half a file scored.
    """

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        self.dir = Path(spec[len("watch:") :])
        if not self.dir.is_dir():
            raise SourceError(f"watch folder not found: {self.dir}; create it or point watch: at the scanner's output folder")
        self.real_dir = os.path.realpath(self.dir)
        legacy = self.dir / ".skipgan-edge-scored"
        if opts.watch_state is None and os.path.lexists(legacy):
            log.warning("ignoring %s: the scored-names file now lives outside the watch folder (%s); files listed there may be "
                        "scored once more", legacy, default_watch_state(self.dir))
        self.state = WatchState(opts.watch_state or default_watch_state(self.dir))
        self.done = self.state.done
        self._identity = self._folder_identity()
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._queued: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) handed on, not yet acknowledged
        self._rescored: set[str] = set()
        self._undecodable: dict[str, tuple[tuple[int, int], float]] = {}  # name -> (size/mtime when it failed, first failure)
        self._skipped_links: set[str] = set()

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([real, self.real_dir]) == self.real_dir

    def _folder_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.dir)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _check_folder(self) -> None:
        """One line when the folder is gone, and one when it was replaced (deleted and made again) under the same path:
        its files are then taken as the new files they are (a name scored before, with another size or mtime, is
        scored again)."""
        ident = self._folder_identity()
        if ident is None:
            raise SourceError(f"watch folder {self.dir} is gone (deleted or unmounted); create it again or point watch: at the "
                              "scanner's output folder")
        if ident != self._identity:
            log.warning("watch folder %s was replaced (deleted and made again): its files are scored as new ones", self.dir)
            self._identity = ident
            self.real_dir = os.path.realpath(self.dir)
            self._seen.clear()
            self._undecodable.clear()

    def _scan(self) -> list[tuple[str, str]]:
        """(name, path to read) of the files that are complete, in arrival order."""
        ready = []
        now = time.monotonic()
        self._check_folder()
        try:
            entries = list(os.scandir(self.dir))
        except OSError as exc:
            raise SourceError(f"cannot read watch folder {self.dir}: {exc.strerror}") from None
        for e in entries:
            if e.name.startswith(".") or Path(e.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if e.name in self._queued or (e.name in self.done and e.name not in self.state.sigs):
                continue
            target = e.path
            try:
                if e.is_symlink():
                    if not self.opts.watch_follow_symlinks and not self._inside(e.path):
                        if e.name not in self._skipped_links:
                            self._skipped_links.add(e.name)
                            log.warning("skipping %r: a symbolic link out of the watch folder (--watch-follow-symlinks allows it)", e.name)
                        continue
                    target = os.path.realpath(e.path)
                    st = os.stat(target)
                else:
                    st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self.state.scored(e.name, sig):
                continue
            if e.name in self.done and e.name not in self._rescored:
                self._rescored.add(e.name)
                log.info("%r is not the file scored under that name before (its size or mtime differs): scored as a new file", e.name)
            prev = self._seen.get(e.name)
            if prev is None or prev[:2] != sig:
                self._seen[e.name] = (*sig, now)
                continue
            if now - prev[2] >= self.opts.watch_settle:
                ready.append((e.name, target))
        ready.sort(key=lambda p: (self._seen[p[0]][1], p[0]))
        return ready

    def frames(self) -> Iterator[Frame]:
        i = 0
        idle_since = time.monotonic()
        while not self.stop_requested:
            ready = self._scan()
            yielded = False
            for name, target in ready:
                if self.stop_requested:
                    return
                sig = self._seen[name][:2]
                bad = self._undecodable.get(name)
                if bad is not None and bad[0] == sig and time.monotonic() - bad[1] < self.opts.watch_give_up:
                    continue  # unchanged since it last failed to decode: wait for the writer
                t0 = time.perf_counter()
                data = read_nofollow(Path(target))
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
                ms = (time.perf_counter() - t0) * 1e3
                if img is None and (bad is None or time.monotonic() - bad[1] < self.opts.watch_give_up):
                    first = bad[1] if bad is not None else time.monotonic()
                    self._undecodable[name] = ((int(sig[0]), int(sig[1])), first)
                    continue
                if img is None and not data:
                    log.warning("%r is empty (0 bytes) after %.0f s; counted as unreadable", name, self.opts.watch_give_up)
                self._undecodable.pop(name, None)
                self._queued[name] = (int(sig[0]), int(sig[1]))
                yield Frame(self.spec, i, time.time(), img, name=name, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
                yielded = True
                i += 1
            if yielded:
                idle_since = time.monotonic()
            elif self.opts.stop_after_idle is not None and time.monotonic() - idle_since > self.opts.stop_after_idle:
                return
            if self.pause(self.opts.watch_poll):
                return

    def ack(self, frame: Frame) -> None:
        if frame.name is None:
            return
        self.state.add(frame.name, self._queued.pop(frame.name, None))

    def close(self) -> None:
        self.state.close()


def open_source(spec: str, opts: SourceOptions | None = None) -> Source:
    """Parse a source string (see the module docstring) and open it."""
    opts = opts or SourceOptions()
    if spec.startswith("watch:"):
        return WatchFolder(spec, opts)
    if spec.startswith("v4l2://"):
        dev = spec[len("v4l2://") :]
        return LiveSource(spec, opts, dev, cv2.CAP_V4L2, "camera")
    if spec.startswith("/dev/video"):
        return LiveSource(spec, opts, spec, cv2.CAP_V4L2, "camera")
    if spec.isdigit():
        return LiveSource(spec, opts, int(spec), cv2.CAP_ANY, "camera")
    if spec.startswith("gst:"):
        return GstPipelineSource(spec, opts)
    if spec.startswith("genicam://"):
        from skipgan_edge.runtime.genicam import GenicamSource  # Aravis (PyGObject) only when asked for

        return GenicamSource(spec, opts)
    if spec.startswith("csi://"):
        sensor = spec[len("csi://") :] or "0"
        if not (sensor.isascii() and sensor.isdigit()) or int(sensor) > 15:
            raise SourceError(f"{spec[:40]!r}: a CSI camera is csi://N with N the sensor id (0-15, as nvarguscamerasrc sensor-id)")
        require_gstreamer(spec)
        pipeline = csi_pipeline(int(sensor), opts)
        reason = gst_parse_error(pipeline)
        if reason:
            raise SourceError(f"{spec}: GStreamer cannot build the CSI pipeline ({reason}): csi:// needs a Jetson's Argus camera stack "
                              "(nvarguscamerasrc, nvvidconv; in a container, mount them); elsewhere use gst:, v4l2:// or a camera index")
        return LiveSource(spec, opts, pipeline, cv2.CAP_GSTREAMER, "CSI camera")
    if spec.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return LiveSource(spec, opts, spec, cv2.CAP_FFMPEG, "stream")
    path = spec[7:] if spec.startswith("file://") else spec
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path, opts)
    return ImageFilesSource(path, opts)
