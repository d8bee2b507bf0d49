"""What a set of TFRecords holds, for a person to check before spending GPU hours on it."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from tfssd.data import schema
from tfssd.ops import drawing as visualization
from tfssd.ops.image_ops import decode_image


@dataclasses.dataclass
class DatasetReport:
    records: int = 0
    images_without_objects: int = 0
    difficult_objects: int = 0
    objects_per_class: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    objects_per_image: list[int] = dataclasses.field(default_factory=list)
    box_sides: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (h, w)
    image_sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (h, w)
    max_label_width: int = schema.HEADER_WIDTH
    widest_record: str = ""
    undecodable: list[str] = dataclasses.field(default_factory=list)
    samples: list[np.ndarray] = dataclasses.field(default_factory=list)

    def format(self, class_names: list[str] | None = None, image_shape: int = 300) -> str:
        lines = [f"records: {self.records}",
                 f"images without objects: {self.images_without_objects}",
                 f"objects: {sum(self.objects_per_class.values())} "
                 f"({self.difficult_objects} difficult)"]
        if self.objects_per_image:
            counts = np.array(self.objects_per_image)
            lines.append(f"objects per image: min {counts.min()}, mean {counts.mean():.2f}, "
                         f"max {counts.max()}")
        lines.append(f"largest label width needed: {self.max_label_width} "
                     f"({self.widest_record}); label_width must be at least this")
        if self.image_sizes:
            sizes = np.array(self.image_sizes)
            lines.append(f"image sizes (h x w): min {sizes[:, 0].min()}x{sizes[:, 1].min()}, "
                         f"median {int(np.median(sizes[:, 0]))}x{int(np.median(sizes[:, 1]))}, "
                         f"max {sizes[:, 0].max()}x{sizes[:, 1].max()}")
        if self.box_sides:
            sides = np.sqrt(np.prod(np.array(self.box_sides), axis=1)) * image_shape
            edges = [0, 8, 16, 32, 64, 128, 256, np.inf]
            histogram, _ = np.histogram(sides, edges)
            lines.append(f"box size at image_shape={image_shape} (sqrt of area, pixels): "
                         + ", ".join(f"{a:g}-{b:g}: {n}" for a, b, n in
                                     zip(edges, edges[1:], histogram)))
        lines.append("objects per class:")
        ids = sorted(set(self.objects_per_class) | set(range(len(class_names or []))))
        for class_id in ids:
            name = class_names[class_id] if class_names and class_id < len(class_names) else ""
            lines.append(f"  {class_id:3d} {name:20s} {self.objects_per_class.get(class_id, 0)}")
        if self.undecodable:
            lines.append("records whose image does not decode:")
            lines.extend(f"  {entry}" for entry in self.undecodable)
        return "\n".join(lines)


def inspect_records(files: tuple[str, ...], input_format: str = "tfssd", decode: bool = False,
                    samples: int = 0, class_names: list[str] | None = None) -> DatasetReport:
    """Reads every record of ``files``; decodes images when ``decode`` (slower, finds bad ones).

    ``samples`` images (the first ones) are kept with their boxes drawn, for a grid.
    """
    parse = schema.PARSERS[input_format]
    report = DatasetReport()
    for path in files:
        for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
            example = parse(serialized)
            label = example["label"].numpy()
            boxes, classes, difficult = (t.numpy() for t in schema.label_to_objects(label))
            report.records += 1
            report.objects_per_class.update(classes.tolist())
            report.objects_per_image.append(len(classes))
            report.images_without_objects += len(classes) == 0
            report.difficult_objects += int(difficult.sum())
            report.box_sides.extend(zip(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
            name = example["filename"].numpy().decode(errors="replace")
            width_needed = schema.label_width_needed(len(classes))
            if width_needed > report.max_label_width:
                report.max_label_width = width_needed
                report.widest_record = f"{path} #{index} {name}"
            if decode or len(report.samples) < samples:
                try:
                    image = decode_image(example["image_bytes"]).numpy()
                except tf.errors.InvalidArgumentError as e:
                    report.undecodable.append(f"{path} record {index} (image {name}): "
                                              f"{e.message.splitlines()[0]}")
                    continue
                report.image_sizes.append(image.shape[:2])
                if len(report.samples) < samples:
                    report.samples.append(visualization.draw_boxes(
                        image, boxes, classes, class_names=class_names))
    return report


def sample_grid(report: DatasetReport, side: int = 256, columns: int = 4) -> np.ndarray:
    """The kept sample images, each scaled to fit ``side`` pixels, tiled into one image."""
    tiles = []
    for image in report.samples:
        scale = side / max(image.shape[:2])
        size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        tiles.append(tf.cast(tf.image.resize(image, size), tf.uint8).numpy())
    return visualization.grid(tiles, columns)
