"""One interface to every exported detector: encoded images in, detections out.

``load_detector(path)`` takes an exported SavedModel (a version or its directory of versions) or
a .tflite file from tfssd-export-tflite, and returns a ``Detector``: called with encoded
JPEG/PNG images (string [B]), it returns the TF Object Detection API's keys as NumPy arrays:
detection_boxes float32 [B, N, 4] (normalised [ymin, xmin, ymax, xmax] of each image),
detection_scores float32 [B, N], detection_classes float32 [B, N] (ids from 0),
num_detections float32 [B]. A SavedModel decodes and resizes inside its serving graph; for a
.tflite the host does it (tfssd.ops.image_ops, the same decode and bilinear resize) and runs
LiteRT once per image, since TFLite models take a fixed batch of 1.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfssd import export, tflite_export
from tfssd.ops.image_ops import decode_image, resize

LITERT_MISSING = ("running a .tflite model needs LiteRT: pip install ai-edge-litert "
                  "(or tfssd[lite])")


class Detector:
    """Encoded images (string [B], or a list of bytes) -> detections as NumPy arrays."""

    path: str  # what was loaded (a SavedModel version, a .tflite file)
    kind: str  # "saved_model" or "tflite"
    class_names: list[str]  # by class id; empty if the model has none

    def __call__(self, images) -> dict[str, np.ndarray]:
        raise NotImplementedError


class SavedModelDetector(Detector):
    """An exported SavedModel through its ``serving_default`` signature (encoded images)."""

    kind = "saved_model"

    def __init__(self, path: str):
        self.path = export.latest_version(path)
        self._serve = tf.saved_model.load(self.path).signatures["serving_default"]
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


def load_detector(path: str, num_threads: int | None = None) -> Detector:
    """A SavedModel (version or directory of versions) or a .tflite file, ready to call.

    Args:
      path: the model.
      num_threads: .tflite only: LiteRT's CPU threads (None: its default).
    """
    if path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .tflite file")
        return TFLiteDetector(path, num_threads)
    return SavedModelDetector(path)
