"""Drawing boxes with class names and scores on images, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
            (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
            (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))


def class_color(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[int(class_id) % len(_PALETTE)]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               scores: np.ndarray | None = None, class_names: Sequence[str] | None = None,
               width: int = 2) -> np.ndarray:
    """Draws labelled boxes.

    Args:
      image: uint8 (or float in [0, 255]) [H, W, 3], RGB.
      boxes: float [N, 4], normalised yxyx.
      classes: int [N], class ids from 0.
      scores: optional float [N], shown after the class name.
      class_names: names by class id; ids are shown where missing.
      width: line width in pixels.

    Returns:
      uint8 [H, W, 3], a copy with the boxes drawn.
    """
    canvas = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    height, width_px = canvas.height, canvas.width
    for i, (box, class_id) in enumerate(zip(np.asarray(boxes), np.asarray(classes))):
        ymin, xmin, ymax, xmax = box * [height, width_px, height, width_px]
        color = class_color(class_id)
        draw.rectangle([xmin, ymin, xmax, ymax], outline=color, width=width)
        name = (class_names[class_id] if class_names is not None and 0 <= class_id < len(
            class_names) else str(int(class_id)))
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), text)
        text_top = max(0.0, ymin - (bottom - top) - 2)
        draw.rectangle([xmin, text_top, xmin + right - left + 4, text_top + bottom - top + 2],
                       fill=color)
        draw.text((xmin + 2, text_top), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def grid(images: Sequence[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Tiles uint8 [H, W, 3] images (sizes may differ) into one uint8 image."""
    rows = -(-len(images) // columns)
    cell_h = max(i.shape[0] for i in images)
    cell_w = max(i.shape[1] for i in images)
    out = np.full((rows * (cell_h + pad) + pad, columns * (cell_w + pad) + pad, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        out[y:y + image.shape[0], x:x + image.shape[1]] = image
    return out


def save_png(image: np.ndarray, path: str) -> None:
    Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
