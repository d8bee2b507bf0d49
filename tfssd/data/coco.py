"""COCO detection JSON as conversion items.

Category ids (1..90 in COCO, with gaps) map to contiguous class ids from 0 in the order of the
ids; the names go into class_map.json. ``iscrowd`` boxes mark regions of many objects and are
left out of the training targets (counted in the summary). Images without annotations are kept
as negatives unless the converter is told to drop them. Boxes are float [x, y, width, height]
in pixels.
"""

from __future__ import annotations

import collections
import json
import os

from tfssd.data.sources import SourceDataError, SourceImage, SourceObject


class COCOFormatError(SourceDataError):
    """The JSON file is not COCO detection annotations."""


def read_coco(annotations_file: str, images_dir: str) -> tuple[list[SourceImage], list[str], int]:
    """Reads a COCO instances file.

    Returns:
      (items, class_names, crowd_boxes): items in the file's image order, class names by
      contiguous id, and the number of iscrowd boxes left out.
    """
    try:
        with open(annotations_file, encoding="utf-8") as f:
            data = json.load(f)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
        annotations = data.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise COCOFormatError(f"{annotations_file}: not COCO detection annotations ({e})") from None
    class_of = {c["id"]: index for index, c in enumerate(categories)}
    names = [str(c.get("name", c["id"])) for c in categories]
    by_image = collections.defaultdict(list)
    crowd = 0
    items_errors = {}
    for annotation in annotations:
        if annotation.get("iscrowd", 0):
            crowd += 1
            continue
        try:
            x, y, width, height = (float(v) for v in annotation["bbox"])
            category = annotation["category_id"]
            label = names[class_of[category]] if category in class_of else f"category {category}"
        except (KeyError, TypeError, ValueError) as e:
            items_errors[annotation.get("image_id")] = f"annotation {annotation.get('id')}: {e!r}"
            continue
        by_image[annotation["image_id"]].append(
            SourceObject(label=label, xmin=x, ymin=y, xmax=x + width, ymax=y + height))
    items = []
    for image in images:
        size = (image.get("width"), image.get("height"))
        items.append(SourceImage(
            name=os.path.basename(image["file_name"]),
            path=os.path.join(images_dir, image["file_name"]),
            objects=by_image.get(image["id"], []),
            annotated_size=size if all(size) else None,
            error=items_errors.get(image["id"])))
    return items, names, crowd
