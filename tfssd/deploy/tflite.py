"""TFLite export of a trained SSD for phones and edge devices, with TFLite's SSD post-processing.

The .tflite file holds the network, a softmax and TFLite's built-in custom op
``TFLite_Detection_PostProcess`` (box decoding against the anchors, which are a constant of the
model, then per-class NMS). Its signature ``serving_default`` is that of the TF Object Detection
API's TFLite SSD models:

  images             [1, S, S, 3] RGB; float32 in [0, 255] (quantize none, float16) or uint8 (int8)
  detection_boxes    float32 [1, N, 4], normalised [ymin, xmin, ymax, xmax], clipped to [0, 1]
  detection_classes  float32 [1, N], class ids from 0 (as tfssd's; background excluded)
  detection_scores   float32 [1, N], softmax probabilities, descending
  num_detections     float32 [1]

and the raw outputs are in that order too (the OD API's output indices 0..3).

How the custom op gets in: as the OD API's ``export_tflite_graph_lib_tf2`` does, a tf.function
annotated with ``experimental_implements='name: "TFLite_Detection_PostProcess" attr {...}'``
stands where the op goes; its body only gives the output shapes. TF's MLIR converter replaces
every such function by the custom op, with the attributes as the op's options (see
tensorflow/compiler/mlir/lite/utils/nms_utils.cc). The converter does not pass
``detections_per_class`` (the kernel's default is 100), so it is set here afterwards in the
flatbuffer, to the model's maximum, as tfssd's NMS allows.

The op decodes as tfssd's box coder does, with scales 1 / variance: y_scale = x_scale = 10,
h_scale = w_scale = 5, and anchors in centre-size form (ycenter, xcenter, height, width). It sees
the probabilities of all ``num_classes + 1`` classes and skips the first (background) itself.
Differences from the SavedModel's post-processing, all in the low-scoring tail: TFLite's NMS has
no per-class pre-NMS top-k (tfssd keeps the best 400 anchors of each class), keeps scores >= the
threshold (TF: >), and does not bound the size exponent (tfssd's decoder caps it at 10).

Under int8 the network runs in integers; the op runs in float after a dequantize, as in the OD
API's quantized models. The input then is uint8 pixels, cast to float inside the model, so a
client feeds raw pixels and no input scale has to be known.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers

from tfssd.config.run_config import TFLITE_QUANTIZATIONS
from tfssd.deploy.trained_ssd import TrainedSSD
from tfssd.ops import box_coder

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
OUTPUT_KEYS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
LABELS_SUFFIX = ".labels.txt"  # model.tflite -> model.labels.txt
METADATA_LABELS = "labels"  # Model.metadata entry: the class names, one per line, by class id
METADATA_SETTINGS = "tfssd"  # Model.metadata entry: JSON of the input and post-processing


def center_size_anchors(anchors: np.ndarray) -> np.ndarray:
    """Normalised yxyx [A, 4] -> [A, 4] (ycenter, xcenter, height, width), the op's layout."""
    anchors = np.asarray(anchors, np.float64)
    return np.stack([(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2,
                     anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]],
                    axis=-1).astype(np.float32)


def postprocess_attributes(num_classes: int, max_detections: int, score_threshold: float,
                           nms_threshold: float, regular_nms: bool = True) -> str:
    """The ``experimental_implements`` text that the converter turns into the custom op.

    ``regular_nms``: per-class NMS (as tfssd's post-processing); False: TFLite's fast NMS, one
    class per box and one class-agnostic NMS (the OD API's default, faster, not the same).
    """
    variances = box_coder.VARIANCES
    attributes = {
        "max_detections": ("i", max_detections), "max_classes_per_detection": ("i", 1),
        "use_regular_nms": ("b", str(regular_nms).lower()),
        "nms_score_threshold": ("f", score_threshold), "nms_iou_threshold": ("f", nms_threshold),
        "y_scale": ("f", 1 / variances[0]), "x_scale": ("f", 1 / variances[1]),
        "h_scale": ("f", 1 / variances[2]), "w_scale": ("f", 1 / variances[3]),
        "num_classes": ("i", num_classes),
    }
    return " ".join([f'name: "{POSTPROCESS_OP}"'] + [
        f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}'
        for key, (kind, value) in attributes.items()])


def detection_function(ssd: TrainedSSD, regular_nms: bool = True) -> Callable:
    """images [1, S, S, 3] (any real dtype, RGB 0..255) -> the signature's four outputs."""
    count = ssd.max_detections
    anchors = center_size_anchors(ssd.anchors)

    @tf.function(experimental_implements=postprocess_attributes(
        ssd.num_classes, count, ssd.score_threshold, ssd.nms_threshold, regular_nms))
    def post_process(box_deltas, class_probabilities, anchors):
        del box_deltas, class_probabilities, anchors  # the converter puts the op here
        return (tf.zeros([1, count, 4]), tf.zeros([1, count]), tf.zeros([1, count]),
                tf.zeros([1]))

    def detect(images):
        outputs = ssd.network(tf.cast(images, tf.float32))
        probabilities = tf.nn.softmax(tf.cast(outputs["cls_logits"], tf.float32), axis=-1)
        boxes, classes, scores, num = post_process(
            tf.cast(outputs["box_deltas"], tf.float32), probabilities, tf.constant(anchors))
        return dict(zip(OUTPUT_KEYS, (tf.clip_by_value(boxes, 0.0, 1.0), classes, scores, num)))

    return detect


