"""A synthetic detection dataset of coloured shapes, written as Pascal VOC files.

Used by the demo and the tests: it exercises the real converter and needs no download. Each
image holds 1 to 4 filled circles, squares or triangles of 40 to 140 pixels on a noisy
gradient background.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle")


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = np.linspace(0, 1, width)[None, :, None]
    pixels = start + (end - start) * ramp + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=color)


def _overlap(a, b) -> float:
    """Intersection of pixel boxes a and b (x0, y0, x1, y1) over the smaller one's area."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def _annotation_xml(filename: str, width: int, height: int, objects) -> str:
    parts = [f"<annotation><folder>shapes</folder><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        # VOC corners are 1-based inclusive pixels: the span [x0, x1) is xmin=x0+1, xmax=x1.
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax>"
                     f"<ymax>{y1}</ymax></bndbox></object>")
    parts.append("</annotation>\n")
    return "\n".join(parts)


def make_shapes_voc(root: str, num_train: int, num_val: int, seed: int = 0,
                    min_side: int = 240, max_side: int = 400) -> str:
    """Writes a VOC-layout dataset and returns ``root``.

    Layout: ``root/JPEGImages/*.jpg``, ``root/Annotations/*.xml`` and
    ``root/ImageSets/Main/{train,val}.txt``.
    """
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = [f"shapes_{i:05d}" for i in range(num_train + num_val)]
    for image_id in ids:
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        image = _background(rng, width, height)
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            side = int(rng.integers(40, min(140, width, height) + 1))
            for _attempt in range(20):  # keep shapes visible: little overlap with earlier ones
                x0 = int(rng.integers(0, width - side + 1))
                y0 = int(rng.integers(0, height - side + 1))
                if all(_overlap((x0, y0, x0 + side, y0 + side), box) < 0.2 for _, box in objects):
                    break
            else:
                continue
            name = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            _draw_shape(draw, name, (x0, y0, x0 + side, y0 + side), color)
            objects.append((name, (x0, y0, x0 + side, y0 + side)))
        image.save(os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=92)
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(_annotation_xml(image_id + ".jpg", width, height, objects))
    for split, split_ids in (("train", ids[:num_train]), ("val", ids[num_train:])):
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return root
