"""Validation mAP: the one evaluation loop, used after each training epoch and by tfssd-evaluate.

Training evaluates its in-memory network on decoded images; ``tfssd-evaluate`` evaluates an
exported SavedModel on the encoded images, as a deployment would see them. Both go through
``evaluate_batches`` and ``DetectionEvaluator`` (VOC AP), and both detect through
``tfssd.model.postprocess.detect``, the same path the export serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from tfssd.config.run_config import Config
from tfssd.data import pipeline, schema
from tfssd.evaluation import plots
from tfssd.evaluation.coco_ap import COCOEvaluator
from tfssd.evaluation.voc_ap import DetectionEvaluator, EvaluationResult
from tfssd.model.postprocess import detect
from tfssd.ops import drawing as visualization

SUMMARY_IMAGES = 4  # validation images drawn to TensorBoard after each evaluation
SUMMARY_MIN_SCORE = 0.3  # detections drawn on them

Batch = dict[str, tf.Tensor]
Detections = dict[str, tf.Tensor]


def evaluate_batches(batches: Iterable[Batch], detect_batch: Callable[[Batch], Detections],
                     evaluator: DetectionEvaluator,
                     on_batch: Callable[[Batch, Detections], None] | None = None
                     ) -> EvaluationResult:
    """Runs ``detect_batch`` over ``batches`` and scores the detections against their labels.

    Args:
      batches: dicts of ``pipeline.build_eval_dataset`` (gt_boxes [B, M, 4] normalised yxyx,
        gt_classes [B, M] with -1 padding, gt_difficult [B, M], and the images).
      detect_batch: batch -> detections (detection_boxes [B, K, 4] normalised yxyx,
        detection_scores [B, K], detection_classes [B, K], num_detections [B]).
      evaluator: accumulates the images; its result is returned.
      on_batch: called with each batch and its detections (drawing, progress).
    """
    for batch in batches:
        detections = detect_batch(batch)
        evaluator.add_batch(detections, batch)
        if on_batch:
            on_batch(batch, detections)
    return evaluator.result()


def ground_truth_per_class(files: tuple[str, ...], input_format: str,
                           num_classes: int) -> np.ndarray:
    """int [num_classes]: the objects of each class that VOC AP counts (not difficult) in files.

    A class without any has no AP; mAP is the mean over the classes that have some. A streamed
    Pipe-mode channel's next pass is read for it (``pipeline.validation_records``).
    """
    parse = schema.PARSERS[input_format]
    counts = np.zeros(num_classes, np.int64)
    for serialized in pipeline.validation_records(files):
        _, classes, difficult = (t.numpy() for t in schema.label_to_objects(
            parse(serialized)["label"]))
        counted = classes[(~difficult.astype(bool)) & (classes >= 0) & (classes < num_classes)]
        counts += np.bincount(counted.astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


class Validator:
    """Validation mAP of a training run's current weights, with a few images drawn."""

    def __init__(self, config: Config, model, anchors: np.ndarray, class_names: list[str],
                 input_format: str, translate: Callable[..., Exception]):
        self.config = config
        self.class_names = class_names
        self.input_format = input_format
        self._translate = translate
        settings = dict(nms_threshold=config.model.nms_threshold,
                        score_threshold=config.model.score_threshold,
                        max_detections=config.model.max_detections)
        # The last evaluation's evaluator (every image's detections and ground truth) and its
        # images' filenames, for tfssd.evaluation.plots (reports, TensorBoard plots).
        self.last_evaluator: DetectionEvaluator | None = None
        self.last_filenames: list[str] = []
        self._detect = tf.function(lambda images: detect(model, images, tf.constant(anchors),
                                                         **settings),
                                   reduce_retracing=True)

    def evaluate(self) -> tuple[EvaluationResult, dict[str, np.ndarray]]:
        """Validation mAP of the current weights (every worker computes the same).

        Returns:
          The result, and images for TensorBoard by name, each uint8 [N, H, W, 3]: the first
          validation images (ground truth on the left, detections scoring at least
          SUMMARY_MIN_SCORE on the right), the PR curves and the confusion matrix (plots.py).
        """
        data = self.config.data
        evaluator = DetectionEvaluator(self.config.model.num_classes,
                                       self.config.eval.overlap_threshold,
                                       self.config.eval.ap_method)
        dataset = pipeline.build_eval_dataset(
            data.validation_files, image_size=self.config.model.image_size,
            label_width=data.label_width, batch_size=self.config.train.mini_batch_size,
            input_format=self.input_format, skip_corrupt_records=data.skip_corrupt_records)
        drawn, filenames = [], []
        coco = COCOEvaluator(self.config.model.num_classes) if (
            self.config.eval.coco_metrics) else None

        def on_batch(batch, detections):
            filenames.extend(name.decode(errors="replace") for name in batch["filename"].numpy())
            if len(drawn) < SUMMARY_IMAGES:
                drawn.extend(self._draw(batch, detections, SUMMARY_IMAGES - len(drawn)))
            if coco:
                coco.add_batch(detections, batch, batch["image_sizes"].numpy())

        try:
            result = evaluate_batches(dataset, lambda batch: self._detect(batch["images"]),
                                      evaluator, on_batch)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            raise self._translate(e, data.validation_files) from None
        self.last_evaluator, self.last_filenames = evaluator, filenames
        if coco:
            stats = coco.result().stats
            result = dataclasses.replace(result, extra_metrics={
                f"COCO/{name}": stats[name] for name in ("AP", "AP50", "AP75", "AP_small",
                                                         "AP_medium", "AP_large")})
        images = {"ground_truth_left_detections_right":
                  np.stack(drawn) if drawn else np.zeros((0, 1, 1, 3), np.uint8)}
        plotted = plots.report_images(evaluator, self.class_names, self.config.model.image_size)
        images.update({name: image[None] for name, image in plotted.items()})
        return result, images

    def write_report(self, out_dir: str):
        """The report of the last evaluation into ``out_dir`` (plots.write_report's files)."""
        data = self.config.data
        return plots.write_report(
            self.last_evaluator, out_dir, self.class_names, self.config.model.image_size,
            plots.records_reader(data.validation_files, self.input_format, self.last_filenames),
            self.last_filenames)

    def _draw(self, batch, detections, count: int) -> list[np.ndarray]:
        images = []
        for k in range(min(count, int(batch["images"].shape[0]))):
            image = batch["images"][k].numpy()
            real = batch["gt_classes"][k].numpy() >= 0
            truth = visualization.draw_boxes(image, batch["gt_boxes"][k].numpy()[real],
                                             batch["gt_classes"][k].numpy()[real],
                                             class_names=self.class_names)
            n = int(detections["num_detections"][k])
            scores = detections["detection_scores"][k].numpy()[:n]
            keep = scores >= SUMMARY_MIN_SCORE
            predicted = visualization.draw_boxes(
                image, detections["detection_boxes"][k].numpy()[:n][keep],
                detections["detection_classes"][k].numpy()[:n][keep].astype(int), scores[keep],
                self.class_names)
            images.append(np.concatenate([truth, predicted], axis=1))
        return images
