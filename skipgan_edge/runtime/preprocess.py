"""Frame → model input(s), and model outputs → a per-frame result.

Modes (``--mode``):

* ``resize`` (default): the whole frame resized to the model's input (area interpolation).
* ``crop``: the centred square of the frame's shorter side, resized to the input.
* ``tiles``: the frame cut into overlapping tiles of the model's input size at native
  resolution (no resizing: a small defect stays as large as at training); all tiles are scored
  in one batch and their anomaly maps stitched back into a full-frame map (overlaps averaged).
  The frame's score is the maximum tile score (a defect in one tile is a defective frame); the
  record carries the grid and the index of the worst tile. A frame smaller than the input in
  either side is resized up, as in ``resize``. Tiles overlap by ``overlap`` (default 25 %), the
  last row and column aligned with the frame's edge.

Grayscale models get grayscale frames; 16-bit frames are scaled by /257 as at training
(:func:`skipgan_edge.data.images.to_uint8`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from skipgan_edge.data.images import convert_channels, prepare, to_uint8
from skipgan_edge.errors import ConfigError

MODES = ("resize", "crop", "tiles")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass
class Prepared:
    inputs: np.ndarray  # (T, isize, isize, C) uint8: T = 1 except in tiles mode
    layout: dict[str, Any] | None  # tiles: frame shape and tile origins
    view: np.ndarray  # the uint8 frame (channel-converted) that maps are drawn on
    offset: tuple[int, int] = (0, 0)  # (x, y) of the view's top-left corner in the frame (crop mode)


def check_mode(mode: str) -> None:
    """One line for a --mode that is not one of :data:`MODES`."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")


class Preprocessor:
    def __init__(self, isize: int, channels: int, mode: str = "resize", overlap: float = 0.25) -> None:
        check_mode(mode)
        if not 0 <= overlap < 1:
            raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
        self.isize, self.channels, self.mode, self.overlap = isize, channels, mode, overlap

    def __call__(self, frame: np.ndarray) -> Prepared:
        img = convert_channels(to_uint8(frame), self.channels)
        s = self.isize
        h, w = img.shape[:2]
        if self.mode == "crop":
            side = min(h, w)
            y0, x0 = (h - side) // 2, (w - side) // 2
            img = img[y0 : y0 + side, x0 : x0 + side]
            return Prepared(prepare(img, s, self.channels)[None], None, img, (x0, y0))
        if self.mode == "tiles" and h >= s and w >= s:
            ys, xs = tile_starts(h, s, self.overlap), tile_starts(w, s, self.overlap)
            tiles = np.stack([img[y : y + s, x : x + s] for y in ys for x in xs])
            return Prepared(np.ascontiguousarray(tiles), {"h": h, "w": w, "ys": ys, "xs": xs}, img)
        return Prepared(prepare(img, s, self.channels)[None], None, img)


def prepare_frame(pre: Preprocessor, image: np.ndarray | None) -> Prepared | None:
    """``pre(image)``, or None for a frame that could not be decoded or prepared (counted as unreadable downstream)."""
    if image is None:
        return None
    try:
        return pre(image)
    except (ValueError, TypeError, OSError):
        return None


def combine(p: Prepared, score: np.ndarray, norm: np.ndarray, amap: np.ndarray, full_map: bool = True) -> dict[str, Any]:
    """Per-frame score, normalized score and full-frame anomaly map from its inputs' outputs.

    ``full_map=False`` skips resizing the map to the frame (no sink draws it): less work per frame."""
    if p.layout is None:
        h, w = p.view.shape[:2]
        m = amap[0, 0]
        if not full_map:
            return {"score": float(score[0]), "normalized_score": float(norm[0]), "map": m}
        return {"score": float(score[0]), "normalized_score": float(norm[0]), "map": to_view(m, (h, w))}
    lay = p.layout
    h, w, s = lay["h"], lay["w"], amap.shape[-1]
    acc = np.zeros((h, w), np.float32)
    cnt = np.zeros((h, w), np.float32)
    k = 0
    for y in lay["ys"]:
        for x in lay["xs"]:
            acc[y : y + s, x : x + s] += amap[k, 0]
            cnt[y : y + s, x : x + s] += 1
            k += 1
    worst = int(np.argmax(score))
    return {
        "score": float(score[worst]), "normalized_score": float(norm[worst]), "map": acc / np.maximum(cnt, 1),
        "tiles": {"rows": len(lay["ys"]), "cols": len(lay["xs"]), "worst": worst,
                  "worst_origin": [lay["ys"][worst // len(lay["xs"])], lay["xs"][worst % len(lay["xs"])]]},
    }


def to_view(amap: np.ndarray, view_hw: tuple[int, int]) -> np.ndarray:
    """A model-resolution map at the view's size (bilinear): the map the overlay draws."""
    h, w = view_hw
    return cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR) if amap.shape != (h, w) else amap


def locate(amap: np.ndarray, level: float, view_hw: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> list[int] | None:
    """Bounding box [x0, y0, x1, y1] (frame pixels, x1 and y1 exclusive) of the defect: the connected region of the map at
    or above ``level`` that holds the map's maximum. None when no pixel reaches the level. ``amap`` is the model's own
    map (its cells scaled whole to the view: the region the overlay outlines, drawn smooth, has its edge within about
    half a cell of the box) or one already at the view's size (tiles)."""
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    if not amap[peak] >= level:
        return None
    _, labels = cv2.connectedComponents((amap >= level).astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(labels == labels[peak])
    h, w = view_hw
    sy, sx = h / amap.shape[0], w / amap.shape[1]
    ox, oy = offset
    return [int(xs.min() * sx) + ox, int(ys.min() * sy) + oy, int(np.ceil((xs.max() + 1) * sx)) + ox, int(np.ceil((ys.max() + 1) * sy)) + oy]
