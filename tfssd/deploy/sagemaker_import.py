"""A SageMaker Object Detection model (MXNet) made into a tfssd model directory and export.

SageMaker's model.tar.gz holds ``model_algo_1-symbol.json`` (the MXNet graph),
``model_algo_1-0000.params`` (its weights) and ``hyperparams.json``. The graph is recognised as
one of SageMaker's two networks (tfssd/model/sagemaker_networks.py: ResNet-50 v2 or
vgg16_reduced SSD, any image_shape and class count, the width following from the weights), and
compared with the network tfssd builds: every weight's name and shape, and every node of the
graph, its operator, attributes and inputs (tfssd/model/sagemaker_graph.py). A graph that
differs is refused with the differences named. The anchors are the graph's own MultiBoxPrior
settings, and the export detects as the graph's MultiBoxDetection (one class per anchor, its
clip, thresholds, nms_topk and force_suppress: tfssd/model/postprocess.py).

The result is a tfssd model directory (``tfssd_run.json``, the weights as its ``best/``
checkpoint) with an exported SavedModel in ``export/1``: what serving, prediction, evaluation,
the TFLite export and ``tfssd-train --init_from`` read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tarfile

import tensorflow as tf
from keras import layers

from tfssd.config.run_config import BEST_DIR, RUN_FILE
from tfssd.deploy import saved_model
from tfssd.model import mxnet_params, postprocess, sagemaker_graph, sagemaker_networks
from tfssd.model.ssd import SSD

_SYMBOL = re.compile(r"(.*)-symbol\.json$")
_PARAMS = re.compile(r"(.*)-(\d{4})\.params$")


class SageMakerImportError(ValueError):
    """The artifact is not a SageMaker Object Detection model tfssd can rebuild."""


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    model_dir: str
    export_dir: str  # the SavedModel version written
    base_network: str
    num_classes: int
    image_size: int
    width_multiplier: float


def read_artifact(source: str) -> tuple[dict, dict, dict]:
    """(symbol graph, {param: array} unprefixed, hyperparameters) of a model.tar.gz or of a
    directory holding its files (the highest-numbered ``.params`` of the symbol's prefix)."""
    if os.path.isfile(source):
        try:
            with tarfile.open(source) as tar:
                files = {os.path.basename(m.name): tar.extractfile(m).read()
                         for m in tar.getmembers() if m.isfile()}
        except tarfile.TarError as e:
            raise SageMakerImportError(f"{source}: not a model.tar.gz ({e})") from None
    elif os.path.isdir(source):
        files = {}
        for name in os.listdir(source):
            if _SYMBOL.match(name) or _PARAMS.match(name) or name == "hyperparams.json":
                with open(os.path.join(source, name), "rb") as f:
                    files[name] = f.read()
    else:
        raise SageMakerImportError(f"{source}: no such file or directory")
    symbols = sorted(n for n in files if _SYMBOL.match(n))
    if len(symbols) != 1:
        raise SageMakerImportError(f"{source}: expected one *-symbol.json, found {symbols}")
    prefix = _SYMBOL.match(symbols[0]).group(1)
    params = sorted(n for n in files if _PARAMS.match(n) and _PARAMS.match(n).group(1) == prefix)
    if not params:
        raise SageMakerImportError(f"{source}: no {prefix}-NNNN.params beside {symbols[0]}")
    graph = mxnet_params.parse_symbol(files[symbols[0]].decode("utf-8"), symbols[0])
    args, aux = mxnet_params.split_params(mxnet_params.parse_params(files[params[-1]],
                                                                    params[-1]))
    hyper = json.loads(files["hyperparams.json"]) if "hyperparams.json" in files else {}
    return graph, {**args, **aux}, hyper


def recognise(graph: dict, params: dict, hyper: dict, image_size: int | None = None) -> dict:
    """base_network, num_classes, image_size and width_multiplier of a SageMaker graph.

    The image size is not in the graph: it comes from ``image_size``, else from the artifact's
    hyperparams.json (``image_shape``); with neither the artifact is refused.
    """
    nodes = {n["name"]: n for n in graph["nodes"]}
    if "bn_data" in nodes and "stage4_unit3_conv3" in nodes:
        base, top, width = "sagemaker-resnet-50", "stage4_unit3_conv3_weight", 2048
    elif "relu4_3" in nodes and "fc7" in nodes:
        base, top, width = "sagemaker-vgg-16", "fc7_weight", 1024
    else:
        raise SageMakerImportError("the graph is neither SageMaker's ResNet-50 SSD (no bn_data, "
                                   "stage4_unit3_conv3) nor its VGG-16 SSD (no relu4_3, fc7)")
    if top not in params:
        raise SageMakerImportError(f"the weights have no {top}")
    reshape = [n for n in graph["nodes"] if n["op"] == "Reshape" and n["name"] != "multibox_"
               "anchors" and any(graph["nodes"][i[0]]["op"] == "Concat" for i in n["inputs"])]
    if reshape:
        num_classes = int(mxnet_params.parse_tuple(reshape[0]["attrs"]["shape"])[-1]) - 1
    elif "num_classes" in hyper:
        num_classes = int(hyper["num_classes"])
    else:
        raise SageMakerImportError("the graph has no class predictions' Reshape and there is no "
                                   "hyperparams.json with num_classes")
    if image_size is None:
        if str(hyper.get("image_shape", "")).strip() == "":
            raise SageMakerImportError(
                "the image size is not in the graph and the artifact has no hyperparams.json "
                "with image_shape: give the image_shape the model was trained with "
                "(image_size=..., tfssd-import-sagemaker --image_shape=...)")
        image_size = int(str(hyper["image_shape"]).split(",")[-1])
    return {"base_network": base, "num_classes": num_classes, "image_size": int(image_size),
            "width_multiplier": params[top].shape[0] / width}


def differences(graph: dict, params: dict, ssd) -> list[str]:
    """What differs between an MXNet graph with its weights and tfssd's ``ssd`` network (built
    with the graph's anchors): every weight's name and shape, then every node of the graph
    (tfssd/model/sagemaker_graph.py)."""
    found = []
    expected = sagemaker_networks.mxnet_parameter_shapes(ssd.model)
    extra = sorted(set(params) - set(expected) - {"data", "label"})
    missing = sorted(set(expected) - set(params))
    if missing:
        found.append(f"weights missing: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8
                                                                   else ""))
    if extra:
        found.append(f"weights tfssd's network does not have: {', '.join(extra[:8])}"
                     + (" ..." if len(extra) > 8 else ""))
    for name in sorted(set(expected) & set(params)):
        if tuple(params[name].shape) != expected[name]:
            found.append(f"{name}: shape {tuple(params[name].shape)}, tfssd's {expected[name]}")
    network = sagemaker_networks.NETWORKS[ssd.base_network]
    want = sagemaker_graph.expected(
        network, sagemaker_networks.layout(network, ssd.image_size)["extra"], ssd.num_classes,
        ssd.width_multiplier, sagemaker_graph.priors(graph))
    return found + sagemaker_graph.differences(graph, want)


