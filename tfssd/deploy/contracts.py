"""The request and response bodies of the two serving contracts: SageMaker's and TF Serving's.

SageMaker (``POST /invocations``): a body that is one image (``image/jpeg``, ``image/png``,
``application/x-image``) is answered ``{"prediction": [[class_id, score, xmin, ymin, xmax, ymax],
...]}``, corners normalised to the image, as SageMaker's Object Detection algorithm answers;
``application/json`` ``{"instances": [{"b64": ...}, ...]}`` (several images) is answered
``{"predictions": [{"prediction": ...}, ...]}``, one object per image in order;
``application/jsonlines``, one ``{"b64": ...}`` a line (batch transform), is answered one
``{"prediction": ...}`` a line. With ``Accept: application/json;annotation=1`` each image's
answer is the algorithm's other format instead, in pixels: ``{"image_size": [{"width", "height",
"depth"}], "annotations": [{"class_id", "score", "left", "top", "width", "height"}, ...]}``.

TF Serving (``POST /v1/models/NAME:predict``): ``{"instances": [{"b64": ...}, ...]}`` (an
instance may also be ``{"images": {"b64": ...}}``, the input named) is answered in its row
format, ``{"predictions": [{"detection_boxes": ..., "detection_scores": ..., "detection_classes":
..., "num_detections": ...}, ...]}``; its columnar ``{"inputs": [...]}`` is answered
``{"outputs": {...}}``. ``signature_name``, if given, must be ``serving_default``.

A JSON body is walked, never loaded whole: its images are counted as they are met and
base64-decoded one by one (see ``JSONWalker``), so that what a body expands to is bounded by
the limits, not by how many small objects it holds. Every image is checked with
``image_check.inspect_image`` (decoded fully, formats TensorFlow decodes, a pixel limit) before
the model sees it. No TensorFlow and no HTTP library here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import numpy as np
from PIL import Image

from tfssd.deploy.json_walk import MAX_KEY_BYTES, JSONBodyError, JSONWalker
from tfssd.ops.image_check import SERVED_FORMATS, ImageError, ImageInfo, inspect_image

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
INVOCATION_TYPES = (*IMAGE_TYPES, JSON_TYPE, *JSONLINES_TYPES)
SIGNATURE = "serving_default"
INSTANCE = '{"b64": "<base64 JPEG or PNG>"}'
Images = list[tuple[str, bytes]]  # (a name for messages: "request body", "instances[2]", bytes)
# Accept values /invocations answers (parameters aside); annotation=1 picks the pixel format.
ACCEPTED = ("*/*", "application/*", JSON_TYPE, *JSONLINES_TYPES)


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a message naming what was wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def to_sagemaker(detections: dict[str, np.ndarray], min_score: float = 0.0) -> dict:
    """One image's serving outputs -> {"prediction": [[class_id, score, xmin, ymin, xmax, ymax]]}.

    Args:
      detections: detection_boxes float32 [N, 4] normalised yxyx, detection_scores [N],
        detection_classes [N] (ids from 0), num_detections scalar: one image's slice of the
        SavedModel's outputs.
      min_score: rows scoring below it are left out.
    """
    count = int(detections["num_detections"])
    rows = zip(detections["detection_classes"][:count].tolist(),
               detections["detection_scores"][:count].tolist(),
               detections["detection_boxes"][:count].tolist())
    return {"prediction": [[cls, score, xmin, ymin, xmax, ymax]
                           for cls, score, (ymin, xmin, ymax, xmax) in rows if score >= min_score]}


def to_annotations(detections: dict[str, np.ndarray], image: ImageInfo,
                   min_score: float = 0.0) -> dict:
    """One image's serving outputs -> the algorithm's ``annotation=1`` response, in pixels.

    Args:
      detections: as for ``to_sagemaker`` (boxes normalised yxyx).
      image: the request's image (its width, height and mode).

    Returns:
      {"image_size": [{"width", "height", "depth"}], "annotations": [{"class_id", "score",
      "left", "top", "width", "height"}, ...]}: integer pixels, origin top left, as the
      algorithm's JSON annotation files are.
    """
    width, height = image.width, image.height
    annotations = []
    for class_id, score, xmin, ymin, xmax, ymax in to_sagemaker(detections, min_score)[
            "prediction"]:
        left, top = round(xmin * width), round(ymin * height)
        annotations.append({"class_id": int(class_id), "score": score, "left": left, "top": top,
                            "width": round(xmax * width) - left,
                            "height": round(ymax * height) - top})
    return {"image_size": [{"width": width, "height": height,
                            "depth": Image.getmodebands(image.mode)}],
            "annotations": annotations}


def to_tf_serving(detections: list[dict[str, np.ndarray]], key: str) -> dict:
    """Per-image serving outputs -> TF Serving's row ("instances") or columnar ("inputs") body."""
    rows = [{name: value.tolist() for name, value in d.items()} for d in detections]
    if key == "inputs":
        return {"outputs": {name: [row[name] for row in rows] for name in rows[0]}}
    return {"predictions": rows}


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What a parsed /invocations request needs for its answer: its content type and images."""

    content_type: str
    images: list[ImageInfo]


def wants_annotations(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the ``annotation=1`` format.

    Raises:
      RequestError: 406 when it names no type /invocations answers.
    """
    annotation = False
    for part in accept.split(",") if accept.strip() else []:
        media, *parameters = (p.strip().lower() for p in part.split(";"))
        if media not in ACCEPTED:
            continue
        values = dict(p.partition("=")[::2] for p in parameters)
        annotation = annotation or values.get("annotation", "").strip() == "1"
        break
    else:
        if accept.strip():
            raise RequestError(406, f"Accept {accept!r}: /invocations answers application/json "
                                    "(add ;annotation=1 for the pixel format) or "
                                    "application/jsonlines")
    return annotation


