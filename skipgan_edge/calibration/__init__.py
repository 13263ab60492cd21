"""Calibration sets: real normal frames for INT8 scales (and AutoCast's FP16 reference run).

A calibration set is one ``.npz`` file: ``images`` uint8 [N, H, W, C] at the model's input size
and channel order, and ``manifest`` (a JSON string): source, count, sha256 of the images, input
size, channels, channel order, how frames were picked, how many near-duplicates were dropped.

* From a folder: the files are sorted and picked evenly spaced (stratified over the whole
  sorted list, so every part of a capture session is represented). For an MVTec-style folder
  the normal training images (``train/good``) are used.
* From a video or camera: frames evenly spread over the video's length (a camera: one frame
  every ``--stride`` frames).
* Near-duplicates are dropped: each frame's 16×16 grayscale thumbnail is compared with the kept
  ones; a mean absolute difference below 1.0 grey level means "the same frame" (a static
  camera feeds hundreds of those, and they add nothing but weight to one scene).

Size rules: fewer than ``MIN_FRAMES`` (32) is an error (the scales would rest on a handful of
images); fewer than ``RECOMMENDED_FRAMES`` (300) is a warning, as anomalib and Ultralytics do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skipgan_edge.card import ModelCard
from skipgan_edge.data.images import VIDEO_SUFFIXES
from skipgan_edge.data.progress import Progress
from skipgan_edge.errors import CalibrationError, DataError

log = logging.getLogger(__name__)

MIN_FRAMES = 32
RECOMMENDED_FRAMES = 300
DUPLICATE_MAD = 1.0  # mean absolute difference of 16×16 thumbnails (grey levels) below which two frames are the same


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, H, W, C) uint8
    manifest: dict[str, Any]


def _thumb(img: np.ndarray) -> np.ndarray:
    g = img if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


def dedupe(frames: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Drop frames whose thumbnail is within DUPLICATE_MAD of a kept one."""
    kept: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    with Progress("dropping near-duplicate calibration frames", len(frames), "frames") as bar:
        for f in frames:
            bar.update()
            t = _thumb(f)
            if thumbs and float(np.min(np.abs(np.stack(thumbs) - t).mean(axis=1))) < DUPLICATE_MAD:
                continue
            kept.append(f)
            thumbs.append(t)
    return kept, len(frames) - len(kept)


def _evenly(n_total: int, n_pick: int) -> np.ndarray:
    if n_total <= n_pick:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n_pick).round().astype(int))


