"""What a run reports: lines for people, SageMaker's metric lines and TensorBoard summaries.

Lines for people go through absl's log (``--verbosity``/``-v``; absl's own file under
``--log_dir``). tfssd-train shows them without absl's prefixes (``terminal_output``): on a
terminal, a live bar per epoch that a summary line with validation mAP replaces at its end;
elsewhere, one plain line per progress report, without carriage returns. Warnings and errors
start with ``warning:`` and ``error:``.

Lines for parsers: SageMaker's metric definitions read the ``#quality_metric``-style lines of
sagemaker_metrics.py from a job's log; they are written inside a SageMaker job (a container, or
``in_sagemaker_job``) or where asked (tfssd-train's ``--metric_lines``), and nowhere else.

Only the chief reports; other workers write to no-op summary writers and log nothing but their
final weights digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging as python_logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from tfssd.config import sagemaker_container
from tfssd.config.run_config import Config
from tfssd.evaluation import report
from tfssd.evaluation.validation import SUMMARY_IMAGES
from tfssd.evaluation.voc_ap import EvaluationResult
from tfssd.training import sagemaker_metrics
from tfssd.training.distribution import Cluster

SHOWN_LIVE = "tfssd_shown_live"  # on a log record: a progress line that a live bar shows instead
PROGRAM = "tfssd-train"  # the name of the log file under --log_dir


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights' bytes: equal on every dist_sync worker when they agree exactly."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class _Terminal:
    """This process's output for people and parsers (one per process: its stderr)."""

    stream: TextIO | None = None  # lines for people go here; None: absl's handler as it is
    live: bool = False  # ``stream`` is a terminal: a progress bar per epoch, redrawn in place
    metric_lines: bool | None = None  # None: inside a SageMaker job only
    sagemaker_jobs: int = 0  # in_sagemaker_job blocks entered
    bar: tqdm | None = None

    def wants_metric_lines(self) -> bool:
        if self.metric_lines is not None:
            return self.metric_lines
        return bool(self.sagemaker_jobs) or sagemaker_container.in_container()

    def write(self, text: str) -> None:
        if self.live:
            tqdm.write(text, file=self.stream)  # above the bar, which is drawn again below
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def show_progress(self, description: str, done: int, total: int, status: str | None):
        """The live bar: ``done`` of ``total`` steps, then ``status`` (loss, rate, ETA)."""
        if self.bar is not None and self.bar.desc != description:
            self.end_progress()
        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc=description, file=self.stream,
                            leave=False, dynamic_ncols=True, mininterval=0.2,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                       "{n_fmt}/{total_fmt} steps{postfix}")
        self.bar.n = done
        self.bar.set_postfix_str(status or "", refresh=False)
        self.bar.refresh()

    def end_progress(self) -> None:
        """Takes the bar off the screen (a summary line replaces it)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_terminal = _Terminal()


def _own_info_only(record: python_logging.LogRecord) -> bool:
    """tfssd's INFO lines and everyone's warnings and errors: TensorFlow's modules log through
    absl too (a line per checkpoint shard, a cluster's whole server configuration)."""
    return record.levelno > python_logging.INFO or f"{os.sep}tfssd{os.sep}" in record.pathname


class _LinesForPeople(python_logging.Handler):
    """absl's records as lines for people: the message alone, warnings and errors prefixed.

    Progress lines that the live bar shows are left out (absl's log file still has them).
    """

    def __init__(self, terminal: _Terminal):
        super().__init__()
        self.terminal = terminal
        self.setFormatter(python_logging.Formatter("%(message)s"))
        self.addFilter(_own_info_only)
        self.addFilter(lambda record: not (terminal.live and getattr(record, SHOWN_LIVE, False)))

    def emit(self, record: python_logging.LogRecord) -> None:
        try:
            level = record.levelno
            prefix = ("error: " if level >= python_logging.ERROR else
                      "warning: " if level >= python_logging.WARNING else "")
            self.terminal.write(prefix + self.format(record))
        except Exception:  # noqa: BLE001 -- logging's own rule: never raise from a handler
            self.handleError(record)


@contextlib.contextmanager
def terminal_output(metric_lines: bool | None = None, log_dir: str | None = None,
                    absl_on_stderr: bool = False, stream: TextIO | None = None):
    """tfssd-train's output within the block: lines for people on ``stream`` (stderr).

    Without absl's prefixes; on a terminal a live bar per epoch; warnings and errors prefixed.
    ``log_dir`` (absl's ``--log_dir``) gets absl's full log with its prefixes;
    ``absl_on_stderr`` (``--logtostderr``, ``--alsologtostderr``) keeps absl's own lines on
    stderr instead (then no bar). ``metric_lines``: SageMaker's metric lines too (True), never
    (False), inside a SageMaker job only (None). When the block ends, however it ends, the bar
    is taken off the screen and absl's handler writes where it wrote before.
    """
    stream = stream or sys.stderr
    previous = dataclasses.replace(_terminal)
    _terminal.metric_lines = metric_lines
    absl_handler = logging.get_absl_handler().python_handler
    absl_handler.addFilter(_own_info_only)
    if absl_on_stderr or _terminal.stream is not None:  # absl's lines, or already set up
        try:
            yield
        finally:
            absl_handler.removeFilter(_own_info_only)
            _terminal.metric_lines = previous.metric_lines
        return
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        absl_stream = absl_handler.stream
        absl_handler.use_absl_log_file(PROGRAM, log_dir)  # and only FATAL on stderr
    else:  # absl's handler stays (it aborts on FATAL) and writes nowhere
        absl_stream = absl_handler.setStream(open(os.devnull, "w", encoding="utf-8"))
    _terminal.stream, _terminal.live = stream, stream.isatty()
    people = _LinesForPeople(_terminal)
    python_logging.getLogger().addHandler(people)
    try:
        yield
    finally:
        _terminal.end_progress()
        python_logging.getLogger().removeHandler(people)
        absl_handler.removeFilter(_own_info_only)
        ours = absl_handler.setStream(absl_stream)  # the log file, or os.devnull
        if ours is not None:
            ours.close()
        _terminal.stream, _terminal.live = None, False
        _terminal.metric_lines = previous.metric_lines


@contextlib.contextmanager
def in_sagemaker_job():
    """Within: a SageMaker job's run, whose metric lines its definitions read (unless the user
    turned them off), whichever environment the job's files were found by."""
    _terminal.sagemaker_jobs += 1
    try:
        yield
    finally:
        _terminal.sagemaker_jobs -= 1


@dataclasses.dataclass
class _EpochFigures:
    """The progress reports of one epoch, summed for its summary line."""

    epoch: int  # from 1
    losses: int = 0  # steps with losses (loss scaling's skipped steps have none)
    cross_entropy: float = 0.0
    smooth_l1: float = 0.0
    images: int = 0
    seconds: float = 0.0
    learning_rate: float | None = None
    status: str | None = None  # the live bar's text after the steps count


class Reporter:
    """Progress, validation and the run's settings: lines for people and parsers, TensorBoard."""

    def __init__(self, config: Config, cluster: Cluster, directory: str,
                 class_names: list[str], learning_rate):
        self.config = config
        self.cluster = cluster
        self.class_names = class_names
        self._learning_rate = learning_rate  # () -> the rate of the last step run
        self.metric_lines = cluster.is_chief and _terminal.wants_metric_lines()
        self._live = cluster.is_chief and _terminal.live
        self._epoch: _EpochFigures | None = None
        writer = tf.summary.create_file_writer if cluster.is_chief else (
            lambda _: tf.summary.create_noop_writer())
        self.train_writer = writer(os.path.join(directory, "train"))
        self.val_writer = writer(os.path.join(directory, "validation"))

    def log(self, line: str, shown_live: bool = False) -> None:
        """A line for people (the chief's); ``shown_live``: a live bar shows it instead."""
        if self.cluster.is_chief:
            logging.info(line, extra={SHOWN_LIVE: shown_live})

    def metric(self, line: str) -> None:
        """A line for SageMaker's metric definitions, where they are read."""
        if self.metric_lines:
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

    def _epoch_of(self, step: int) -> tuple[_EpochFigures, int]:
        """The figures of the epoch that ``step`` (from 1) belongs to, and its step in it."""
        epoch, batch = divmod(step - 1, self.config.train.steps_per_epoch)
        if self._epoch is None or self._epoch.epoch != epoch + 1:
            self._epoch = _EpochFigures(epoch + 1)
        return self._epoch, batch + 1

    def step(self, step: int) -> None:
        """Step ``step`` (from 1) has run: the live bar counts it (nothing elsewhere)."""
        if self._live:
            figures, done = self._epoch_of(step)
            self._show(figures, done)

    def _show(self, figures: _EpochFigures, done: int) -> None:
        cfg = self.config.train
        _terminal.show_progress(f"epoch {figures.epoch}/{cfg.epochs}", done, cfg.steps_per_epoch,
                                figures.status)

    def progress(self, step: int, losses: list[tuple[float, float]], seconds: float,
                 run_rate: float, skipped: int = 0) -> None:
        """The mean losses of the steps since the last report, their speed and the ETA.

        ``skipped``: steps loss scaling skipped meanwhile (not in ``losses``).
        """
        cfg, host = self.config.train, self.cluster.host
        figures, done = self._epoch_of(step)
        figures.images += (len(losses) + skipped) * cfg.global_batch_size
        figures.seconds += seconds
        if skipped:
            self.log(f"step {step}: {skipped} step(s) skipped since the last report: non-finite "
                     "gradients under loss scaling (the scale was lowered)")
            with self.train_writer.as_default(step=step):
                tf.summary.scalar("skipped_steps", skipped)
        if not losses:
            return
        epoch, batch = figures.epoch - 1, done - 1
        images_per_s = (len(losses) + skipped) * cfg.global_batch_size / max(seconds, 1e-9)
        mean_cls = sum(c for c, _ in losses) / len(losses)
        mean_box = sum(b for _, b in losses) / len(losses)
        figures.losses += len(losses)
        figures.cross_entropy += sum(c for c, _ in losses)
        figures.smooth_l1 += sum(b for _, b in losses)
        learning_rate = figures.learning_rate = float(self._learning_rate())
        eta = format_duration((cfg.total_steps - step) / max(run_rate, 1e-9))
        figures.status = (f"loss {mean_cls + mean_box:.4f}, lr {learning_rate:.3g}, "
                          f"{images_per_s:.2f} images/s, ETA {eta}")
        if self._live:
            self._show(figures, done)
        self.log(f"epoch {epoch + 1}/{cfg.epochs} step {batch + 1}/{cfg.steps_per_epoch} "
                 f"loss {mean_cls + mean_box:.4f} (cross_entropy {mean_cls:.4f}, "
                 f"smooth_l1 {mean_box:.4f}) lr {learning_rate:.3g} "
                 f"{images_per_s:.2f} images/s ETA {eta}", shown_live=True)
        self.metric(sagemaker_metrics.train_loss(host, epoch, batch, "cross_entropy", mean_cls))
        self.metric(sagemaker_metrics.train_loss(host, epoch, batch, "smooth_l1", mean_box))
        self.metric(sagemaker_metrics.throughput(host, images_per_s))
        self.metric(sagemaker_metrics.progress(host, 100.0 * step / cfg.total_steps))
        with self.train_writer.as_default(step=step):
            tf.summary.scalar("loss/total", mean_cls + mean_box)
            tf.summary.scalar("loss/cross_entropy", mean_cls)
            tf.summary.scalar("loss/smooth_l1", mean_box)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("throughput_images_per_second", images_per_s)

    def validating(self, epoch: int) -> None:
        """Validation of ``epoch`` begins: the live bar says so until its summary line."""
        figures = self._epoch
        if self._live and figures is not None and figures.epoch == epoch:
            figures.status = ", ".join(filter(None, (figures.status, "validating")))
            self._show(figures, self.config.train.steps_per_epoch)

    def epoch_summary(self, epoch: int, mean_ap: float | None = None) -> str:
        """The line that ends epoch ``epoch`` (from 1): its training time, mean loss, last rate
        and speed over the steps this process ran of it, and its validation mAP when validated.
        """
        figures = self._epoch if self._epoch and self._epoch.epoch == epoch else None
        parts = []
        if figures and figures.losses:
            mean_loss = (figures.cross_entropy + figures.smooth_l1) / figures.losses
            parts.append(f"loss {mean_loss:.4f}")
        if figures and figures.learning_rate is not None:
            parts.append(f"lr {figures.learning_rate:.3g}")
        if figures and figures.seconds > 0:
            parts.append(f"{figures.images / figures.seconds:.2f} images/s")
        if mean_ap is not None:
            parts.append(f"validation mAP {mean_ap:.4f}")
        took = f" ({format_duration(figures.seconds)})" if figures and figures.seconds else ""
        return f"epoch {epoch}/{self.config.train.epochs}{took}: " + ", ".join(parts)

    def end_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` ended without validation: its summary line replaces the bar."""
        if self.cluster.is_chief:
            _terminal.end_progress()
        self.log(self.epoch_summary(epoch))

    def validation(self, result: EvaluationResult, images: Mapping[str, np.ndarray],
                   epoch: int, step: int) -> None:
        """The summary line of epoch ``epoch`` with its validation mAP and AP by class, the
        metric line and summaries; ``images``: name -> uint8 [N, H, W, 3] (drawn detections,
        PR curves, confusion matrix)."""
        if self.cluster.is_chief:
            _terminal.end_progress()
        by_class = result.format(self.class_names).splitlines()[1:]  # after its "mAP" line
        self.log("\n".join([self.epoch_summary(epoch, result.mean_ap), *by_class]))
        if result.extra_metrics:
            self.log(f"validation after epoch {epoch}: " + "  ".join(
                f"{name} {value:.4f}" for name, value in result.extra_metrics.items()))
        self.metric(sagemaker_metrics.validation_map(self.cluster.host, epoch - 1,
                                                     result.mean_ap))
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
        self.metric(sagemaker_metrics.validation_map(self.cluster.host, early.best_epoch - 1,
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