def invocation_response(invocation: Invocation, detections: list[dict[str, np.ndarray]],
                        annotations: bool = False) -> str:
    """The /invocations response body (JSON, or JSON Lines for a JSON Lines request), in the
    ``prediction`` format, or the ``annotation=1`` one when ``annotations``."""
    if annotations:
        responses = [to_annotations(d, image) for d, image in zip(detections, invocation.images)]
    else:
        responses = [to_sagemaker(d) for d in detections]
    if invocation.content_type in IMAGE_TYPES:
        return json.dumps(responses[0])
    if invocation.content_type == JSON_TYPE:
        return json.dumps({"predictions": responses})
    return "".join(json.dumps(response) + "\n" for response in responses)


def _image_of_instance(walker: JSONWalker, name: str, depth: int) -> bytes:
    """Past one instance, {"b64": s} or TF Serving's named {"images": {"b64": s}}: its bytes."""
    first = walker.peek()
    start = walker.pos
    keys, own, named = set(), None, None  # spans of the b64 strings
    if first == b"{":
        for key in walker.members(depth):
            keys.add(key)
            if key == "b64" and walker.peek() == b'"':
                own = walker.string_span()
            elif key == "images" and walker.peek() == b"{":
                for inner in walker.members(depth + 1):
                    if inner == "b64" and walker.peek() == b'"':
                        named = walker.string_span()
                    else:
                        walker.skip(depth + 1)
            else:
                if key == "b64":
                    own = None  # the last of duplicate keys counts, as for json.loads
                walker.skip(depth)
    else:
        walker.skip(depth)  # checked, so that a body cut short reads as malformed
    span = named if keys == {"images"} else own
    if span is None:
        raise RequestError(400, f"{name}: expected {INSTANCE}, got "
                                f"{walker.preview(start, walker.pos)}")
    return walker.base64_bytes(*span, name)


def _check_count(count: int, max_images: int) -> None:
    if max_images and count > max_images:
        raise RequestError(413, f"over {max_images} images in one request, the limit "
                                "(--max_images_per_request); send them in several requests")


