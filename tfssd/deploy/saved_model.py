"""Export of a trained SSD as a SavedModel for TF Serving.

The serving graph holds everything from image bytes to detections: decoding, resizing, the
network and post-processing, so a client sends a JPEG or PNG and gets boxes back. Signatures:

  serving_default   images: string [B], encoded JPEG/PNG (any size; each resized to the input)
  serving_images    images: uint8 [B, H, W, 3], RGB

Both return the TF Object Detection API's keys: detection_boxes float32 [B, 200, 4] (normalised
[ymin, xmin, ymax, xmax] of the original image), detection_scores float32 [B, 200],
detection_classes float32 [B, 200] (class ids from 0, as in tfssd's data and SageMaker; the OD API
counts from 1), num_detections float32 [B]. The class names are an asset, assets/labels.txt.

Exports go to numbered version directories (EXPORT_DIR/1, /2, ...), as TF Serving expects; a
version appears only once completely written: it is written into a staging folder beside the
versions (``.<version>-<pid>-*``, on the same filesystem) and renamed into place, so a full disk
or a kill leaves the earlier versions as they were (a killed export's staging folder is removed
by the next export).
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfssd.model.postprocess import detect
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS
from tfssd.ops.image_ops import decode_image_within, resize

LABELS_ASSET = "labels.txt"
_STAGING = re.compile(r"^\.\d+-(\d+)-")  # .<version>-<pid>-<random>


class ExportError(RuntimeError):
    """An export could not be written; the earlier versions are as they were."""


class DetectionModule(tf.Module):
    """The serving graph: a Keras SSD model, its anchors and the post-processing settings."""

    def __init__(self, model: keras.Model, anchors: np.ndarray, image_size: int, *,
                 nms_threshold: float, score_threshold: float = 0.01, max_detections: int = 200,
                 labels_file: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self._max_pixels = max_pixels
        self.model = model
        self._anchors = np.asarray(anchors, np.float32)
        self._image_size = image_size
        self._nms = dict(nms_threshold=nms_threshold, score_threshold=score_threshold,
                         max_detections=max_detections)
        if labels_file:
            self.labels = tf.saved_model.Asset(labels_file)

    def _detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        detections = detect(self.model, images, tf.constant(self._anchors), **self._nms)
        detections["num_detections"] = tf.cast(detections["num_detections"], tf.float32)
        return detections

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def detect_encoded(self, images):
        decoded = tf.map_fn(
            lambda data: resize(decode_image_within(data, self._max_pixels), self._image_size),
            images,
            fn_output_signature=tf.TensorSpec([self._image_size, self._image_size, 3],
                                              tf.float32))
        return self._detect(decoded)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def detect_images(self, images):
        return self._detect(resize(images, self._image_size))


def next_version(export_base: str) -> int:
    """1 + the highest numbered version under ``export_base`` (1 when there is none)."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(n) for n in os.listdir(export_base) if n.isdigit()]
    return max(versions, default=0) + 1


def latest_version(path: str) -> str:
    """``path`` if it is a SavedModel, else its highest numbered version directory."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(n) for n in os.listdir(path) if n.isdigit()), reverse=True) if (
        os.path.isdir(path)) else []
    for version in versions:
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise FileNotFoundError(f"{path}: neither a SavedModel nor a directory of numbered versions")


def export_saved_model(model: keras.Model, anchors: np.ndarray, export_base: str, *,
                       image_size: int, class_names: list[str], nms_threshold: float,
                       score_threshold: float = 0.01, max_detections: int = 200,
                       version: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Writes ``model`` as ``export_base/<version>`` and returns that path.

    Args:
      model: images float32 [B, S, S, 3] RGB -> {"cls_logits", "box_deltas"}.
      anchors: float32 [A, 4], normalised yxyx.
      export_base: the directory of versions.
      image_size: S.
      class_names: names by class id, stored as assets/labels.txt.
      nms_threshold, score_threshold, max_detections: post-processing settings.
      version: default: the next free number.
      max_pixels: serving_default refuses encoded images declaring more pixels, before
        decoding them (0: no limit).
    """
    version = version or next_version(export_base)
    final = os.path.join(export_base, str(version))
    staging = None
    try:
        os.makedirs(export_base, exist_ok=True)
        _remove_abandoned_staging(export_base)
        staging = tempfile.mkdtemp(prefix=f".{version}-{os.getpid()}-", dir=export_base)
        labels = os.path.join(staging, LABELS_ASSET)
        with open(labels, "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in class_names))
        module = DetectionModule(model, anchors, image_size, nms_threshold=nms_threshold,
                                 score_threshold=score_threshold, max_detections=max_detections,
                                 labels_file=labels, max_pixels=max_pixels)
        saved = os.path.join(staging, "model")
        tf.saved_model.save(module, saved, signatures={
            "serving_default": module.detect_encoded,
            "serving_images": module.detect_images,
        })
        os.replace(saved, final)
    except (OSError, tf.errors.OpError) as e:
        raise _export_error(export_base, final, model, e) from None
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _remove_abandoned_staging(export_base: str) -> None:
    """Removes the staging folders of exports whose process is gone (killed meanwhile)."""
    for name in os.listdir(export_base):
        match = _STAGING.match(name)
        if match and not _running(int(match.group(1))):
            shutil.rmtree(os.path.join(export_base, name), ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path)
               for n in names)


def _export_error(export_base: str, final: str, model: keras.Model,
                  error: Exception) -> ExportError:
    """What a failed export of ``final`` says: the space it needed and had where that was the
    cause, and the export that stays."""
    try:
        previous = latest_version(export_base)
    except (FileNotFoundError, OSError):
        previous = None
    kept = (f"the previous export {previous} is intact" if previous else
            "there is no earlier export")
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(error, tf.errors.ResourceExhaustedError)
        or "No space left on device" in str(error))
    if not full:
        cause = [line for line in str(error).splitlines() if line.strip()] or [repr(error)]
        return ExportError(f"Cannot export to {final}: {cause[0]}; {kept}.")
    needed = (_tree_bytes(previous) if previous else
              sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size for w in model.weights))
    free = shutil.disk_usage(export_base).free if os.path.isdir(export_base) else 0
    return ExportError(
        f"No space left on {export_base} while exporting {final} (needs about "
        f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free): {kept}; free space and rerun "
        "to export again.")


def current_export(export_base: str, model_dir: str) -> str | None:
    """The newest export under ``export_base`` when it was written after the newest checkpoint
    of ``model_dir`` (it holds the run's final weights), else None: an export failed or never
    ran after the last training step, and the run exports again."""
    try:
        path = latest_version(export_base)
    except FileNotFoundError:
        return None
    exported = os.path.getmtime(os.path.join(path, "saved_model.pb"))
    indexes = glob.glob(os.path.join(glob.escape(model_dir), "*.index"))
    if any(os.path.getmtime(index) > exported for index in indexes):
        return None
    return path


def read_labels(saved_model_dir: str) -> list[str]:
    """The class names stored with an exported model (empty if none)."""
    path = os.path.join(saved_model_dir, "assets", LABELS_ASSET)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
