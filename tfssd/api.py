"""tfssd from Python: train, load (and detect), convert and evaluate, as the commands do.

    import tfssd
    result = tfssd.train(num_classes=3, num_training_samples=400, train="data/train-*",
                         validation="data/val-*", model_dir="runs/demo")
    detector = tfssd.load(result.export_path)        # or a model directory, or a .tflite
    (found,) = detector.detect("image.jpg")          # boxes [N, 4] normalised yxyx, scores, classes

Every function takes the names of its command's flags as keyword arguments, with the same
defaults, validation and messages; the commands (tfssd/cli/) are thin users of these. TensorFlow
is imported only once the arguments are known to be good.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tfssd.config import factory
from tfssd.config.input_files import expand_files
from tfssd.evaluation import model_evaluation
from tfssd.evaluation.model_evaluation import EvaluationDataError as EvaluationDataError
from tfssd.evaluation.model_evaluation import EvaluationReport
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

EVALUATION_METRICS = model_evaluation.METRICS


def train(**values: Any):
    """Trains (or resumes) an SSD from SageMaker's hyperparameters and tfssd's options.

    Args:
      **values: SageMaker's hyperparameters (``num_classes``, ``epochs``, ...; strings as
        SageMaker sends them, or Python values) and tfssd-train's options (``train``,
        ``validation``, ``model_dir``, ``precision``, ...). Inside a SageMaker container,
        hyperparameters.json and the channels (in any of SageMaker's algorithm's formats,
        converted first) fill in what is not given.

    Returns:
      ``tfssd.training.TrainingResult`` (global_step, best_map, best_epoch, export_path,
      model_dir, ...) in a training process; None in a dist_async worker or parameter server.

    Raises:
      HyperparameterError: every invalid value, before TensorFlow starts.
      ClusterConfigError, DistributionError, TrainingError, PretrainedWeightsError,
        SourceDataError (a SageMaker channel): the run could not start or go on; the message
        says why.
      Preempted: SIGTERM stopped the run after saving a checkpoint; the same call resumes.
    """
    from tfssd.training import sagemaker_job

    if sagemaker_job.is_sagemaker_job():  # SageMaker's channels and model channel, converted
        return sagemaker_job.run(values)
    hyperparameters, options = factory.resolve(values)
    from tfssd.training import launch

    return launch.run(hyperparameters, options)


def load(path: str | os.PathLike, num_threads: int | None = None,
         openvino_precision: str = "float32"):
    """A trained detector: an exported SavedModel (or its directory of versions), a ``.tflite``
    file, an OpenVINO ``.xml``, or a tfssd model directory (its best weights).

    ``num_threads``: LiteRT's or OpenVINO's CPU threads; ``openvino_precision``: an ``.xml``'s
    inference precision, float32 (the SavedModel's detections) or bfloat16.

    Its ``detect(images)`` takes file paths, encoded bytes or uint8 arrays [H, W, 3] and returns
    one ``Detections`` per image (boxes float32 [N, 4] normalised yxyx, scores, classes from 0).
    """
    from tfssd.deploy.detector import load_detector

    return load_detector(os.fspath(path), num_threads, openvino_precision)


def convert(format: str, output: str, *, class_names: Sequence[str] | None = None,
            num_shards: int | None = None, label_width: int = 350, strict: bool = False,
            drop_difficult: bool = False, drop_empty: bool = False,
            max_image_pixels: int = DEFAULT_MAX_PIXELS, progress=None, **source_options: Any):
    """Converts annotated images to tfssd's TFRecords (``output-0000i-of-0000N.tfrecord``).

    Args:
      format: one of ``tfssd.data.readers.FORMATS`` (voc, coco, sagemaker_json, manifest, lst,
        recordio, yolo).
      output: the output prefix; class_map.json goes beside the files.
      **source_options: where the format's files are, named as tfssd-convert's flags
        (``voc_dir``, ``split``, ``coco_json``, ``images_dir``, ...).
      progress: ``progress(done, total, rate)`` as images are written, or True for
        tfssd-convert's progress line on stderr.
      The rest: as tfssd-convert's flags of the same names.

    Returns:
      The ``ConversionSummary``: every image and box accounted for (``.format()`` prints it).

    Raises:
      SourceDataError (ReaderOptionError, ConversionError, the formats' errors), OSError.
    """
    from tfssd.data import readers

    # The sources are checked before TensorFlow is imported (by the conversion): a bad option
    # is named at once.
    source = readers.read_source(format, {**source_options, "class_names": class_names})
    from tfssd.data import conversion

    if progress is True:
        progress = conversion.print_progress
    summary = conversion.convert(source.items, output, class_names=class_names,
                                 provided_names=source.class_names, num_shards=num_shards,
                                 label_width=label_width, strict=strict,
                                 drop_difficult=drop_difficult, drop_empty=drop_empty,
                                 max_pixels=max_image_pixels, progress=progress)
    summary.notes.extend(source.notes)
    return summary


def evaluate(model: str | os.PathLike, validation: str | Sequence[str], *,
             metrics: Sequence[str] = ("voc",), overlap_threshold: float = 0.5,
             ap_method: str = "11point", label_width: int = 350, batch_size: int = 16,
             input_format: str = "auto", skip_corrupt_records: bool = False,
             num_threads: int | None = None, report_dir: str | os.PathLike | None = None,
             image_shape: int | None = None,
             openvino_precision: str = "float32") -> EvaluationReport:
    """VOC mAP (and COCO AP) of a trained model on TFRecords, as a deployment sees the images
    (tfssd/evaluation/model_evaluation.py).

    Args:
      model: what ``load`` takes.
      validation: TFRecord files, globs or directories, in tfssd's schema or the TF Object
        Detection API's (``input_format``: auto, tfssd or odapi).
      metrics: any of ``voc`` (AP at ``overlap_threshold``), ``coco`` (pycocotools).
      report_dir: also write the report there (PR and F1 curves, best thresholds, confusion
        matrix, AP by object size, worst images; tfssd/evaluation/plots.py).
      image_shape: the network input's side, for the report's object sizes; default the
        model's where it says (a .tflite, a model directory), else 300.
      The rest: as tfssd-evaluate's flags of the same names.

    Returns:
      The ``EvaluationReport`` (model_path, num_images, class_names, voc, coco, figures).

    Raises:
      ValueError: a bad argument (named); EvaluationDataError: a record that cannot be used;
      FileNotFoundError, ImportError: the model cannot be loaded.
    """
    model_evaluation.check_settings(metrics, overlap_threshold)
    patterns = [validation] if isinstance(validation, (str, os.PathLike)) else list(validation)
    patterns = [os.fspath(p) for p in patterns]
    files = expand_files(patterns)
    if not files:
        raise ValueError(f"validation={','.join(patterns)}: no file matches")
    return model_evaluation.evaluate_model(
        files, lambda: load(model, num_threads, openvino_precision), _data_error_message,
        metrics=metrics, overlap_threshold=overlap_threshold, ap_method=ap_method,
        label_width=label_width, batch_size=batch_size, input_format=input_format,
        skip_corrupt_records=skip_corrupt_records,
        report_dir=None if report_dir is None else os.fspath(report_dir), image_shape=image_shape)


def _data_error_message(error, files: tuple[str, ...], input_format: str) -> str:
    """What a bad record is called in training's messages, or the TensorFlow error's cause."""
    from tfssd.training import errors

    known = errors.data_error(error, files, input_format)
    return str(known if known is not error else errors.cause(error))


def import_sagemaker(model: str | os.PathLike, output: str | os.PathLike, *,
                     class_names: Sequence[str] | None = None, max_detections: int = 200,
                     image_shape: int | None = None):
    """Makes a model of SageMaker's built-in Object Detection algorithm (MXNet) a tfssd model.

    ``model`` is SageMaker's model.tar.gz or a directory of its files; ``output`` becomes a tfssd
    model directory with the SavedModel in ``output/export/1`` (``load``, ``evaluate``, the
    commands and ``--init_from`` take it). Returns the ``ImportedModel`` written (paths and
    network). A graph that is not SageMaker's ResNet-50 or VGG-16 SSD is refused with a
    ``ValueError`` naming the differences. ``image_shape``: the size the model was trained at,
    for an artifact without the ``hyperparams.json`` that says it (the graph does not).
    """
    from tfssd.deploy.sagemaker_import import import_sagemaker_model

    if max_detections < 1:
        raise ValueError(f"max_detections={max_detections}: expected >= 1")
    return import_sagemaker_model(os.fspath(model), os.fspath(output),
                                  class_names=list(class_names) if class_names else None,
                                  max_detections=max_detections, image_size=image_shape)
