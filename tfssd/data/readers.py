"""The registry of source-format readers: one per format, each from named options to items.

``READERS[name].read(options)`` returns a ``Source``: the ``SourceImage`` items, the class names
the format provides (or None) and notes for the summary. Every reader raises a
``SourceDataError`` (sources.py) for bad data, ``ReaderOptionError`` for missing options.
Options carry the names of tfssd-convert's flags (``voc_dir``, ``images_dir``, ...).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from tfssd.data import coco, mxnet_formats, sagemaker_formats, voc, yolo
from tfssd.data.sources import ReaderOptionError, SourceImage


@dataclasses.dataclass(frozen=True)
class Source:
    """What a reader found."""

    items: list[SourceImage]
    class_names: list[str] | None  # as the format provides them; None: from the items
    notes: tuple[str, ...] = ()  # lines for the conversion summary


@dataclasses.dataclass(frozen=True)
class Reader:
    """One source format."""

    name: str
    help: str
    read: Callable[[Mapping[str, Any]], Source]


def _need(fmt: str, options: Mapping[str, Any], *names: str) -> None:
    missing = [f"--{n}" for n in names if not options.get(n)]
    if missing:
        raise ReaderOptionError(f"--format={fmt} needs {' and '.join(missing)}")
    for name in names:
        if not os.path.exists(options[name]):
            raise ReaderOptionError(f"--{name}={options[name]}: no such file or directory")


def _voc(options: Mapping[str, Any]) -> Source:
    o = dict(options)
    if o.get("voc_dir"):
        o["annotations_dir"] = o.get("annotations_dir") or os.path.join(o["voc_dir"],
                                                                        "Annotations")
        o["images_dir"] = o.get("images_dir") or os.path.join(o["voc_dir"], "JPEGImages")
        if o.get("split"):
            o["ids_file"] = o.get("ids_file") or os.path.join(o["voc_dir"], "ImageSets", "Main",
                                                              o["split"] + ".txt")
    _need("voc", o, "annotations_dir", "images_dir", *(["ids_file"] if o.get("ids_file") else []))
    ids = voc.read_ids(o["ids_file"]) if o.get("ids_file") else None
    return Source(voc.read_voc(o["annotations_dir"], o["images_dir"], ids), None)


def _coco(options: Mapping[str, Any]) -> Source:
    _need("coco", options, "coco_json", "images_dir")
    items, names, crowd = coco.read_coco(options["coco_json"], options["images_dir"])
    return Source(items, names, (f"iscrowd boxes left out of the training targets: {crowd}",))


def _sagemaker_json(options: Mapping[str, Any]) -> Source:
    _need("sagemaker_json", options, "images_dir", "annotations_dir")
    return Source(*sagemaker_formats.read_image_json(options["images_dir"],
                                                     options["annotations_dir"]))


def _manifest(options: Mapping[str, Any]) -> Source:
    _need("manifest", options, "manifest", "images_root")
    return Source(*sagemaker_formats.read_manifest(options["manifest"], options["images_root"],
                                                   options.get("manifest_attribute")))


def _lst(options: Mapping[str, Any]) -> Source:
    _need("lst", options, "lst", "images_root")
    return Source(mxnet_formats.read_lst(options["lst"], options["images_root"]), None)


def _recordio(options: Mapping[str, Any]) -> Source:
    _need("recordio", options, "rec")
    return Source(mxnet_formats.read_rec(options["rec"]), None)


def _yolo(options: Mapping[str, Any]) -> Source:
    _need("yolo", options, "images_dir")
    labels_dir = options.get("labels_dir") or yolo.default_labels_dir(options["images_dir"])
    if labels_dir is None:
        raise ReaderOptionError(f"--format=yolo needs --labels_dir: --images_dir="
                                f"{options['images_dir']} has no 'images' folder to replace with "
                                "'labels'")
    _need("yolo", {"labels_dir": labels_dir}, "labels_dir")
    if options.get("class_names"):
        names = list(options["class_names"])
    elif options.get("data_yaml"):
        _need("yolo", options, "data_yaml")
        names = yolo.read_data_yaml(options["data_yaml"])
    else:
        raise ReaderOptionError("--format=yolo needs --data_yaml or --class_names: YOLO label "
                                "files hold only class ids")
    return Source(yolo.read_yolo(options["images_dir"], labels_dir, num_classes=len(names)),
                  names)


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("voc", "Pascal VOC XML: --voc_dir [--split], or --annotations_dir and --images_dir "
           "[--ids_file]", _voc),
    Reader("coco", "COCO instances JSON: --coco_json and --images_dir", _coco),
    Reader("sagemaker_json", "SageMaker images with one JSON each: --images_dir and "
           "--annotations_dir", _sagemaker_json),
    Reader("manifest", "SageMaker augmented manifest (JSON Lines): --manifest and --images_root "
           "[--manifest_attribute]", _manifest),
    Reader("lst", "MXNet im2rec .lst: --lst and --images_root", _lst),
    Reader("recordio", "MXNet RecordIO .rec: --rec", _recordio),
    Reader("yolo", "YOLO (Ultralytics) labels: --images_dir, --data_yaml or --class_names "
           "[--labels_dir]", _yolo),
)}
FORMATS = tuple(READERS)


def read_source(fmt: str, options: Mapping[str, Any]) -> Source:
    """The items of format ``fmt`` that ``options`` point at (see READERS)."""
    if fmt not in READERS:
        raise ReaderOptionError(f"--format={fmt}: expected one of {', '.join(FORMATS)}")
    return READERS[fmt].read(options)
