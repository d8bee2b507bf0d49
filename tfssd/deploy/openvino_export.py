"""OpenVINO export of a trained SSD for CPU inference, with decoding and NMS inside the model.

OpenVINO's TensorFlow frontend converts the network, the box decoding and the softmax, but has
no rule for ``CombinedNonMaxSuppression`` (nor ``DecodeImage``), so the model is built in two
parts. A tf.function over already resized uint8 images gives the decoded boxes and class
probabilities, and ``openvino.convert_model`` converts it; OpenVINO's own ``MulticlassNms``
(opset 9) is then appended with its Python opset API, and its ragged result laid out in the TF
Object Detection API's fixed-size outputs by a few more OpenVINO ops. The .xml/.bin pair:

  images             uint8 [B, S, S, 3] RGB, resized to the input on the host (any batch size)
  detection_boxes    float32 [B, N, 4], normalised [ymin, xmin, ymax, xmax], clipped to [0, 1]
  detection_scores   float32 [B, N], softmax probabilities, descending; 0 on padding
  detection_classes  float32 [B, N], class ids from 0 (background excluded); 0 on padding
  num_detections     float32 [B]

as the SavedModel's ``serving_images`` gives at size S. ``MulticlassNms`` does what tfssd's
post-processing does (tfssd/model/postprocess.py): per class, the best ``PRE_NMS_TOP_K``
anchors above the score threshold enter a greedy NMS, and the best ``max_detections`` of all
classes remain, sorted by score. It is given yxyx boxes; IoU does not care which axis is first,
so its "x1 y1 x2 y2" columns come out as yxyx.

Precisions: the float32 IR keeps float32 weights (``compress_to_fp16=False``), so OpenVINO
computes what TensorFlow computes. bfloat16 is not a file: OpenVINO's CPU plugin decides the
inference precision when it compiles the model (``INFERENCE_PRECISION_HINT``), so one float IR
runs in float32 or bfloat16 on a CPU that has it (tfssd.deploy.detector). int8 is a
file: NNCF's post-training quantization inserts FakeQuantize nodes calibrated on training images;
only the network part is quantized, the NMS is appended afterwards and runs in float.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from tfssd.deploy.trained_ssd import TrainedSSD
from tfssd.model.postprocess import PRE_NMS_TOP_K
from tfssd.ops import box_coder

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
QUANTIZATIONS = ("none", "int8")  # bfloat16: a runtime choice (INFERENCE_PRECISION_HINT)
LABELS_SUFFIX = ".labels.txt"  # ssd.xml -> ssd.labels.txt
RT_INFO_KEY = "tfssd"  # the model's rt_info entry: JSON of the input and post-processing


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError("OpenVINO export needs openvino (and nncf for int8): "
                          "pip install 'tfssd[openvino]'") from None
    return openvino


@functools.cache
def shared_core():
    """The process's one OpenVINO Core, kept for its lifetime; every model tfssd compiles uses it.

    OpenVINO's CPU plugin (2026.4) gives the thread that compiles on a Core an alternate signal
    stack of its own, and on the Core's end puts back the one it found. Two Cores ended in the
    order they were made leave that thread on freed memory, and its next signal (SIGTERM,
    Ctrl-C) kills the process with SIGSEGV. One Core for the process never ends before another.
    """
    return _openvino().Core()


def network_function(ssd: TrainedSSD) -> Callable:
    """tf.function: images uint8 [B, S, S, 3] -> boxes float32 [B, A, 4] (normalised yxyx,
    decoded, unclipped) and scores float32 [B, C, A] (softmax, background dropped)."""
    size = ssd.image_size
    anchors = tf.constant(np.asarray(ssd.anchors, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8,
                                                 name="images")])
    def network(images):
        outputs = ssd.network(tf.cast(images, tf.float32))
        boxes = box_coder.decode(tf.cast(outputs["box_deltas"], tf.float32), anchors)
        scores = tf.nn.softmax(tf.cast(outputs["cls_logits"], tf.float32), axis=-1)[:, :, 1:]
        return {"boxes": boxes, "scores": tf.transpose(scores, [0, 2, 1])}

    return network


def convert_network(ssd: TrainedSSD):
    """The network, decoding and softmax as an ``openvino.Model`` (outputs boxes, scores)."""
    ov = _openvino()
    model = ov.convert_model(network_function(ssd).get_concrete_function())
    for output in model.outputs:  # convert_model names them after the graph's tensors
        name = "boxes" if output.get_partial_shape()[-1].get_length() == 4 else "scores"
        output.get_tensor().set_names({name})
    return model


def quantize_int8(model, images: Iterable[np.ndarray], subset_size: int):
    """NNCF post-training quantization of ``convert_network``'s model.

    Args:
      model: the float network.
      images: calibration images [S, S, 3] RGB 0..255 (any real dtype), as the host feeds them.
      subset_size: how many of them calibrate.
    """
    try:
        import nncf
    except ImportError:
        raise ImportError("int8 export needs NNCF: pip install nncf (or 'tfssd[openvino]')"
                          ) from None
    pixels = [np.clip(np.round(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)[None]
              for image in images]
    if not pixels:
        raise ValueError("int8 quantization needs calibration images; none were given")
    return nncf.quantize(model, nncf.Dataset(pixels), subset_size=min(subset_size, len(pixels)))


def append_nms(model, ssd: TrainedSSD):
    """``model`` (boxes, scores) with MulticlassNms and the OD API's padded outputs appended."""
    _openvino()
    from openvino import opset9 as ops

    # What feeds each Result (a model's outputs are its Result nodes').
    outputs = {result.output(0).get_any_name(): result.input_value(0)
               for result in model.get_results()}
    boxes, scores = outputs["boxes"], outputs["scores"]
    count = ssd.max_detections
    nms = ops.multiclass_nms(
        boxes, scores, sort_result_type="score", sort_result_across_batch=False,
        output_type="i32", iou_threshold=ssd.nms_threshold,
        score_threshold=ssd.score_threshold, nms_top_k=min(PRE_NMS_TOP_K, len(ssd.anchors)),
        keep_top_k=count, background_class=-1, normalized=True)
    # selected [D, 6] rows (class, score, 4 box corners) of all images, image after image;
    # index [D, 1] into the flattened [B * A] boxes; per_image [B] rows of each image.
    selected, index, per_image = nms.output(0), nms.output(1), nms.output(2)
    i32 = lambda values: ops.constant(np.asarray(values, np.int32))  # noqa: E731
    image = ops.divide(ops.squeeze(index, i32([1])), i32(len(ssd.anchors)))  # [D]
    first_row = ops.cumsum(per_image, i32(0), exclusive=True)  # [B]
    rows = ops.range(i32(0), ops.gather(ops.shape_of(selected, "i32"), i32(0), i32(0)),
                     i32(1), "i32")
    slot = ops.subtract(rows, ops.gather(first_row, image, i32(0)))  # [D], place in its image
    batch = ops.gather(ops.shape_of(boxes, "i32"), i32([0]), i32(0))  # [1]
    padded = ops.scatter_nd_update(
        ops.broadcast(ops.constant(np.float32(0)), ops.concat([batch, i32([count, 6])], 0)),
        ops.concat([ops.unsqueeze(image, i32(1)), ops.unsqueeze(slot, i32(1))], 1),
        selected)  # [B, count, 6]

    def columns(start, stop):
        return ops.slice(padded, i32([start]), i32([stop]), i32([1]), i32([2]))

    results = {
        "detection_boxes": ops.clamp(columns(2, 6), 0.0, 1.0),
        "detection_scores": ops.squeeze(columns(1, 2), i32([2])),
        "detection_classes": ops.squeeze(columns(0, 1), i32([2])),
        "num_detections": ops.convert(per_image, "f32"),
    }
    for result in list(model.get_results()):
        model.remove_result(result)
    for key in OUTPUT_KEYS:
        result = ops.result(results[key])
        result.output(0).get_tensor().set_names({key})
        model.add_results([result])
    model.validate_nodes_and_infer_types()
    return model


