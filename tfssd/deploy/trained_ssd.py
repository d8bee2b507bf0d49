"""A trained SSD read back for deployment: from a tfssd model directory or an exported SavedModel.

``load_trained_ssd`` gives the network, its anchors, input size, class names and post-processing
settings, whichever of the two it was given: what the TFLite export and ``tfssd.load`` of a
model directory start from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfssd.config.run_config import BEST_DIR, RUN_FILE, ModelConfig
from tfssd.deploy import saved_model as export
from tfssd.model.run_directory import best_checkpoint, find_run_dir
from tfssd.model.ssd import ssd_network


@dataclasses.dataclass(frozen=True)
class TrainedSSD:
    """A trained SSD as the TFLite export needs it, from a SavedModel or a model directory."""

    network: Callable  # images float32 [B, S, S, 3] RGB -> {"cls_logits", "box_deltas"}
    resource: object  # what holds the network's variables (a Keras model or a loaded SavedModel)
    anchors: np.ndarray  # float32 [A, 4], normalised yxyx
    image_size: int  # S
    class_names: tuple[str, ...]
    nms_threshold: float
    score_threshold: float
    max_detections: int
    source: str  # the path it was read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_trained_ssd(path: str, **overrides) -> TrainedSSD:
    """Reads a trained SSD from a tfssd model directory or an exported SavedModel.

    Args:
      path: a model directory (``tfssd_run.json`` and checkpoints: the ``best/`` weights, else
        the latest) or a folder holding one as ``checkpoints/``; a SavedModel, or a directory of
        numbered SavedModel versions (the highest).
      **overrides: nms_threshold, score_threshold or max_detections to use instead of the
        model's (None: keep the model's).
    """
    # A model directory, or a folder holding one as checkpoints/ (tfssd's SageMaker artifact).
    run_dir = find_run_dir(path)
    if run_dir:
        ssd = _from_model_dir(run_dir)
    else:
        try:
            saved_model = export.latest_version(path)
        except FileNotFoundError:
            raise ValueError(f"{path}: neither a tfssd model directory (no {RUN_FILE}) nor an "
                             "exported SavedModel (or a directory of its versions)") from None
        ssd = _from_saved_model(saved_model)
    return dataclasses.replace(ssd, **{k: v for k, v in overrides.items() if v is not None})


def _from_saved_model(path: str) -> TrainedSSD:
    """The network Keras saved with the export (its default signature), and the settings and
    anchors the serving graph holds as constants."""
    loaded = tf.saved_model.load(path)
    network = getattr(getattr(loaded, "model", None), "_default_save_signature", None)
    if network is None or not getattr(network, "concrete_functions", None):
        raise ValueError(f"{path}: this SavedModel does not hold its Keras network "
                         "(model._default_save_signature); export from the model directory "
                         "instead (--model=MODEL_DIR)")
    function = network.concrete_functions[0]
    (spec,), _ = function.structured_input_signature
    num_anchors = int(function.structured_outputs["box_deltas"].shape[1])
    num_classes = int(function.structured_outputs["cls_logits"].shape[-1]) - 1  # background
    class_names = export.read_labels(path) or [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{path}: {len(class_names)} class names for a network of "
                         f"{num_classes} classes")
    anchors, settings = serving_constants(loaded.signatures["serving_images"], num_anchors)
    return TrainedSSD(network=network, resource=loaded, anchors=anchors,
                      image_size=int(spec.shape[1]), class_names=tuple(class_names), source=path,
                      **settings)


def _from_model_dir(path: str) -> TrainedSSD:
    """The network rebuilt from the run file and restored from the best (else latest) weights."""
    with open(os.path.join(path, RUN_FILE), encoding="utf-8") as f:
        run = json.load(f)
    ssd = ssd_network(run["base_network"], run["num_classes"], run["image_size"],
                      run["width_multiplier"])
    checkpoint = best_checkpoint(path)
    if checkpoint is None:
        raise ValueError(f"{path}: no checkpoint in {BEST_DIR}/ or in the directory itself")
    tf.train.Checkpoint(model=ssd.model).restore(checkpoint).expect_partial(
    ).assert_existing_objects_matched()
    # The run file does not record the post-processing settings; the run's own export does.
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    settings = {k: defaults[k] for k in ("nms_threshold", "score_threshold", "max_detections")}
    try:
        exported = export.latest_version(os.path.join(path, "export"))
    except FileNotFoundError:
        exported = None
    if exported:
        _, settings = serving_constants(
            tf.saved_model.load(exported).signatures["serving_images"], len(ssd.anchors))
    model = ssd.model
    class_names = run.get("class_names") or [str(c) for c in range(run["num_classes"])]
    return TrainedSSD(network=lambda images: model(images, training=False), resource=model,
                      anchors=ssd.anchors, image_size=run["image_size"],
                      class_names=tuple(class_names), source=checkpoint, **settings)


def serving_constants(signature, num_anchors: int) -> tuple[np.ndarray, dict]:
    """The anchors and NMS settings that an exported serving signature holds as constants.

    Returns:
      anchors: float32 [num_anchors, 4], normalised yxyx (the one [num_anchors, 4] constant).
      settings: nms_threshold, score_threshold and max_detections (the inputs of its
        CombinedNonMaxSuppression).
    """
    graph = signature.graph.as_graph_def()
    anchors, settings = [], None
    for nodes in [graph.node] + [f.node_def for f in graph.library.function]:
        by_name = {node.name: node for node in nodes}
        for node in nodes:
            if node.op == "CombinedNonMaxSuppression":
                _, max_total, iou, score = (_constant(by_name, name) for name in node.input[2:6])
                # float32 constants, written back in their shortest decimal form (0.45).
                settings = dict(nms_threshold=float(str(iou)), score_threshold=float(str(score)),
                                max_detections=int(max_total))
            elif node.op == "Const":
                shape = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
                if shape == [num_anchors, 4]:
                    anchors.append(tf.make_ndarray(node.attr["value"].tensor))
    if settings is None or len(anchors) != 1:
        raise ValueError("the serving graph has no CombinedNonMaxSuppression or not exactly one "
                         f"[{num_anchors}, 4] anchor constant; export from the model directory "
                         "instead (--model=MODEL_DIR)")
    return anchors[0].astype(np.float32), settings


def _constant(by_name: dict, name: str) -> np.ndarray:
    node = by_name[name.lstrip("^").split(":")[0]]
    while node.op == "Identity":
        node = by_name[node.input[0].split(":")[0]]
    if node.op != "Const":
        raise ValueError(f"{node.name}: expected a constant, found {node.op}")
    return tf.make_ndarray(node.attr["value"].tensor)
