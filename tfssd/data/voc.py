"""Pascal VOC XML annotations as conversion items.

VOC corners are 1-based inclusive pixel indices: a box from pixel xmin to pixel xmax covers the
continuous span [xmin - 1, xmax]. Images come from ``<filename>`` in the images directory (or
``<id>.jpg``); sizes are taken from the images themselves, ``<size>`` only cross-checks them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from tfssd.data.sources import SourceImage, SourceObject


def read_ids(path: str) -> list[str]:
    """An image-set file (ImageSets/Main/train.txt): the first word of each non-empty line."""
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _text(element, tag: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None:
        raise ValueError(f"missing <{tag}>")
    return found.text.strip()


def read_annotation(xml_path: str, images_dir: str) -> SourceImage:
    """One VOC XML file -> a SourceImage (with ``error`` set if the file cannot be used)."""
    image_id = os.path.splitext(os.path.basename(xml_path))[0]
    try:
        root = ElementTree.parse(xml_path).getroot()
        filename = root.findtext("filename", "").strip()
        path = os.path.join(images_dir, filename) if filename else ""
        if not filename or not os.path.isfile(path):
            path = os.path.join(images_dir, image_id + ".jpg")
        size = root.find("size")
        annotated_size = None
        if size is not None:
            annotated_size = (int(float(_text(size, "width"))), int(float(_text(size, "height"))))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("an <object> without <bndbox>")
            objects.append(SourceObject(
                label=_text(obj, "name"),
                xmin=float(_text(box, "xmin")) - 1, ymin=float(_text(box, "ymin")) - 1,
                xmax=float(_text(box, "xmax")), ymax=float(_text(box, "ymax")),
                difficult=obj.findtext("difficult", "0").strip() not in ("0", "")))
    except (OSError, ElementTree.ParseError, ValueError) as e:
        return SourceImage(name=image_id, error=f"{xml_path}: {e}")
    return SourceImage(name=os.path.basename(path), path=path, objects=objects,
                       annotated_size=annotated_size)


def read_voc(annotations_dir: str, images_dir: str, ids: list[str] | None = None
             ) -> list[SourceImage]:
    """The images of a VOC-style dataset, all XML files or those listed in ``ids``."""
    if ids is None:
        ids = sorted(os.path.splitext(n)[0] for n in os.listdir(annotations_dir)
                     if n.endswith(".xml"))
    return [read_annotation(os.path.join(annotations_dir, i + ".xml"), images_dir) for i in ids]