def _json_images(body, keys: tuple[str, ...], max_images: int) -> tuple[str, Images, object]:
    """A JSON body {key: [instance, ...], ...} walked once.

    Returns: (the key used: the last of ``keys`` the object has; its images; its
    signature_name, None if absent). Raises RequestError 413 at the first image over
    ``max_images``, 400 when the body is not such an object.
    """
    walker = JSONWalker(body, "request body")
    first = walker.peek()
    if not first:
        raise RequestError(400, "request body: empty; expected JSON")
    found: dict[str, Images] = {}
    signature = None
    for key in walker.members(1) if first == b"{" else ():
        if key in keys:
            images = found[key] = []
            if walker.peek() == b"[":
                _walk_instances(walker, key, images, max_images, 2)
            elif walker.peek() == b"{":  # {"inputs": {"images": [...]}}, TF Serving's named form
                for inner in walker.members(2):
                    if inner == "images" and walker.peek() == b"[":
                        _walk_instances(walker, key, images, max_images, 3)
                    else:
                        walker.skip(2)
            else:
                walker.skip(1)
        elif key == "signature_name":
            start = walker.pos
            walker.skip(1)
            signature = (json.loads(bytes(body[start:walker.pos]))
                         if walker.pos - start <= MAX_KEY_BYTES else walker.preview(start))
        else:
            walker.skip(1)
    key = next((k for k in reversed(keys) if k in found), keys[0])
    if not found.get(key):
        raise RequestError(400, f'expected a JSON object {{"{key}": [{INSTANCE}, ...]}} with at '
                                f"least one image, got {walker.preview(0)}")
    walker.finish()
    return key, found[key], signature


def _walk_instances(walker: JSONWalker, key: str, images: Images, max_images: int,
                    depth: int) -> None:
    for n in walker.elements(depth):
        _check_count(n + 1, max_images)
        images.append((f"{key}[{n}]", _image_of_instance(walker, f"{key}[{n}]", depth + 1)))


_LINE = re.compile(rb"[^ \t\r\n][^\n]*")  # a line's text from its first character on


def _json_lines_images(body, max_images: int) -> Images:
    """One instance a line; blank lines skipped. The lines are counted first (413 past
    ``max_images``), then each is walked, its image decoded, before the next."""
    count = sum(1 for _ in itertools.islice(_LINE.finditer(body), max_images + 1))
    if not count:
        raise RequestError(400, f"request body: empty; expected one {INSTANCE} a line")
    _check_count(count, max_images)
    images, line, done = [], 1, 0
    for match in _LINE.finditer(body):
        line += body.count(b"\n", done, match.start())
        done = match.start()
        name = f"line {line}"
        walker = JSONWalker(body, name, match.start(), match.end())
        images.append((name, _image_of_instance(walker, name, 1)))
        walker.finish()
    return images


def _check_images(images: Images, max_pixels: int) -> list[ImageInfo]:
    """Refuses (400) the first image that is empty, not an image, truncated or too large;
    returns what each holds."""
    infos = []
    for name, data in images:
        try:
            infos.append(inspect_image(data, name, max_pixels, decode=True,
                                       formats=SERVED_FORMATS))
        except ImageError as e:
            raise RequestError(400, str(e)) from None
    return infos


def parse_invocation(content_type: str, body, max_pixels: int,
                     max_images: int = 0) -> tuple[Invocation, Images]:
    """A /invocations body (bytes or bytearray) -> (its Invocation, checked (name, image bytes)
    pairs).

    ``max_images`` (0: no limit) refuses (413) a body of more images as soon as its count
    passes the limit, before any image is checked and before the rest of the body is parsed.
    """
    try:
        if content_type in IMAGE_TYPES:
            images = [("request body", bytes(body))]
        elif content_type == JSON_TYPE:
            images = _json_images(body, ("instances",), max_images)[1]
        else:
            images = _json_lines_images(body, max_images)
    except JSONBodyError as e:
        raise RequestError(400, str(e)) from None
    return Invocation(content_type, _check_images(images, max_pixels)), images


def parse_predict(body, max_pixels: int, max_images: int = 0) -> tuple[str, Images]:
    """A TF Serving predict body -> ("instances" or "inputs", checked images)."""
    try:
        key, images, signature = _json_images(body, ("instances", "inputs"), max_images)
    except JSONBodyError as e:
        raise RequestError(400, str(e)) from None
    if signature is not None and signature != SIGNATURE:
        raise RequestError(400, f"signature_name {signature!r} is not served; this server "
                                f"serves {SIGNATURE!r} (encoded images)")
    _check_images(images, max_pixels)
    return key, images


def predict_response(detections: list[dict[str, np.ndarray]], key: str) -> str:
    """The TF Serving predict response body as JSON text."""
    return json.dumps(to_tf_serving(detections, key))

