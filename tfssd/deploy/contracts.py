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

Every image is checked with ``image_check.inspect_image`` (decoded fully, formats TensorFlow
decodes, a pixel limit) before the model sees it. No TensorFlow and no HTTP library here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json

import numpy as np
from PIL import Image

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


def _load_json(body: bytes, what: str):
    if not body.strip():
        raise RequestError(400, f"{what}: empty; expected JSON")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"{what}: malformed JSON ({e})") from None
    except RecursionError:
        raise RequestError(400, f"{what}: JSON nested too deeply") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise RequestError(400, f"{what}: unusable JSON ({e})") from None


def _preview(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _instance_bytes(instance, name: str) -> bytes:
    """{"b64": s} or TF Serving's named form {"images": {"b64": s}} -> the decoded bytes."""
    if isinstance(instance, dict) and set(instance) == {"images"}:
        instance = instance["images"]
    if not (isinstance(instance, dict) and isinstance(instance.get("b64"), str)):
        raise RequestError(400, f"{name}: expected {INSTANCE}, got {_preview(instance)}")
    try:
        return base64.b64decode("".join(instance["b64"].split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"{name}.b64: not valid base64 ({e})") from None


def _check_count(count: int, max_images: int) -> None:
    if max_images and count > max_images:
        raise RequestError(413, f"{count} images in one request, over the limit of {max_images} "
                                "(--max_images_per_request); send them in several requests")


def _instances(document, key: str, max_images: int) -> Images:
    instances = document.get(key) if isinstance(document, dict) else None
    if isinstance(instances, dict) and set(instances) == {"images"}:  # {"inputs": {"images": []}}
        instances = instances["images"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, f'expected a JSON object {{"{key}": [{INSTANCE}, ...]}} with at '
                                f"least one image, got {_preview(document)}")
    _check_count(len(instances), max_images)
    return [(f"{key}[{n}]", _instance_bytes(item, f"{key}[{n}]"))
            for n, item in enumerate(instances)]


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


def parse_invocation(content_type: str, body: bytes, max_pixels: int,
                     max_images: int = 0) -> tuple[Invocation, Images]:
    """A /invocations body -> (its Invocation, checked (name, image bytes) pairs).

    ``max_images`` (0: no limit) refuses (413) a body of more images, before any is decoded.
    """
    if content_type in IMAGE_TYPES:
        images = [("request body", body)]
    elif content_type == JSON_TYPE:
        images = _instances(_load_json(body, "request body"), "instances", max_images)
    else:
        lines = [(n, line) for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
        if not lines:
            raise RequestError(400, f"request body: empty; expected one {INSTANCE} a line")
        _check_count(len(lines), max_images)
        images = [(f"line {n}", _instance_bytes(_load_json(line, f"line {n}"), f"line {n}"))
                  for n, line in lines]
    return Invocation(content_type, _check_images(images, max_pixels)), images


def parse_predict(body: bytes, max_pixels: int, max_images: int = 0) -> tuple[str, Images]:
    """A TF Serving predict body -> ("instances" or "inputs", checked images)."""
    document = _load_json(body, "request body")
    if isinstance(document, dict):
        signature = document.get("signature_name", SIGNATURE)
        if signature != SIGNATURE:
            raise RequestError(400, f"signature_name {signature!r} is not served; this server "
                                    f"serves {SIGNATURE!r} (encoded images)")
    key = "inputs" if isinstance(document, dict) and "inputs" in document else "instances"
    images = _instances(document, key, max_images)
    _check_images(images, max_pixels)
    return key, images


def predict_response(detections: list[dict[str, np.ndarray]], key: str) -> str:
    """The TF Serving predict response body as JSON text."""
    return json.dumps(to_tf_serving(detections, key))