def build(ssd: TrainedSSD, quantize: str = "none",
          calibration: Iterable[np.ndarray] | None = None, calibration_images: int = 300):
    """The whole OpenVINO model of ``ssd``: float32, or int8 calibrated on ``calibration``."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize == "int8" and calibration is None:
        raise ValueError("int8 quantization needs calibration images")
    models = build_all(ssd, calibration if quantize == "int8" else None, calibration_images)
    return models[quantize]


def build_all(ssd: TrainedSSD, calibration: Iterable[np.ndarray] | None = None,
              calibration_images: int = 300) -> dict:
    """{"none": the float32 model, "int8": the int8 model (with ``calibration`` only)}, from one
    conversion of the network (the slow part)."""
    network = convert_network(ssd)
    models = {}
    if calibration is not None:
        models["int8"] = append_nms(quantize_int8(network.clone(), calibration,
                                                  calibration_images), ssd)
    models["none"] = append_nms(network, ssd)
    for quantize, model in models.items():
        settings = {"image_size": ssd.image_size, "quantize": quantize,
                    "num_classes": ssd.num_classes, "class_names": list(ssd.class_names),
                    "nms_threshold": ssd.nms_threshold, "score_threshold": ssd.score_threshold,
                    "max_detections": ssd.max_detections, "pre_nms_top_k": PRE_NMS_TOP_K,
                    "source": ssd.source}
        model.set_rt_info(json.dumps(settings), [RT_INFO_KEY])
    return models


def labels_path(xml_path: str) -> str:
    """The labels file beside an OpenVINO model: ``ssd.xml`` -> ``ssd.labels.txt``."""
    return os.path.splitext(xml_path)[0] + LABELS_SUFFIX


def save(model, output: str, class_names: Iterable[str]) -> tuple[str, str]:
    """Writes ``output`` (.xml, with its .bin) and the labels file; returns the .xml and labels
    paths. Float weights stay float32."""
    if not output.endswith(".xml"):
        raise ValueError(f"{output}: the output must end with .xml")
    ov = _openvino()
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    ov.save_model(model, output, compress_to_fp16=False)
    labels = labels_path(output)
    staging = os.path.join(directory, f".{os.path.basename(labels)}.{os.getpid()}.partial")
    with open(staging, "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in class_names))
    os.replace(staging, labels)
    return output, labels


def export_openvino(ssd: TrainedSSD, output: str, quantize: str = "none",
                    calibration: Iterable[np.ndarray] | None = None,
                    calibration_images: int = 300) -> tuple[str, str]:
    """``build`` then ``save``: writes ``output`` (.xml and .bin) and its labels file."""
    return save(build(ssd, quantize, calibration, calibration_images), output, ssd.class_names)


def read_labels(xml_path: str) -> list[str]:
    """The class names of an OpenVINO model from tfssd: its labels file, else its rt_info."""
    path = labels_path(xml_path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    return list(read_settings(xml_path).get("class_names", []))


def read_settings(xml_path: str) -> dict:
    """The export's settings stored in the model (image size, thresholds, quantization...)."""
    model = shared_core().read_model(xml_path)
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    return json.loads(model.get_rt_info([RT_INFO_KEY]).astype(str))
