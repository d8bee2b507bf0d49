"""One interface to every trained detector: encoded images in, detections out.

``load_detector(path)`` takes an exported SavedModel (a version or its directory of versions), a
.tflite file from tfssd-export-tflite, an OpenVINO .xml from tfssd-export-openvino, or a tfssd
model directory (its best weights, run in memory through the same serving graph as the export),
and returns a ``Detector``: called with
encoded JPEG/PNG images (string [B]), it returns the TF Object Detection API's keys as NumPy arrays:
detection_boxes float32 [B, N, 4] (normalised [ymin, xmin, ymax, xmax] of each image),
detection_scores float32 [B, N], detection_classes float32 [B, N] (ids from 0),
num_detections float32 [B]. A SavedModel decodes and resizes inside its serving graph; for a
.tflite or an OpenVINO .xml the host does it (tfssd.ops.image_ops, the same decode and bilinear
resize); LiteRT runs once per image, since TFLite models take a fixed batch of 1, OpenVINO once
per batch (uint8 pixels, rounded after the resize). tfssd-serve serves any of them through the
same ``Detector`` (deploy/server.py).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from tfssd.deploy import openvino_export
from tfssd.deploy import saved_model as export
from tfssd.deploy import tflite as tflite_export
from tfssd.deploy.contracts import SIGNATURE
from tfssd.deploy.trained_ssd import load_trained_ssd
from tfssd.model.run_directory import find_run_dir
from tfssd.ops.image_ops import decode_image, resize

LITERT_MISSING = ("running a .tflite model needs LiteRT: pip install ai-edge-litert "
                  "(or tfssd[lite])")
OPENVINO_MISSING = "running an OpenVINO .xml needs openvino: pip install 'tfssd[openvino]'"
# OpenVINO's INFERENCE_PRECISION_HINT by tfssd's name. Its CPU plugin picks bfloat16 by itself
# on CPUs with bfloat16 instructions; tfssd asks for float32 unless told, so that an .xml gives
# the SavedModel's detections.
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image, best first."""

    boxes: np.ndarray  # float32 [N, 4], normalised [ymin, xmin, ymax, xmax] of the image
    scores: np.ndarray  # float32 [N], descending
    classes: np.ndarray  # int32 [N], class ids from 0
    class_names: tuple[str, ...]  # by class id

    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[c] if c < len(self.class_names) else str(c)
                for c in self.classes]


