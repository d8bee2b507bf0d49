"""SageMaker's own annotation formats as conversion items.

* Image + JSON: one JSON file per image (same base name) in an annotations folder:
  ``{"file": "img1.jpg", "image_size": [{"width": 500, "height": 400, "depth": 3}],
  "annotations": [{"class_id": 0, "left": 111, "top": 134, "width": 61, "height": 128}],
  "categories": [{"class_id": 0, "name": "dog"}]}`` (pixels, origin top left, ids from 0).
* Augmented manifest: JSON Lines with ``source-ref``, an attribute holding ``image_size`` and
  ``annotations`` as above, and ``<attribute>-metadata`` with the ``class-map``. The attribute
  is found from its metadata's ``type`` (``groundtruth/object_detection``) unless named.
  ``s3://bucket/key`` is resolved against a local root: ``root/key``, else ``root/<file name>``.
"""

from __future__ import annotations

import glob
import json
import os

from tfssd.data.sources import SourceDataError, SourceImage, SourceObject


class SageMakerFormatError(SourceDataError):
    """Class names that contradict each other, or a manifest without box annotations."""


def annotation_objects(annotations) -> list[SourceObject]:
    """SageMaker's ``annotations`` (class_id, left, top, width, height in pixels) -> objects."""
    objects = []
    for a in annotations:
        left, top = float(a["left"]), float(a["top"])
        objects.append(SourceObject(label=int(a["class_id"]), xmin=left, ymin=top,
                                    xmax=left + float(a["width"]), ymax=top + float(a["height"])))
    return objects


def annotated_size(image_size) -> tuple[int, int] | None:
    """SageMaker's ``image_size`` ([{"width", "height", "depth"}]) -> (width, height), or None."""
    try:
        first = image_size[0]
        return int(first["width"]), int(first["height"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def class_names(names_by_id: dict[int, str]) -> list[str]:
    """Names by id, contiguous from 0 (an id without a name is named by its number)."""
    count = max(names_by_id) + 1 if names_by_id else 0
    return [names_by_id.get(i, str(i)) for i in range(count)]


def merge_names(names_by_id: dict[int, str], new: dict[int, str], where: str) -> None:
    """Adds ``new`` names to ``names_by_id``, refusing a name that contradicts an earlier one."""
    for class_id, name in new.items():
        if names_by_id.setdefault(class_id, name) != name:
            raise SageMakerFormatError(f"{where}: class {class_id} is {name!r} here but "
                                       f"{names_by_id[class_id]!r} elsewhere")


def read_image_json(images_dir: str, annotations_dir: str) -> tuple[list[SourceImage], list[str]]:
    """The train/train_annotation (or validation) channel pair -> (items, class names by id)."""
    items, names_by_id = [], {}
    for path in sorted(glob.glob(os.path.join(annotations_dir, "*.json"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            file_name = data.get("file", stem + ".jpg")
            objects = annotation_objects(data.get("annotations", []))
            merge_names(names_by_id, {int(c["class_id"]): str(c["name"])
                                       for c in data.get("categories", [])}, path)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            items.append(SourceImage(name=stem, error=f"{path}: {e!r}"))
            continue
        items.append(SourceImage(name=os.path.basename(file_name),
                                 path=os.path.join(images_dir, file_name), objects=objects,
                                 annotated_size=annotated_size(data.get("image_size"))))
    return items, class_names(names_by_id)


def resolve_source_ref(source_ref: str, images_root: str) -> str:
    """``s3://bucket/key`` or a path -> the local file under ``images_root``."""
    key = source_ref.split("://", 1)[1].split("/", 1)[-1] if "://" in source_ref else source_ref
    candidates = [os.path.join(images_root, key.lstrip("/")),
                  os.path.join(images_root, os.path.basename(key))]
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def _find_attribute(line: dict) -> str | None:
    for key, value in line.items():
        if key.endswith("-metadata") and isinstance(value, dict) and str(
                value.get("type", "")).startswith("groundtruth/object_detection"):
            return key[:-len("-metadata")]
    return None


def read_manifest(manifest: str, images_root: str, attribute: str | None = None
                  ) -> tuple[list[SourceImage], list[str]]:
    """An augmented manifest (JSON Lines) -> (items, class names by id)."""
    items, names_by_id = [], {}
    with open(manifest, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for number, text in enumerate(lines, start=1):
        where = f"{manifest} line {number}"
        try:
            line = json.loads(text)
            key = attribute or _find_attribute(line)
            if key is None or key not in line:
                raise SageMakerFormatError("no object-detection attribute (give "
                                           "--manifest_attribute)")
            boxes = line[key]
            path = resolve_source_ref(line["source-ref"], images_root)
            class_map = line.get(f"{key}-metadata", {}).get("class-map", {})
            merge_names(names_by_id, {int(k): str(v) for k, v in class_map.items()}, where)
            items.append(SourceImage(name=os.path.basename(path), path=path,
                                     objects=annotation_objects(boxes.get("annotations", [])),
                                     annotated_size=annotated_size(boxes.get("image_size"))))
        except SageMakerFormatError as e:
            if "class" in str(e):
                raise
            items.append(SourceImage(name=f"line {number}", error=f"{where}: {e}"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            items.append(SourceImage(name=f"line {number}", error=f"{where}: {e!r}"))
    return items, class_names(names_by_id)