def _build(geometry: dict, graph: dict) -> SSD:
    """tfssd's network for the graph: its anchors (MultiBoxPrior settings) and detection."""
    priors = sagemaker_graph.priors(graph)
    try:
        model, anchors, names, sizes = sagemaker_networks.build(**geometry, priors=priors)
    except ValueError as e:
        raise SageMakerImportError(f"cannot build {geometry}: {e}") from None
    settings = sagemaker_graph.detection(graph)
    if settings is None:
        raise SageMakerImportError("the graph has no MultiBoxDetection")
    model.multibox_detection = postprocess.MultiBoxDetection(
        nms_topk=settings["nms_topk"], clip=settings["clip"],
        force_suppress=settings["force_suppress"])
    for layer in model.layers:  # MXNet's statistics, frozen
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return SSD(model=model, anchors=anchors, feature_names=names, feature_map_sizes=sizes,
               **geometry)


def detection_settings(graph: dict) -> dict:
    """nms_threshold and score_threshold of the graph's MultiBoxDetection (MXNet's defaults
    0.5 and 0.01 where it does not say)."""
    settings = sagemaker_graph.detection(graph) or {"nms_threshold": 0.5, "threshold": 0.01}
    return {"nms_threshold": settings["nms_threshold"],
            "score_threshold": settings["threshold"]}


def import_sagemaker_model(source: str, output_dir: str, *,
                           class_names: list[str] | None = None,
                           max_detections: int = 200,
                           image_size: int | None = None) -> ImportedModel:
    """Reads a SageMaker Object Detection model and writes a tfssd model directory and export.

    Args:
      source: a SageMaker model.tar.gz, or a directory with its extracted files.
      output_dir: the model directory to write (must not hold a model yet).
      class_names: names by class id; default "0", "1", ...
      max_detections: detections per image of the export.
      image_size: the image_shape the model was trained with, when the artifact has no
        hyperparams.json saying it (it is not in the graph).

    Raises:
      SageMakerImportError: not a SageMaker Object Detection model tfssd can rebuild; the
        message names what differs.
    """
    if os.path.exists(os.path.join(output_dir, RUN_FILE)):
        raise SageMakerImportError(f"{output_dir} already holds a model ({RUN_FILE})")
    graph, params, hyper = read_artifact(source)
    geometry = recognise(graph, params, hyper, image_size)
    class_names = list(class_names or [str(c) for c in range(geometry["num_classes"])])
    if len(class_names) != geometry["num_classes"]:
        raise SageMakerImportError(f"{len(class_names)} class names for a model of "
                                   f"{geometry['num_classes']} classes")
    ssd = _build(geometry, graph)
    found = differences(graph, params, ssd)
    if found:
        raise SageMakerImportError(
            f"{source} is not SageMaker's {geometry['base_network']} SSD as tfssd builds it: "
            + "; ".join(found[:20]) + (f"; and {len(found) - 20} more" if len(found) > 20 else ""))
    sagemaker_networks.load_mxnet_weights(ssd.model, params)
    os.makedirs(output_dir, exist_ok=True)
    checkpoint = tf.train.Checkpoint(model=ssd.model)
    tf.train.CheckpointManager(checkpoint, os.path.join(output_dir, BEST_DIR),
                               max_to_keep=1).save(checkpoint_number=0)
    settings = detection_settings(graph)
    exported = saved_model.export_saved_model(
        ssd.model, ssd.anchors, os.path.join(output_dir, "export"),
        image_size=geometry["image_size"], class_names=class_names,
        max_detections=max_detections, **settings)
    run = {**geometry, "class_names": class_names,
           "imported_from": {"source": os.path.abspath(source), "hyperparameters": hyper,
                             **settings, "multibox_detection": sagemaker_graph.detection(graph),
                             "multibox_priors": sagemaker_graph.priors(graph)}}
    with open(os.path.join(output_dir, RUN_FILE), "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
    return ImportedModel(model_dir=output_dir, export_dir=exported, **geometry)