def _encoded(image) -> bytes:
    """A file path, encoded bytes, or a uint8 array [H, W, 3] RGB -> encoded image bytes."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a file path, encoded image bytes or a uint8 array "
                         f"[H, W, 3]; got {type(image).__name__} {pixels.dtype} {pixels.shape}")
    return tf.io.encode_png(pixels).numpy()


class Detector:
    """Encoded images (string [B], or a list of bytes) -> detections as NumPy arrays."""

    path: str  # what was loaded (a SavedModel version, a .tflite or .xml file, a checkpoint)
    kind: str  # "saved_model", "tflite", "openvino" or "checkpoint"
    class_names: list[str]  # by class id; empty if the model has none
    version: int = 1  # a SavedModel's numbered version directory (TF Serving's model version)

    def __call__(self, images) -> dict[str, np.ndarray]:
        """images: encoded JPEG/PNG, string [B] or a list of bytes -> the serving outputs."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """One call on a small image, so that the first request does not pay for start-up."""
        self([tf.io.encode_jpeg(tf.zeros([32, 32, 3], tf.uint8)).numpy()])

    def detect(self, images, batch_size: int = 8) -> list[Detections]:
        """Detections of each image: file paths, encoded bytes or uint8 arrays [H, W, 3] RGB.

        One image or a list of them; the result is a list, one ``Detections`` per image.
        """
        if isinstance(images, (str, bytes, bytearray, os.PathLike)) or (
                isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        encoded = [_encoded(image) for image in images]
        found: list[Detections] = []
        for start in range(0, len(encoded), batch_size):
            out = self(encoded[start:start + batch_size])
            for i, count in enumerate(out["num_detections"].astype(int)):
                found.append(Detections(
                    boxes=out["detection_boxes"][i, :count].astype(np.float32),
                    scores=out["detection_scores"][i, :count].astype(np.float32),
                    classes=out["detection_classes"][i, :count].astype(np.int32),
                    class_names=tuple(self.class_names)))
        return found


class SavedModelDetector(Detector):
    """An exported SavedModel through its ``serving_default`` signature (encoded images)."""

    kind = "saved_model"

    def __init__(self, path: str):
        self.path = export.latest_version(path)
        name = os.path.basename(os.path.normpath(self.path))
        self.version = int(name) if name.isdigit() else 1
        signatures = tf.saved_model.load(self.path).signatures
        if SIGNATURE not in signatures:
            raise ValueError(f"{self.path}: no {SIGNATURE} signature (has: "
                             f"{', '.join(sorted(signatures)) or 'none'})")
        self._serve = signatures[SIGNATURE]
        self.class_names = export.read_labels(self.path)

    def __call__(self, images) -> dict[str, np.ndarray]:
        outputs = self._serve(images=tf.convert_to_tensor(images, tf.string))
        return {key: value.numpy() for key, value in outputs.items()}


class TFLiteDetector(Detector):
    """A .tflite from tfssd-export-tflite, run by LiteRT's interpreter on the host's pixels."""

    kind = "tflite"

    def __init__(self, path: str, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError(LITERT_MISSING) from None
        self.path = path
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self._run = self._interpreter.get_signature_runner("serving_default")
        details = self._run.get_input_details()["images"]
        self.input_dtype = np.dtype(details["dtype"])  # float32, or uint8 (int8 models)
        self.image_size = int(details["shape"][1])
        self.class_names = tflite_export.read_labels(path)
        self._prepare = tf.function(lambda data: resize(decode_image(data), self.image_size))

    def prepare(self, image: bytes) -> np.ndarray:
        """Encoded image -> the model's input [1, S, S, 3]: decoded, resized, and for a uint8
        input rounded to whole pixel values."""
        pixels = self._prepare(tf.constant(image)).numpy()
        if self.input_dtype == np.uint8:
            pixels = np.clip(np.round(pixels), 0, 255)
        return pixels.astype(self.input_dtype)[None]

    def __call__(self, images) -> dict[str, np.ndarray]:
        images = tf.convert_to_tensor(images, tf.string).numpy().reshape(-1)
        if not len(images):
            raise ValueError("no images to detect on")
        per_image = [self._run(images=self.prepare(image)) for image in images]
        return {key: np.concatenate([out[key] for out in per_image]).astype(np.float32)
                for key in tflite_export.OUTPUT_KEYS}


class OpenVINODetector(Detector):
    """An OpenVINO .xml from tfssd-export-openvino, compiled for the CPU; host decodes and resizes.

    Args:
      path: the .xml (its .bin beside it).
      num_threads: OpenVINO's inference threads (None: its default, all cores).
      precision: "float32" (the SavedModel's detections) or "bfloat16" (faster where the CPU
        has bfloat16 instructions; an int8 model keeps its integer layers either way).
    """

    kind = "openvino"

    def __init__(self, path: str, num_threads: int | None = None, precision: str = "float32"):
        try:
            import openvino  # noqa: F401 (compiled on openvino_export.shared_core below)
        except ImportError:
            raise ImportError(OPENVINO_MISSING) from None
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(OPENVINO_PRECISIONS)}, "
                             f"got {precision!r}")
        self.path, self.precision = path, precision
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self._compiled = openvino_export.shared_core().compile_model(path, "CPU", config)
        self._outputs = {output.get_any_name(): output for output in self._compiled.outputs}
        self.image_size = int(self._compiled.input(0).get_partial_shape()[1].get_length())
        self.class_names = openvino_export.read_labels(path)
        self._prepare = tf.function(lambda data: tf.cast(tf.clip_by_value(tf.round(
            resize(decode_image(data), self.image_size)), 0, 255), tf.uint8))

    def __call__(self, images) -> dict[str, np.ndarray]:
        images = tf.convert_to_tensor(images, tf.string).numpy().reshape(-1)
        if not len(images):
            raise ValueError("no images to detect on")
        pixels = np.stack([self._prepare(tf.constant(image)).numpy() for image in images])
        results = self._compiled(pixels)
        return {key: np.asarray(results[self._outputs[key]], np.float32)
                for key in openvino_export.OUTPUT_KEYS}


class CheckpointDetector(Detector):
    """A tfssd model directory's best weights, through the export's serving graph, in memory."""

    kind = "checkpoint"

    def __init__(self, path: str):
        trained = load_trained_ssd(path)
        self.path = trained.source
        self.class_names = list(trained.class_names)
        self._module = export.DetectionModule(
            trained.resource, trained.anchors, trained.image_size,
            nms_threshold=trained.nms_threshold, score_threshold=trained.score_threshold,
            max_detections=trained.max_detections)

    def __call__(self, images) -> dict[str, np.ndarray]:
        outputs = self._module.detect_encoded(tf.convert_to_tensor(images, tf.string))
        return {key: value.numpy() for key, value in outputs.items()}


def load_detector(path: str, num_threads: int | None = None,
                  precision: str = "float32") -> Detector:
    """A SavedModel (version or directory of versions), a .tflite file, an OpenVINO .xml or a
    tfssd model directory, ready to call.

    Args:
      path: the model.
      num_threads: .tflite and .xml only: LiteRT's or OpenVINO's CPU threads (None: default).
      precision: .xml only: OpenVINO's inference precision, "float32" or "bfloat16".
    """
    if path.endswith(".xml"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such OpenVINO .xml file")
        return OpenVINODetector(path, num_threads, precision)
    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .tflite file")
        return TFLiteDetector(path, num_threads)
    try:
        return SavedModelDetector(path)
    except FileNotFoundError:
        if not find_run_dir(path):
            raise FileNotFoundError(f"{path}: not a SavedModel, a directory of its numbered "
                                    "versions, a .tflite or OpenVINO .xml file or a tfssd "
                                    "model directory"
                                    ) from None
    return CheckpointDetector(path)
