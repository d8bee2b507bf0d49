"""One tiny dataset written in every input format, each as its own tools write it.

Image sides are powers of two and corners whole pixels, so every format's coordinates
(1-based VOC corners, COCO xywh, SageMaker left/top/width/height, normalised .lst and RecordIO
floats) normalise to identical float32 values: the converted records must be identical.
"""

import dataclasses
import io
import json
import os
import struct

import numpy as np
from PIL import Image

MAGIC = 0xCED7230A
CLASS_NAMES = ["cat", "dog"]
COCO_IDS = [3, 7]  # COCO category ids have gaps


@dataclasses.dataclass
class Box:
    class_id: int
    x0: int
    y0: int
    x1: int
    y1: int


@dataclasses.dataclass
class Picture:
    file: str
    width: int
    height: int
    boxes: list
    data: bytes = b""


def _jpeg(width, height, seed, trailing=b""):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    if trailing:  # bytes after the JPEG end marker, 4-aligned: decoders ignore them
        data += b"\0" * (-len(data) % 4) + trailing
    return data


def tiny_dataset(images_dir):
    """Three images (one without objects) written to ``images_dir``; returns their Pictures."""
    os.makedirs(images_dir, exist_ok=True)
    pictures = [
        # RecordIO's magic inside the data forces a multi-part record.
        Picture("img0.jpg", 64, 32, [Box(0, 8, 4, 40, 28), Box(1, 32, 0, 64, 16)],
                _jpeg(64, 32, 0, struct.pack("<I", MAGIC) + b"tail")),
        Picture("img1.jpg", 128, 64, [Box(1, 0, 0, 16, 8)], _jpeg(128, 64, 1)),
        Picture("img2.jpg", 32, 32, [], _jpeg(32, 32, 2)),
    ]
    for picture in pictures:
        with open(os.path.join(images_dir, picture.file), "wb") as f:
            f.write(picture.data)
    return pictures


def write_voc(pictures, root):
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    for p in pictures:
        objects = "".join(
            f"<object><name>{CLASS_NAMES[b.class_id]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{b.x0 + 1}</xmin><ymin>{b.y0 + 1}</ymin><xmax>{b.x1}</xmax>"
            f"<ymax>{b.y1}</ymax></bndbox></object>" for b in p.boxes)
        xml = (f"<annotation><filename>{p.file}</filename><size><width>{p.width}</width>"
               f"<height>{p.height}</height><depth>3</depth></size>{objects}</annotation>")
        stem = os.path.splitext(p.file)[0]
        with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
            f.write(xml)


def write_coco(pictures, path):
    images, annotations = [], []
    for image_id, p in enumerate(pictures, start=1):
        images.append({"id": image_id, "file_name": p.file, "width": p.width,
                       "height": p.height})
        for b in p.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": COCO_IDS[b.class_id], "iscrowd": 0,
                                "bbox": [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0],
                                "area": (b.x1 - b.x0) * (b.y1 - b.y0)})
    categories = [{"id": i, "name": n} for i, n in zip(COCO_IDS, CLASS_NAMES)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _sagemaker_boxes(p):
    return {"image_size": [{"width": p.width, "height": p.height, "depth": 3}],
            "annotations": [{"class_id": b.class_id, "left": b.x0, "top": b.y0,
                             "width": b.x1 - b.x0, "height": b.y1 - b.y0} for b in p.boxes]}


def write_sagemaker_json(pictures, annotations_dir):
    os.makedirs(annotations_dir, exist_ok=True)
    categories = [{"class_id": i, "name": n} for i, n in enumerate(CLASS_NAMES)]
    for p in pictures:
        stem = os.path.splitext(p.file)[0]
        with open(os.path.join(annotations_dir, stem + ".json"), "w") as f:
            json.dump({"file": p.file, **_sagemaker_boxes(p), "categories": categories}, f)


def write_manifest(pictures, path, attribute="bounding-box"):
    with open(path, "w") as f:
        for p in pictures:
            line = {"source-ref": f"s3://my-bucket/images/{p.file}", attribute: _sagemaker_boxes(p),
                    f"{attribute}-metadata": {
                        "class-map": {str(i): n for i, n in enumerate(CLASS_NAMES)},
                        "type": "groundtruth/object_detection", "human-annotated": "yes"}}
            f.write(json.dumps(line) + "\n")


def _label(p):
    values = [2.0, 5.0]
    for b in p.boxes:
        values += [b.class_id, b.x0 / p.width, b.y0 / p.height, b.x1 / p.width, b.y1 / p.height]
    return values


def write_lst(pictures, path):
    with open(path, "w") as f:
        for index, p in enumerate(pictures):
            f.write("\t".join([str(index)] + [repr(float(v)) for v in _label(p)] + [p.file]) + "\n")


def write_record(stream, data):
    """``data`` as one dmlc RecordIO record: split at 4-aligned occurrences of the magic, which
    is then dropped (continuation flags 1 first, 2 middle, 3 last; 0 for a single part)."""
    magic = struct.pack("<I", MAGIC)
    parts, start = [], 0
    for i in range(0, len(data) - len(data) % 4, 4):
        if data[i:i + 4] == magic:
            parts.append(data[start:i])
            start = i + 4
    parts.append(data[start:])
    flags = [0] if len(parts) == 1 else [1] + [2] * (len(parts) - 2) + [3]
    for flag, part in zip(flags, parts):
        stream.write(struct.pack("<II", MAGIC, (flag << 29) | len(part)))
        stream.write(part + b"\0" * (-len(part) % 4))


def pack_image_record(label, image_id, image):
    """An MXNet image record as im2rec packs a detection label: the IRHeader (uint32 flag =
    label length, float32 0, uint64 id, uint64 0), the float32 label, the image bytes."""
    label = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", len(label), 0.0, image_id, 0) + label.tobytes() + image


def write_rec(pictures, path):
    """As im2rec packs detection lists."""
    with open(path, "wb") as f:
        for index, p in enumerate(pictures):
            write_record(f, pack_image_record(_label(p), index, p.data))


def write_yolo(pictures, root):
    """Ultralytics' layout: root/images/, root/labels/ (class cx cy w h) and root/data.yaml."""
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for p in pictures:
        with open(os.path.join(root, "images", p.file), "wb") as f:
            f.write(p.data)
        lines = [" ".join([str(b.class_id)] + [repr(v) for v in (
            (b.x0 + b.x1) / 2 / p.width, (b.y0 + b.y1) / 2 / p.height,
            (b.x1 - b.x0) / p.width, (b.y1 - b.y0) / p.height)]) for b in p.boxes]
        stem = os.path.splitext(p.file)[0]
        with open(os.path.join(root, "labels", stem + ".txt"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write("path: .\ntrain: images\nval: images\nnames:\n")
        f.write("".join(f"  - {name}\n" for name in CLASS_NAMES))
