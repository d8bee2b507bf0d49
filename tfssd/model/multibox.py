"""MXNet's SSD conventions: MultiBoxPrior anchors and the layout of its box predictions.

MXNet's ``_contrib_MultiBoxPrior`` (src/operator/contrib/multibox_prior.cc) places, at every
location (row r, column c) of an H x W map, in this order: one box per size at the first ratio,
then one box per further ratio at the first size. Centres are ``((c + offset_x) * step_x,
(r + offset_y) * step_y)``, steps defaulting (-1) to 1 / W and 1 / H; a box of size s and ratio a
is ``s * H / W * sqrt(a)`` wide and ``s / sqrt(a)`` high. Boxes are normalised
(xmin, ymin, xmax, ymax), optionally clipped to [0, 1].

MultiBoxDetection decodes (dx, dy, dw, dh) per anchor with variances (0.1, 0.1, 0.2, 0.2): tfssd's
box coder (tfssd/ops/box_coder.py) uses the same formulas on (dy, dx, dh, dw), so an MXNet box
head becomes a tfssd head by reordering its output channels (``LOC_TO_TFSSD``).
"""

from __future__ import annotations

import math

import numpy as np

# A tfssd delta (dy, dx, dh, dw) is MXNet's (dx, dy, dw, dh) at these indices.
LOC_TO_TFSSD = (1, 0, 3, 2)
VARIANCES = (0.1, 0.1, 0.2, 0.2)


def multibox_prior(height: int, width: int, sizes, ratios, steps=(-1.0, -1.0),
                   offsets=(0.5, 0.5), clip: bool = False) -> np.ndarray:
    """MXNet's MultiBoxPrior on an H x W map: float32 [H * W * K, 4] (xmin, ymin, xmax, ymax),
    K = len(sizes) + len(ratios) - 1, ordered by row, column, then box."""
    step_y = steps[0] if steps[0] > 0 else 1.0 / height
    step_x = steps[1] if steps[1] > 0 else 1.0 / width
    shapes = []  # (half width, half height)
    first = math.sqrt(ratios[0]) if ratios else 1.0
    for size in sizes:
        shapes.append((size * height / width * first / 2, size / first / 2))
    for ratio in ratios[1:]:
        root = math.sqrt(ratio)
        shapes.append((sizes[0] * height / width * root / 2, sizes[0] / root / 2))
    shapes = np.asarray(shapes, np.float32)  # [K, 2]; MXNet computes in float32
    cy = ((np.arange(height, dtype=np.float32) + np.float32(offsets[0])) * np.float32(step_y))
    cx = ((np.arange(width, dtype=np.float32) + np.float32(offsets[1])) * np.float32(step_x))
    cy, cx = np.meshgrid(cy, cx, indexing="ij")
    cy, cx = cy[:, :, None], cx[:, :, None]
    half_w, half_h = shapes[None, None, :, 0], shapes[None, None, :, 1]
    boxes = np.stack(np.broadcast_arrays(cx - half_w, cy - half_h, cx + half_w, cy + half_h),
                     axis=-1).reshape(-1, 4)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    return boxes.astype(np.float32)


def xyxy_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """(xmin, ymin, xmax, ymax) -> tfssd's (ymin, xmin, ymax, xmax), any leading shape."""
    return np.asarray(boxes)[..., [1, 0, 3, 2]]


def loc_channels_to_tfssd(num_anchors: int) -> np.ndarray:
    """The output channels of an MXNet box head, in the order a tfssd head has them.

    MXNet's head writes anchor k's (dx, dy, dw, dh) to channels 4k..4k+3; tfssd expects
    (dy, dx, dh, dw) there. Index the MXNet head's outputs (its kernel's and bias's last axis)
    with this to get tfssd's.
    """
    return np.asarray([4 * k + i for k in range(num_anchors) for i in LOC_TO_TFSSD])