def from_folder(folder: Path, size: int, isize: int, channels: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    from skipgan_edge.data.images import IMAGE_SUFFIXES, load_images

    folder = Path(folder)
    base = folder / "train" / "good" if (folder / "train" / "good").is_dir() else folder
    if not base.is_dir():
        raise DataError(f"calibration folder not found: {folder}")
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files in {base}")
    # over-pick so that duplicates and unreadable files can be dropped and still reach `size`
    idx = _evenly(len(files), min(len(files), size * 2))
    arr, _, bad = load_images([files[i] for i in idx], isize, channels, what="calibration")
    frames = list(arr)
    return frames, {"source": str(base), "picked": "evenly spaced over the sorted files", "files": len(files), "unreadable": len(bad)}


def from_video(source: str, size: int, isize: int, channels: int, stride: int = 10) -> tuple[list[np.ndarray], dict[str, Any]]:
    from skipgan_edge.data.images import prepare

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise DataError(f"cannot open video or camera {source!r} (OpenCV could not read it); check the path or device")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames: list[np.ndarray] = []
    try:
        if n > 0:  # a file: evenly spread over its length
            wanted = set(_evenly(n, size * 2).tolist())
            i = 0
            with Progress(f"reading calibration frames from {source}", n, "frames") as bar:
                while len(frames) < len(wanted):
                    ok = cap.grab()
                    if not ok:
                        break
                    bar.update()
                    if i in wanted:
                        ok, frame = cap.retrieve()
                        if ok and frame is not None:
                            frames.append(prepare(frame, isize, channels))
                    i += 1
            picked = f"evenly spread over {n} frames"
        else:  # a live camera: every `stride`-th frame
            i = 0
            while len(frames) < size * 2 and i < size * 2 * stride:
                ok, frame = cap.read()
                if not ok:
                    break
                if i % stride == 0:
                    frames.append(prepare(frame, isize, channels))
                i += 1
            picked = f"every {stride}th live frame"
    finally:
        cap.release()
    if not frames:
        raise DataError(f"no frame could be decoded from {source!r}")
    return frames, {"source": source, "picked": picked, "frames_in_source": n}


def build(source: str, size: int, isize: int, channels: int) -> CalibrationSet:
    """Build a calibration set of up to ``size`` distinct frames from a folder, video or camera."""
    p = Path(source)
    if p.is_dir():
        frames, info = from_folder(p, size, isize, channels)
    elif p.suffix.lower() in VIDEO_SUFFIXES or source.isdigit() or source.startswith(("/dev/video", "rtsp://")):
        frames, info = from_video(source, size, isize, channels)
    else:
        raise DataError(f"calibration source {source!r} is neither a folder nor a video file nor a camera")
    kept, dropped = dedupe(frames)
    if len(kept) > size:
        kept = [kept[i] for i in _evenly(len(kept), size)]
    images = np.stack(kept) if kept else np.zeros((0, isize, isize, channels), np.uint8)
    check_size(len(images), source)
    manifest = {
        **info,
        "count": len(images),
        "duplicates_dropped": int(dropped),
        "sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        "isize": isize,
        "channels": channels,
        "channel_order": "BGR" if channels == 3 else "GRAY",
        "dtype": "uint8",
        "layout": "NHWC",
    }
    return CalibrationSet(images, manifest)


def from_images(images: np.ndarray, source: str, size: int = 512) -> CalibrationSet:
    """A calibration set from frames already in memory (uint8 NHWC at the model's input size)."""
    frames, dropped = dedupe(list(images[_evenly(len(images), min(len(images), size * 2))]))
    if len(frames) > size:
        frames = [frames[i] for i in _evenly(len(frames), size)]
    arr = np.stack(frames)
    check_size(len(arr), source)
    c = int(arr.shape[3])
    manifest = {"source": source, "picked": "evenly spaced", "count": len(arr), "duplicates_dropped": int(dropped),
                "sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "isize": int(arr.shape[1]), "channels": c,
                "channel_order": "BGR" if c == 3 else "GRAY", "dtype": "uint8", "layout": "NHWC"}
    return CalibrationSet(arr, manifest)


def check_size(n: int, source: str) -> None:
    if n < MIN_FRAMES:
        raise CalibrationError(
            f"only {n} distinct frames from {source}: INT8 calibration needs at least {MIN_FRAMES} "
            f"({RECOMMENDED_FRAMES}+ recommended); add normal images or record a longer video"
        )
    if n < RECOMMENDED_FRAMES:
        log.warning("calibration set has %d frames; %d or more give more stable INT8 scales", n, RECOMMENDED_FRAMES)


def save(cs: CalibrationSet, out: Path) -> Path:
    import io

    from skipgan_edge.card import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, images=cs.images, manifest=np.array(json.dumps(cs.manifest)))
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


def load(path: Path) -> CalibrationSet:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration set not found: {path}; make one with: skipgan-edge calibrate --data DIR --out {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            manifest = json.loads(str(z["manifest"]))
    except (OSError, KeyError, ValueError) as exc:
        raise CalibrationError(f"{path} is not a skipgan-edge calibration set ({exc}); rebuild it with skipgan-edge calibrate") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise CalibrationError(f"{path}: images must be uint8 NHWC, found {images.dtype} {images.shape}")
    if hashlib.sha256(images.tobytes()).hexdigest() != manifest.get("sha256"):
        raise CalibrationError(f"{path}: images do not match the manifest hash (file modified?); rebuild it")
    return CalibrationSet(images, manifest)


def check_matches(cs: CalibrationSet, card: ModelCard, path: Path) -> None:
    """Refuse a set made for another input size or channel count, with one line."""
    want = (card.input.isize, card.input.channels)
    got = (cs.manifest.get("isize"), cs.manifest.get("channels"))
    if tuple(cs.images.shape[1:]) != (want[0], want[0], want[1]) or got != want:
        raise CalibrationError(
            f"{path} was made for {got[0]}x{got[0]} with {got[1]} channel(s), the model takes {want[0]}x{want[0]} "
            f"with {want[1]}; rebuild it with: skipgan-edge calibrate --model MODEL --data DIR --out {path}"
        )
    check_size(len(cs.images), str(path))