def convert(ssd: TrainedSSD, quantize: str = "none",
            representative: Callable[[], Iterable[np.ndarray]] | None = None,
            regular_nms: bool = True) -> bytes:
    """The .tflite flatbuffer of ``ssd``.

    Args:
      ssd: the trained model.
      quantize: "none" (float32), "float16" (float16 weights, float32 compute and input) or
        "int8" (integer weights and activations, calibrated on ``representative``; uint8 input).
      representative: int8 only: yields images [S, S, 3] RGB in [0, 255] (any real dtype).
      regular_nms: see ``postprocess_attributes``.
    """
    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {TFLITE_QUANTIZATIONS}, got {quantize!r}")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantization needs representative images to calibrate on")
    input_dtype = tf.uint8 if quantize == "int8" else tf.float32
    size = ssd.image_size
    with tempfile.TemporaryDirectory() as saved_model:
        # Keras 3's route to TFLite (as keras.Model.export(format="litert")): an ExportArchive,
        # whose SavedModel the converter freezes. A plain tf.Module around a Keras 3 model
        # leaves its variables as resource variables in the .tflite, never initialised.
        archive = keras.export.ExportArchive()
        archive.track(ssd.resource)
        archive.add_endpoint("serving_default", detection_function(ssd, regular_nms),
                             input_signature=[tf.TensorSpec([1, size, size, 3], input_dtype,
                                                            name="images")])
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [np.clip(np.round(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)[None]]
                for image in representative())
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    return finish_flatbuffer(flatbuffer, ssd, quantize, regular_nms)


def finish_flatbuffer(flatbuffer: bytes, ssd: TrainedSSD, quantize: str,
                      regular_nms: bool) -> bytes:
    """What the converter cannot say: the op's detections per class, the OD API's output order
    and names, and the class names and settings as model metadata."""
    # TF's own object API for the TFLite schema (no public equivalent in TF 2.21).
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = [model.operatorCodes[i].customCode for i in range(len(model.operatorCodes))]
    found = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if codes[op.opcodeIndex] == POSTPROCESS_OP.encode():
                options = flexbuffers.Loads(bytes(op.customOptions))
                options["detections_per_class"] = ssd.max_detections
                op.customOptions = np.frombuffer(flexbuffers.Dumps(options), np.uint8)
                found += 1
    if found != 1:
        raise RuntimeError(f"expected one {POSTPROCESS_OP} op in the converted model, found "
                           f"{found}; the converter did not recognise the composite function")
    signature = model.signatureDefs[0]
    by_name = {item.name.decode(): item.tensorIndex for item in signature.outputs}
    subgraph = model.subgraphs[signature.subgraphIndex]
    subgraph.outputs = np.array([by_name[key] for key in OUTPUT_KEYS], np.int32)
    for key in OUTPUT_KEYS:
        subgraph.tensors[by_name[key]].name = key.encode()
    for item in signature.inputs:
        subgraph.tensors[item.tensorIndex].name = item.name
    settings = {"image_size": ssd.image_size, "input_dtype": "uint8" if quantize == "int8"
                else "float32", "quantize": quantize, "num_classes": ssd.num_classes,
                "class_names": list(ssd.class_names), "nms_threshold": ssd.nms_threshold,
                "score_threshold": ssd.score_threshold, "max_detections": ssd.max_detections,
                "regular_nms": regular_nms, "source": ssd.source}
    for name, data in ((METADATA_LABELS, _labels_text(ssd.class_names)),
                       (METADATA_SETTINGS, json.dumps(settings, indent=1))):
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data.encode("utf-8"), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
        model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _labels_text(class_names) -> str:
    return "".join(name + "\n" for name in class_names)


def labels_path(tflite_path: str) -> str:
    """The labels file written beside a .tflite: ``model.tflite`` -> ``model.labels.txt``."""
    return os.path.splitext(tflite_path)[0] + LABELS_SUFFIX


def read_metadata(tflite_path: str) -> dict[str, bytes]:
    """The named metadata buffers of a .tflite file (``labels``, ``tfssd``, the converter's)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(tflite_path)
    return {entry.name.decode(): bytes(model.buffers[entry.buffer].data)
            for entry in model.metadata or []}


def read_labels(tflite_path: str) -> list[str]:
    """The class names of a .tflite from tfssd: its labels file, else its metadata."""
    path = labels_path(tflite_path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    text = read_metadata(tflite_path).get(METADATA_LABELS, b"").decode("utf-8")
    return text.splitlines()


def export_tflite(ssd: TrainedSSD, output: str, quantize: str = "none",
                  representative: Callable[[], Iterable[np.ndarray]] | None = None,
                  regular_nms: bool = True) -> tuple[str, str]:
    """Writes ``output`` (.tflite) and its labels file; returns both paths.

    Each file appears only once completely written.
    """
    if not output.endswith(".tflite"):
        raise ValueError(f"{output}: the output must end with .tflite")
    flatbuffer = convert(ssd, quantize, representative, regular_nms)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    written = []
    for path, data in ((output, flatbuffer),
                       (labels_path(output), _labels_text(ssd.class_names).encode("utf-8"))):
        staging = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.partial")
        with open(staging, "wb") as f:
            f.write(data)
        os.replace(staging, path)
        written.append(path)
    return written[0], written[1]
