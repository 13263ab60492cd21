"""Frame sources, one string each.

=======================================  ==========================================  ======
spec                                     what                                        drops
=======================================  ==========================================  ======
``/dev/video0``, ``v4l2:///dev/video0``  V4L2 camera (OpenCV, CAP_V4L2)              newest
``0`` (a bare index)                     camera by index                             newest
``csi://0``                              Jetson CSI camera: GStreamer nvarguscamerasrc newest
``rtsp://host/path``                     RTSP stream (OpenCV/FFmpeg)                 newest
``line.mp4`` (any video file)            decoded in order, ends at end of file       never
``img.png``, ``dir/``, ``'dir/*.png'``   image file, folder or glob, sorted by name  never
``watch:DIR``                            a scanner's drop folder (see WatchFolder)   never
=======================================  ==========================================  ======

Live sources (cameras, CSI, RTSP) are read as fast as they deliver; the pipeline keeps only the
newest frame and counts the ones it replaced (``dropped``). Files, folders and watch folders are
never dropped: the reader blocks until the model catches up.

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

import glob
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skipgan_edge.data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_image
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
    watch_state: Path | None = None  # where scored names are remembered (default DIR/.skipgan-edge-scored)
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

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def ack(self, frame: Frame) -> None:
        """Called after the frame's result reached every sink."""

    def stop(self) -> None:
        self.stop_requested = True

    def close(self) -> None:
        pass


def decode_params(opts: SourceOptions) -> list[int]:
    """FFmpeg open parameters for the decoder thread count (none: FFmpeg's default)."""
    if opts.decode_threads < 0:
        raise SourceError(f"--decode-threads must be 0 (FFmpeg's default) or more, got {opts.decode_threads}")
    return [cv2.CAP_PROP_N_THREADS, opts.decode_threads] if opts.decode_threads else []


def _timed_read(cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None, float]:
    t0 = time.perf_counter()
    ok, img = cap.read()
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
        self.cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, decode_params(opts))
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
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            if self.api == cv2.CAP_FFMPEG:  # timeouts only apply when given at open time
                ms = int(self.opts.stall_timeout * 1000)
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms, *decode_params(self.opts)]
                cap = cv2.VideoCapture(self.target, self.api, params)
            else:
                cap = cv2.VideoCapture(self.target, self.api)
        finally:
            cv2.utils.logging.setLogLevel(level)
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
            time.sleep(delay)
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
            ok, img, ms = _timed_read(self.cap)
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


class WatchFolder(Source):
    """A scanner's drop folder: score every new file once, in arrival order, never twice.

    * A file is taken only when complete: its size and mtime have not changed for
      ``watch_settle`` seconds (scanners write files in pieces).
    * Arrival order is mtime order (then name).
    * Scored names are appended (flushed and fsynced) to a state file after their results reach
      every sink; on restart, those are skipped and everything else is scored: nothing is lost
      and nothing is scored twice. Default state file: ``DIR/.skipgan-edge-scored``.
    * A file that does not decode is taken to be still in transfer: it is retried whenever its
      size or mtime changes. Only when it stays unchanged and undecodable for ``watch_give_up``
      seconds is it passed on as unreadable (counted, logged, recorded so it is not retried
      forever). A scanner that pauses mid-file therefore never gets half a file scored.
    """

    def __init__(self, spec: str, opts: SourceOptions) -> None:
        super().__init__(spec, opts)
        self.dir = Path(spec[len("watch:") :])
        if not self.dir.is_dir():
            raise SourceError(f"watch folder not found: {self.dir}; create it or point watch: at the scanner's output folder")
        self.state = opts.watch_state or self.dir / ".skipgan-edge-scored"
        self.done: set[str] = set()
        if self.state.exists():
            self.done = {ln for ln in self.state.read_text().splitlines() if ln}
        self._fh = open(self.state, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._queued: set[str] = set()
        self._undecodable: dict[str, tuple[tuple[int, int], float]] = {}  # name -> (size/mtime when it failed, first failure)

    def _scan(self) -> list[Path]:
        ready = []
        now = time.monotonic()
        try:
            entries = list(os.scandir(self.dir))
        except OSError as exc:
            raise SourceError(f"cannot read watch folder {self.dir}: {exc.strerror}") from None
        for e in entries:
            if not e.is_file() or e.name.startswith(".") or Path(e.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if e.name in self.done or e.name in self._queued:
                continue
            st = e.stat()
            sig = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(e.name)
            if prev is None or prev[:2] != sig:
                self._seen[e.name] = (*sig, now)
                continue
            if now - prev[2] >= self.opts.watch_settle and st.st_size > 0:
                ready.append(Path(e.path))
        ready.sort(key=lambda p: (self._seen[p.name][1], p.name))
        return ready

    def frames(self) -> Iterator[Frame]:
        i = 0
        idle_since = time.monotonic()
        while not self.stop_requested:
            ready = self._scan()
            yielded = False
            for p in ready:
                if self.stop_requested:
                    return
                sig = self._seen[p.name][:2]
                bad = self._undecodable.get(p.name)
                if bad is not None and bad[0] == sig and time.monotonic() - bad[1] < self.opts.watch_give_up:
                    continue  # unchanged since it last failed to decode: wait for the writer
                t0 = time.perf_counter()
                img = read_image(p)
                ms = (time.perf_counter() - t0) * 1e3
                if img is None and (bad is None or time.monotonic() - bad[1] < self.opts.watch_give_up):
                    first = bad[1] if bad is not None else time.monotonic()
                    self._undecodable[p.name] = ((int(sig[0]), int(sig[1])), first)
                    continue
                self._undecodable.pop(p.name, None)
                self._queued.add(p.name)
                yield Frame(self.spec, i, time.time(), img, name=p.name, t_capture_ns=time.perf_counter_ns(), capture_ms=ms)
                yielded = True
                i += 1
            if yielded:
                idle_since = time.monotonic()
            elif self.opts.stop_after_idle is not None and time.monotonic() - idle_since > self.opts.stop_after_idle:
                return
            time.sleep(self.opts.watch_poll)

    def ack(self, frame: Frame) -> None:
        if frame.name is None:
            return
        self._fh.write(frame.name + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(frame.name)
        self._queued.discard(frame.name)

    def close(self) -> None:
        self._fh.close()


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
    if spec.startswith("csi://"):
        if not gstreamer_available():
            raise SourceError(
                f"{spec} needs OpenCV built with GStreamer (JetPack's python3-opencv has it; pip's opencv-python-headless does not): "
                "apt-get install python3-opencv and run with the system Python, or use v4l2:///dev/videoN"
            )
        return LiveSource(spec, opts, csi_pipeline(int(spec[len("csi://") :] or 0), opts), cv2.CAP_GSTREAMER, "CSI camera")
    if spec.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return LiveSource(spec, opts, spec, cv2.CAP_FFMPEG, "stream")
    path = spec[7:] if spec.startswith("file://") else spec
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path, opts)
    return ImageFilesSource(path, opts)
