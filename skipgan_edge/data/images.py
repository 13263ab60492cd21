"""Reading images as the model sees them: uint8 NHWC at the model's input size.

8-bit and 16-bit files (X-ray scanners write 16-bit) are both accepted. A 16-bit image is
scaled to 8 bits by a fixed division by 257 (65535 → 255), never by per-image min-max: a
per-image stretch would turn a uniformly dark (anomalous) scan into a normal-looking one. The
runtime applies the same rule, so training and inference see the same pixels.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV image dtype → uint8 by a fixed scale (16-bit: /257; float: assumed [0, 1])."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {img.dtype}")


def convert_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Make an (H, W) / (H, W, 1|3|4) BGR(A) image (H, W, channels)."""
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 4:
        img = img[:, :, :3]
        c = 3
    if channels == 1 and c == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    if channels == 3 and c == 1:
        return np.repeat(img, 3, axis=2)
    return img


def prepare(img: np.ndarray, isize: int, channels: int) -> np.ndarray:
    """Frame → (isize, isize, channels) uint8, resized with area interpolation."""
    img = convert_channels(to_uint8(img), channels)
    if img.shape[0] != isize or img.shape[1] != isize:
        img = cv2.resize(img, (isize, isize), interpolation=cv2.INTER_AREA)
        if img.ndim == 2:
            img = img[:, :, None]
    return np.ascontiguousarray(img)


def opencv_path(path: Path, error: type[Exception]) -> str:
    """``path`` as OpenCV can take it, or a one-line error: OpenCV's Python bindings need UTF-8, and a
    name with bytes that are not UTF-8 crashed the process inside OpenCV instead of raising."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{path!r}: the path is not valid UTF-8 and OpenCV cannot open it; rename it (or its folder)") from None
    return text


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file, or None if it does not decode."""
    img = read_image(path)
    return None if img is None else (int(img.shape[0]), int(img.shape[1]))


def read_image(path: Path) -> np.ndarray | None:
    """Read an image file unchanged (keeps 16-bit); None when OpenCV cannot decode it."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return img


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(
    paths: Sequence[Path], isize: int, channels: int, *, what: str = "images", sizes: Counter[str] | None = None
) -> tuple[np.ndarray, list[Path], list[Path]]:
    """Load and prepare files; unreadable ones are skipped, counted and listed in one warning. Long loads report
    progress (:mod:`skipgan_edge.data.progress`); ``sizes``, when given, counts the files' own sizes ("WxH").

    Returns:
        (images uint8 (N, isize, isize, channels), the paths loaded, the paths skipped).
    """
    from skipgan_edge.data.progress import Progress

    out: list[np.ndarray] = []
    ok: list[Path] = []
    bad: list[Path] = []
    with Progress(f"reading {what}", len(paths), "images") as bar:
        for p in paths:
            bar.update()
            img = read_image(p)
            if img is None:
                bad.append(p)
                continue
            try:
                out.append(prepare(img, isize, channels))
            except ValueError:
                bad.append(p)
                continue
            ok.append(p)
            if sizes is not None:
                sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
    if bad:
        shown = ", ".join(str(b) for b in bad[:5]) + (" …" if len(bad) > 5 else "")
        log.warning("skipped %d unreadable %s file(s): %s", len(bad), what, shown)
    arr = np.stack(out) if out else np.zeros((0, isize, isize, channels), np.uint8)
    return arr, ok, bad


MASK_ISSUES = ("missing", "undecodable", "misshapen")


def load_masks(paths: Iterable[Path | None], isize: int, expect: Iterable[tuple[int, int] | None] | None = None,
               needed: Iterable[bool] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Masks → ((N, isize, isize) bool, (N,) valid, issue counts).

    ``needed[i]``: image i is anomalous, so it must have a mask (a normal image's mask is all zeros and
    valid). A needed mask that is absent, does not decode, or whose height × width differs from its
    image's (``expect[i]``) is not guessed: it is marked invalid and counted under ``missing``,
    ``undecodable`` or ``misshapen``. Foreground is > 127 in the colour channels only: an alpha channel
    (fully opaque everywhere in most PNG masks) is dropped, never read as foreground.
    """
    paths = list(paths)
    expect_l = list(expect) if expect is not None else [None] * len(paths)
    needed_l = list(needed) if needed is not None else [p is not None for p in paths]
    out, valid = [], []
    issues = dict.fromkeys(MASK_ISSUES, 0)
    for p, shape, need in zip(paths, expect_l, needed_l):
        m = read_image(p) if p is not None else None
        problem = None
        if p is None:
            problem = "missing" if need else None
        elif m is None:
            problem = "undecodable"
        elif shape is not None and tuple(m.shape[:2]) != tuple(shape):
            problem = "misshapen"
        if problem is not None or m is None:
            if problem:
                issues[problem] += 1
            out.append(np.zeros((isize, isize), bool))
            valid.append(problem is None)
            continue
        m = to_uint8(m)
        if m.ndim == 3:
            colour = m[:, :, :3] if m.shape[2] >= 3 else m[:, :, :1]  # drop alpha (BGRA, or gray + alpha)
            m = colour.max(axis=2)
        out.append(cv2.resize(m, (isize, isize), interpolation=cv2.INTER_NEAREST) > 127)
        valid.append(True)
    masks = np.stack(out) if out else np.zeros((0, isize, isize), bool)
    return masks, np.asarray(valid, bool), issues
