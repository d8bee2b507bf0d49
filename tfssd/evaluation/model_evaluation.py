"""A trained model's metrics on TFRecords, as a deployment sees the images (``tfssd.evaluate``).

The model is a loaded detector (tfssd/deploy/detector.py: a SavedModel, a ``.tflite``, an
OpenVINO ``.xml`` or a model directory) called on the records' encoded images; its detections
go through the one evaluation loop (``validation.evaluate_batches``) into VOC AP, optionally
COCO AP (pycocotools) and the report (tfssd/evaluation/plots.py). Nothing here imports
TensorFlow until a model is evaluated, so the API can check its arguments before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

METRICS = ("voc", "coco")
DEFAULT_IMAGE_SHAPE = 300  # the report's object sizes when neither caller nor model says


class EvaluationDataError(ValueError):
    """A validation record the model or the pipeline cannot take; the message names it."""


@dataclasses.dataclass
class EvaluationReport:
    """What ``evaluate_model`` measured."""

    model_path: str
    num_images: int
    class_names: list[str]
    voc: Any = None  # tfssd.evaluation.voc_ap.EvaluationResult (mean_ap, per-class AP)
    coco: Any = None  # tfssd.evaluation.coco_ap's result (AP@[.5:.95], AP50, AP75, by size)
    figures: Any = None  # with report_dir: tfssd.evaluation.report.ReportFigures


def check_settings(metrics: Sequence[str], overlap_threshold: float) -> None:
    """Raises ValueError, naming the argument, for metrics or a threshold ``evaluate_model``
    cannot use."""
    if not 0 < overlap_threshold <= 1:
        raise ValueError(f"overlap_threshold={overlap_threshold}: expected (0, 1]")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics={','.join(metrics)}: expected one or more of "
                         f"{', '.join(METRICS)}")


def evaluate_model(files: tuple[str, ...], load_detector: Callable[[], Any],
                   describe_data_error: Callable[[Exception, tuple[str, ...], str], str], *,
                   metrics: Sequence[str] = ("voc",), overlap_threshold: float = 0.5,
                   ap_method: str = "11point", label_width: int = 350, batch_size: int = 16,
                   input_format: str = "auto", skip_corrupt_records: bool = False,
                   report_dir: str | None = None,
                   image_shape: int | None = None) -> EvaluationReport:
    """VOC AP (and COCO AP, and the report) of a detector on TFRecord ``files``.

    Args:
      files: TFRecord files in tfssd's schema or the TF Object Detection API's
        (``input_format``: auto, tfssd or odapi).
      load_detector: returns the detector, called once the files' schema is known (a bad file
        is named before a model is loaded). The detector is called on encoded images (string
        [B]) and returns detections (detection_boxes [B, K, 4] normalised yxyx,
        detection_scores, detection_classes, num_detections); it has ``class_names``, ``path``
        and, where the model says, ``image_size``.
      describe_data_error: (TensorFlow error, files, input format) -> the message of the
        ``EvaluationDataError`` raised for a record the pipeline or the model cannot take.
      metrics: any of ``METRICS``: ``voc`` (AP at ``overlap_threshold``), ``coco``.
      report_dir: also write the report there (plots.write_report).
      image_shape: the network input's side, for the report's object sizes; default the
        detector's ``image_size``, else DEFAULT_IMAGE_SHAPE.
      The rest: as tfssd-evaluate's flags of the same names.

    Raises:
      ValueError: bad settings, or files that mix schemas (named); EvaluationDataError.
    """
    check_settings(metrics, overlap_threshold)
    import tensorflow as tf

    from tfssd.data import pipeline, schema
    from tfssd.evaluation.coco_ap import COCOEvaluator
    from tfssd.evaluation.validation import evaluate_batches
    from tfssd.evaluation.voc_ap import DetectionEvaluator
    from tfssd.ops.image_check import inspect_image

    resolved_format = schema.resolve_format(files, input_format)  # ValueError names the file
    detector = load_detector()
    class_names = list(detector.class_names)
    dataset = pipeline.build_eval_dataset(files, image_size=None, label_width=label_width,
                                          batch_size=batch_size, input_format=resolved_format,
                                          skip_corrupt_records=skip_corrupt_records)
    evaluator = DetectionEvaluator(len(class_names), overlap_threshold, ap_method)
    coco = COCOEvaluator(len(class_names)) if "coco" in metrics else None
    filenames: list[str] = []

    def on_batch(batch, detections):
        names = [name.decode(errors="replace") for name in batch["filename"].numpy()]
        filenames.extend(names)
        if coco:  # COCO's object sizes are in pixels: each image's size, from its header
            sizes = [inspect_image(data, name, max_pixels=0, decode=False)
                     for data, name in zip(batch["image_bytes"].numpy(), names)]
            coco.add_batch(detections, batch, [(info.height, info.width) for info in sizes])

    try:
        result = evaluate_batches(dataset, lambda batch: detector(batch["image_bytes"]),
                                  evaluator, on_batch)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        raise EvaluationDataError(describe_data_error(e, files, resolved_format)) from None
    figures = None
    if report_dir is not None:
        from tfssd.evaluation import plots

        side = image_shape or getattr(detector, "image_size", None) or DEFAULT_IMAGE_SHAPE
        figures = plots.write_report(
            evaluator, report_dir, class_names, side,
            plots.records_reader(files, resolved_format, filenames), filenames)
    return EvaluationReport(model_path=detector.path, num_images=evaluator.num_images,
                            class_names=class_names, voc=result if "voc" in metrics else None,
                            coco=coco.result() if coco else None, figures=figures)
