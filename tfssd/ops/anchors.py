"""SSD default boxes (anchors) from the feature-map sizes of the network.

SSD paper (Liu et al., 2016), Sec. 2.2 "Choosing scales and aspect ratios for default boxes",
with the scales of the authors' Caffe models: SSD300 (6 maps) uses 0.1 on conv4_3 and 0.2..0.9
linearly over the others; SSD512 (7 maps) uses 0.07 and 0.15..0.9. Centres tile each map
uniformly, ``((i + 0.5) / height, (j + 0.5) / width)``, so anchors cover the image at any input
size. Anchors are constants of the network, computed once in NumPy.
"""

from __future__ import annotations

import math

import numpy as np


def ssd_scales(num_maps: int) -> tuple[float, ...]:
    """Anchor scales (fractions of the image side) for ``num_maps`` feature maps.

    Returns ``num_maps + 1`` values: map k uses ``scales[k]`` and ``sqrt(scales[k] *
    scales[k + 1])``. Six maps give SSD300's (0.1, 0.2, 0.37, ..., 0.88, 1.05), seven SSD512's
    (0.07, 0.15, 0.30, ..., 0.90, 1.05).
    """
    if num_maps < 3:
        raise ValueError(f"SSD needs at least 3 feature maps, got {num_maps}")
    # Integer percentages, as the Caffe model scripts compute them, so the published values are
    # reproduced exactly.
    first, low, high = (10, 20, 90) if num_maps <= 6 else (7, 15, 90)
    step = (high - low) // (num_maps - 2)
    return (first / 100,) + tuple((low + i * step) / 100 for i in range(num_maps))


def ssd_aspect_ratios(num_maps: int) -> tuple[tuple[float, ...], ...]:
    """Extra aspect ratios per map: (2,) on the first and last two maps, (2, 3) elsewhere.

    Each ratio r adds two boxes (r and 1/r) to the two square ones, so maps get 4 or 6 anchors
    per location: SSD300's 4, 6, 6, 6, 4, 4 and SSD512's 4, 6, 6, 6, 6, 4, 4.
    """
    return tuple((2.0,) if k == 0 or k >= num_maps - 2 else (2.0, 3.0) for k in range(num_maps))


def num_anchors_per_location(aspect_ratios: tuple[tuple[float, ...], ...]) -> tuple[int, ...]:
    """Anchors per feature-map location: 2 square boxes plus 2 per extra ratio."""
    return tuple(2 + 2 * len(ratios) for ratios in aspect_ratios)


def generate_anchors(feature_map_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...],
                     scales: tuple[float, ...],
                     aspect_ratios: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Default boxes for every location of every feature map.

    Args:
      feature_map_sizes: (height, width) of each map, from the largest.
      scales: ``len(feature_map_sizes) + 1`` box sizes as fractions of the image side.
      aspect_ratios: extra ratios (width / height) per map.

    Returns:
      float32 [A, 4], normalised yxyx, ordered map by map, then row, column and box, which is
      the order of the heads' reshaped outputs. Boxes near the border may extend past [0, 1].
    """
    if len(scales) != len(feature_map_sizes) + 1 or len(aspect_ratios) != len(feature_map_sizes):
        raise ValueError("need one more scale than feature maps and one ratio list per map")
    per_map = []
    for k, (height, width) in enumerate(feature_map_sizes):
        size, bigger = scales[k], math.sqrt(scales[k] * scales[k + 1])
        shapes = [(size, size), (bigger, bigger)]  # (box height, box width)
        for ratio in aspect_ratios[k]:
            root = math.sqrt(ratio)
            shapes += [(size / root, size * root), (size * root, size / root)]
        shapes = np.asarray(shapes, dtype=np.float64)  # [K, 2]
        center_y = (np.arange(height) + 0.5) / height
        center_x = (np.arange(width) + 0.5) / width
        cy, cx = np.meshgrid(center_y, center_x, indexing="ij")  # [H, W]
        cy, cx = cy[:, :, None], cx[:, :, None]
        box_h, box_w = shapes[None, None, :, 0], shapes[None, None, :, 1]
        boxes = np.stack(np.broadcast_arrays(cy - box_h / 2, cx - box_w / 2,
                                             cy + box_h / 2, cx + box_w / 2), axis=-1)
        per_map.append(boxes.reshape(-1, 4))
    return np.concatenate(per_map, axis=0).astype(np.float32)


def ssd_anchors(feature_map_sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...]
                ) -> np.ndarray:
    """Anchors by SSD's rules for these feature maps: float32 [A, 4], normalised yxyx."""
    num_maps = len(feature_map_sizes)
    return generate_anchors(feature_map_sizes, ssd_scales(num_maps), ssd_aspect_ratios(num_maps))
