"""What a run reports: log lines, SageMaker's metric lines and TensorBoard summaries.

Only the chief reports; other workers write to no-op summary writers and log nothing but their
final weights digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfssd.config.run_config import Config
from tfssd.evaluation import report
from tfssd.evaluation.validation import SUMMARY_IMAGES
from tfssd.evaluation.voc_ap import EvaluationResult
from tfssd.training import sagemaker_metrics
from tfssd.training.distribution import Cluster


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights' bytes: equal on every dist_sync worker when they agree exactly."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


class Reporter:
    """Progress, validation and the run's settings, to the log and to TensorBoard."""

    def __init__(self, config: Config, cluster: Cluster, directory: str,
                 class_names: list[str], learning_rate):
        self.config = config
        self.cluster = cluster
        self.class_names = class_names
        self._learning_rate = learning_rate  # () -> the rate of the last step run
        writer = tf.summary.create_file_writer if cluster.is_chief else (
            lambda _: tf.summary.create_noop_writer())
        self.train_writer = writer(os.path.join(directory, "train"))
        self.val_writer = writer(os.path.join(directory, "validation"))

    def log(self, line: str) -> None:
        if self.cluster.is_chief:
            logging.info(line)

    def hyperparameters(self) -> None:
        """The run's whole configuration, as a table in TensorBoard's text tab."""
        rows = []
        for group in ("model", "data", "train", "eval", "early_stopping"):
            for key, value in dataclasses.asdict(getattr(self.config, group)).items():
                if key in ("train_files", "validation_files"):
                    value = f"{len(value)} files"
                rows.append(f"| {group}.{key} | {value} |")
        with self.train_writer.as_default():
            tf.summary.text("hyperparameters", "| name | value |\n|---|---|\n" + "\n".join(rows),
                            step=0)

    def progress(self, step: int, losses: list[tuple[float, float]], seconds: float,
                 run_rate: float, skipped: int = 0) -> None:
        """The mean losses of the steps since the last report, their speed and the ETA.

        ``skipped``: steps loss scaling skipped meanwhile (not in ``losses``).
        """
        cfg, host = self.config.train, self.cluster.host
        epoch, batch = divmod(step - 1, cfg.steps_per_epoch)
        if skipped:
            self.log(f"step {step}: {skipped} step(s) skipped since the last report: non-finite "
                     "gradients under loss scaling (the scale was lowered)")
            with self.train_writer.as_default(step=step):
                tf.summary.scalar("skipped_steps", skipped)
        if not losses:
            return
        images_per_s = (len(losses) + skipped) * cfg.global_batch_size / max(seconds, 1e-9)
        mean_cls = sum(c for c, _ in losses) / len(losses)
        mean_box = sum(b for _, b in losses) / len(losses)
        learning_rate = float(self._learning_rate())
        eta = (cfg.total_steps - step) / max(run_rate, 1e-9)
        self.log(f"epoch {epoch + 1}/{cfg.epochs} step {batch + 1}/{cfg.steps_per_epoch} "
                 f"loss {mean_cls + mean_box:.4f} (cross_entropy {mean_cls:.4f}, "
                 f"smooth_l1 {mean_box:.4f}) lr {learning_rate:.3g} "
                 f"{images_per_s:.2f} images/s ETA {format_duration(eta)}")
        self.log(sagemaker_metrics.train_loss(host, epoch, batch, "cross_entropy", mean_cls))
        self.log(sagemaker_metrics.train_loss(host, epoch, batch, "smooth_l1", mean_box))
        self.log(sagemaker_metrics.throughput(host, images_per_s))
        self.log(sagemaker_metrics.progress(host, 100.0 * step / cfg.total_steps))
        with self.train_writer.as_default(step=step):
            tf.summary.scalar("loss/total", mean_cls + mean_box)
            tf.summary.scalar("loss/cross_entropy", mean_cls)
            tf.summary.scalar("loss/smooth_l1", mean_box)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("throughput_images_per_second", images_per_s)

    def validation(self, result: EvaluationResult, images: Mapping[str, np.ndarray],
                   epoch: int, step: int) -> None:
        """The metric lines and summaries of one validation; ``images``: name -> uint8
        [N, H, W, 3] (drawn detections, PR curves, confusion matrix)."""
        self.log(sagemaker_metrics.validation_map(self.cluster.host, epoch - 1, result.mean_ap))
        self.log(f"validation after epoch {epoch}: " + result.format(self.class_names))
        if result.extra_metrics:
            self.log(f"validation after epoch {epoch}: " + "  ".join(
                f"{name} {value:.4f}" for name, value in result.extra_metrics.items()))
        with self.val_writer.as_default(step=step):
            tf.summary.scalar("mAP", result.mean_ap)
            for name, value in result.extra_metrics.items():
                if not np.isnan(value):
                    tf.summary.scalar(name, value)
            for name, batch in images.items():
                if len(batch):
                    tf.summary.image(name, batch, max_outputs=SUMMARY_IMAGES)
            for name, ap in zip(self.class_names, result.ap):
                if not np.isnan(ap):
                    tf.summary.scalar(f"AP/{name}", ap)

    def exported_validation(self, early, evaluated: float | None, how: str) -> None:
        """The validation:mAP line of the exported model (a run that validated), after every
        epoch's: SageMaker's tuning reads a job's last value, which is then the deployed model's.

        ``early``: the early-stopping record (the best epoch, whose weights were exported, and
        its mAP); ``evaluated``: the export evaluated again in its own precision, else None
        (then ``how`` says why the best epoch's mAP is the export's).
        """
        if not early.best_epoch:
            return
        cfg = self.config.train
        if evaluated is not None:
            how = (f"evaluated again in the export's {cfg.export_precision}; the run validated "
                   f"it in {cfg.precision}: {early.best:.4f}")
        mean_ap = early.best if evaluated is None else evaluated
        self.log(f"validation mAP of the exported model (the weights of epoch "
                 f"{early.best_epoch}): {mean_ap:.4f} ({how}).")
        self.log(sagemaker_metrics.validation_map(self.cluster.host, early.best_epoch - 1,
                                                  mean_ap))

    def evaluation_report(self, validator, epoch: int) -> None:
        """The report of ``validator``'s last evaluation (evaluation/plots.py: PR and F1 curves,
        confusion matrix, AP by size, worst images) into MODEL_DIR/report, and a line about it."""
        folder = os.path.join(self.config.train.model_dir, "report")
        figures = validator.write_report(folder)
        best = figures.curves[report.OVERALL].best()
        threshold = (f"; F1 is best ({best['f1']:.3f}) at score >= {best['threshold']:.2f}"
                     if best["threshold"] is not None else "")
        self.log(f"Evaluation report of the weights of epoch {epoch}: {folder} (PR and F1 "
                 f"curves, confusion matrix, AP by size, worst images){threshold}.")
