"""Orthogonal views (XY, XZ, YZ) of several volumes side by side, as one PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ..pipeline.io.atomic import atomic_write


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    lo, hi = np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)


def ortho_figure(volumes: dict[str, np.ndarray], path: str, z: int, y: int | None = None,
                 x: int | None = None, scale: int = 2, title: str = "") -> None:
    """One row per volume: the XY plane at ``z`` and the XZ / YZ planes through the centre."""
    first = next(iter(volumes.values()))
    y = first.shape[1] // 2 if y is None else y
    x = first.shape[2] // 2 if x is None else x
    label_h, gap = 18, 6
    tiles = []
    for name, vol in volumes.items():
        views = [vol[z], vol[:, y, :], vol[:, :, x]]
        row = [Image.fromarray(_to_uint8(np.ascontiguousarray(v))).resize(
            (v.shape[1] * scale, v.shape[0] * scale), Image.NEAREST) for v in views]
        tiles.append((name, row))
    widths = [max(r[i].width for _, r in tiles) for i in range(3)]
    heights = [max(im.height for im in r) for _, r in tiles]
    canvas = Image.new("L", (sum(widths) + gap * 4, sum(heights) + (label_h + gap) * len(tiles) + label_h), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), f"{title}   columns: XY (z={z}) | XZ (y={y}) | YZ (x={x})", fill=0)
    top = label_h
    for (name, row), h in zip(tiles, heights):
        draw.text((gap, top + 2), name, fill=0)
        left = gap
        for im, w in zip(row, widths):
            canvas.paste(im, (left, top + label_h))
            left += w + gap
        top += h + label_h + gap
    save_png(canvas, path)


def save_png(img: Image.Image, path: str) -> None:
    """A Pillow image as a PNG file, written atomically (a kill never leaves half a figure)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
