"""The gate overlay drawn onto rendered frames: a panel of text and bars, rasterised with numpy.

A panel in the top-left corner with a caption (step and time), one bar per expert (gate weight,
labelled with expert_names, coloured as the viewer's lines) and the gate entropy (bar full at ln K).
Text is rasterised once per string and size with Pillow (already installed with matplotlib), in
DejaVu Sans when matplotlib ships it, and blended into the frame with numpy.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Sequence, Tuple

import numpy as np
import numpy.typing as npt

GATE_COLORS: Tuple[Tuple[int, int, int], ...] = (  # matplotlib's tab10, so the viewer's lines match
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
Image = npt.NDArray[np.uint8]


@functools.lru_cache(maxsize=8)
def _font(px: int) -> Any:
    """Return DejaVu Sans (shipped with matplotlib) at ``px`` pixels, or Pillow's default font."""
    from PIL import ImageFont

    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
        return ImageFont.truetype(path, px)
    except (ImportError, OSError):
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1024)
def text_mask(text: str, px: int) -> npt.NDArray[np.float32]:
    """Return the coverage of ``text`` at ``px`` pixels as float32 (h, w) in [0, 1] (cached).

    Every string of one size has the same height (the font's ascent + descent), so baselines line up.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = _font(px)
    left, top, right, bottom = font.getbbox(text)
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        top, bottom = 0, ascent + descent
    left = min(0, left)
    img = PILImage.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


def blit(img: Image, mask: npt.NDArray[np.float32], x: int, y: int, rgb: Sequence[int]) -> None:
    """Blend ``rgb`` into ``img`` where ``mask`` covers it, top-left corner at (x, y); clipped."""
    h, w = mask.shape
    x1, y1 = min(img.shape[1], x + w), min(img.shape[0], y + h)
    if x1 <= x or y1 <= y:
        return
    m = mask[: y1 - y, : x1 - x, None]
    region = img[y:y1, x:x1].astype(np.float32)
    img[y:y1, x:x1] = (region * (1.0 - m) + np.asarray(rgb, dtype=np.float32) * m + 0.5).astype(np.uint8)


def _fill(img: Image, x0: int, y0: int, x1: int, y1: int, rgb: Sequence[int]) -> None:
    x1, y1 = min(img.shape[1], x1), min(img.shape[0], y1)
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = np.asarray(rgb, dtype=np.uint8)


def draw_overlay(
    img: Image, *, names: Sequence[str], weights: npt.ArrayLike, entropy: float, caption: str = ""
) -> Tuple[int, int]:
    """Draw the gate panel (caption, one bar per expert, entropy) onto ``img`` in place.

    Args:
        img: uint8 (H, W, 3).
        names: K expert names; weights: float (K,) gate weights in [0, 1].
        entropy: gate entropy, natural log; its bar is full at ln K.
    Returns:
        (width, height) of the panel in pixels, drawn from the top-left corner.
    """
    w = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)), 0.0, 1.0)
    scale = max(0.75, img.shape[0] / 480.0)
    px, row, pad, bar_w = round(13 * scale), round(19 * scale), round(6 * scale), round(110 * scale)
    labels = list(names) + ["entropy"]
    label_w = max(text_mask(s, px).shape[1] for s in labels)
    value_w = text_mask("0.000", px).shape[1]
    panel_w = max(
        pad + label_w + pad + bar_w + pad + value_w + pad,
        2 * pad + (text_mask(caption, px).shape[1] if caption else 0),
    )
    panel_h = 2 * pad + row * (len(labels) + (1 if caption else 0))
    y1, x1 = min(img.shape[0], panel_h), min(img.shape[1], panel_w)
    img[:y1, :x1] = (img[:y1, :x1].astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken the panel
    y = pad
    if caption:
        mask = text_mask(caption, px)
        blit(img, mask, pad, y + (row - mask.shape[0]) // 2, (255, 255, 255))
        y += row
    max_entropy = math.log(max(2, len(names)))
    values = list(w) + [float(entropy) / max_entropy]
    for k, label in enumerate(labels):
        color = GATE_COLORS[k % len(GATE_COLORS)] if k < len(names) else (235, 235, 235)
        text_y = y + (row - text_mask(label, px).shape[0]) // 2
        blit(img, text_mask(label, px), pad, text_y, (230, 230, 230))
        bx, by0, by1 = pad + label_w + pad, y + row // 5, y + row - row // 5
        _fill(img, bx, by0, bx + bar_w, by1, (70, 70, 70))
        frac = float(np.clip(np.nan_to_num(values[k]), 0.0, 1.0))
        _fill(img, bx, by0, bx + int(round(frac * bar_w)), by1, color)
        value = float(w[k]) if k < len(names) else float(entropy)
        blit(img, text_mask(f"{value:.3f}", px), bx + bar_w + pad, text_y, (230, 230, 230))
        y += row
    return panel_w, panel_h
