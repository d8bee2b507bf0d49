"""Evaluation reports on disk and for TensorBoard: matplotlib plots, PNG, the worst images.

Plots are drawn with matplotlib's Agg backend on ``Figure`` objects (no pyplot state, so
training threads can draw too), each FIGURE_PX pixels. ``write_report`` writes a whole report
into a directory (tfssd-evaluate --report, the end of training); ``report_images`` returns the
PR curves and the confusion matrix as uint8 images for TensorBoard.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfssd.evaluation import report
from tfssd.evaluation.voc_ap import DetectionEvaluator
from tfssd.ops import drawing

FIGURE_PX = (800, 600)  # width, height of every plot
_DPI = 100
MAX_LEGEND = 20  # classes named in a legend; more are drawn unnamed
WORST_IMAGES = 8  # images drawn with the most errors
WORST_IMAGE_SIDE = 512  # their longer side in the PNG, per panel


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(FIGURE_PX[0] / _DPI, FIGURE_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _pixels(figure: Figure) -> np.ndarray:
    """uint8 [H, W, 3]: the figure rendered."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def _class_curves(figures: report.ReportFigures):
    """(name, curve, is_overall) of each class with objects or detections, then overall."""
    for key, curve in figures.curves.items():
        if key == report.OVERALL or curve.num_ground_truth or len(curve.thresholds):
            yield report.curve_name(figures, key), curve, key == report.OVERALL


def plot_pr_curves(figures: report.ReportFigures) -> Figure:
    """Precision against recall per class and overall, the best-F1 point of each marked."""
    figure, axes = _figure()
    curves = list(_class_curves(figures))
    for name, curve, overall in curves:
        style = dict(color="black", linewidth=2.5) if overall else dict(linewidth=1)
        best = curve.best()
        label = (f"{name} (best F1 {best['f1']:.2f} at {best['threshold']:.2f})"
                 if best["threshold"] is not None else name)
        # From recall 0 at the first point's precision, so a one-point curve shows too.
        start = 1 if len(curve.recall) else 0
        line, = axes.plot(np.append(np.zeros(start), curve.recall),
                          np.append(curve.precision[:start], curve.precision),
                          label=label if overall or len(curves) <= MAX_LEGEND else None, **style)
        if best["threshold"] is not None:
            axes.plot([best["recall"]], [best["precision"]], "o", color=line.get_color())
    axes.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
             title=f"Precision-recall at IoU > {figures.iou_threshold:g}")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="x-small")
    return figure


def plot_f1(figures: report.ReportFigures) -> Figure:
    """F1 against the score threshold per class and overall; the best overall threshold marked."""
    figure, axes = _figure()
    grid = np.linspace(0, 1, 201)
    curves = list(_class_curves(figures))
    for name, curve, overall in curves:
        style = dict(color="black", linewidth=2.5) if overall else dict(linewidth=1)
        axes.plot(grid, [curve.at(t)[2] for t in grid],
                  label=name if overall or len(curves) <= MAX_LEGEND else None, **style)
    axes.axvline(figures.best_threshold, color="gray", linestyle="--",
                 label=f"best overall threshold {figures.best_threshold:.2f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1",
             title="F1 against the score threshold")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="x-small")
    return figure


def plot_confusion(figures: report.ReportFigures) -> Figure:
    """The confusion matrix (rows ground truth, columns detections, background last)."""
    figure, axes = _figure()
    matrix = figures.confusion
    labels = figures.class_names + ["background"]
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    if len(labels) <= 25:
        for (row, column), value in np.ndenumerate(matrix):
            if value:
                axes.text(column, row, str(value), ha="center", va="center", fontsize="x-small",
                          color="white" if value > matrix.max() / 2 else "black")
    ticks = np.arange(len(labels)) if len(labels) <= 40 else []
    axes.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize="x-small")
    axes.set_yticks(ticks, [labels[t] for t in ticks], fontsize="x-small")
    axes.set(xlabel="detection", ylabel="ground truth",
             title=f"Confusion at IoU > {figures.iou_threshold:g}, "
                   f"score >= {figures.best_threshold:.2f}")
    figure.tight_layout()
    return figure


def plot_by_size(figures: report.ReportFigures) -> Figure:
    """mAP and recall per object size at the network input."""
    figure, axes = _figure()
    x = np.arange(len(report.SIZES))
    series = [("mAP", "mAP"), ("recall, all detections", "recall"),
              (f"recall at score >= {figures.best_threshold:.2f}", "recall_at_threshold")]
    for k, (label, key) in enumerate(series):
        values = [figures.sizes[s][key] for s in report.SIZES]
        values = [np.nan if v is None else v for v in values]
        axes.bar(x + (k - 1) * 0.27, np.nan_to_num(values), width=0.27, label=label)
    axes.set_xticks(x, [f"{s}\n({figures.sizes[s]['objects']} objects)" for s in report.SIZES])
    axes.set(ylim=(0, 1.02), title=f"By object area at {figures.image_shape}x"
             f"{figures.image_shape} input (small < 32², large >= 96² px)")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize="small")
    return figure


PLOTS = {"pr_curves": plot_pr_curves, "f1": plot_f1, "confusion_matrix": plot_confusion,
         "by_size": plot_by_size}


def report_images(evaluator: DetectionEvaluator, class_names: Sequence[str], image_shape: int,
                  names: Sequence[str] = ("pr_curves", "confusion_matrix")
                  ) -> dict[str, np.ndarray]:
    """Plots for TensorBoard: name -> uint8 [600, 800, 3] (FIGURE_PX), for each of ``names``."""
    figures = report.compute(evaluator, list(class_names), image_shape,
                             sizes="by_size" in names)
    return {name: _pixels(PLOTS[name](figures)) for name in names}


def worst_images(figures: report.ReportFigures, count: int = WORST_IMAGES) -> list[int]:
    """Indices of the images with the most errors (misses + false detections + confusions)."""
    totals = figures.image_errors.sum(axis=1) if len(figures.image_errors) else np.zeros(0)
    order = np.argsort(-totals, kind="stable")
    return [int(i) for i in order[:count] if totals[i] > 0]


def draw_errors(image: np.ndarray, entry: tuple, figures: report.ReportFigures) -> np.ndarray:
    """uint8: the image's ground truth (left) beside its detections at the best threshold."""
    det_boxes, scores, det_classes, gt_boxes, gt_classes, _ = entry
    scale = WORST_IMAGE_SIDE / max(image.shape[:2])
    if scale < 1:
        from PIL import Image

        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize(size))
    keep = scores >= figures.best_threshold
    truth = drawing.draw_boxes(image, gt_boxes, gt_classes, class_names=figures.class_names)
    found = drawing.draw_boxes(image, det_boxes[keep], det_classes[keep], scores[keep],
                               figures.class_names)
    return np.concatenate([truth, np.full((image.shape[0], 4, 3), 255, np.uint8), found], 1)


def write_report(evaluator: DetectionEvaluator, out_dir: str, class_names: Sequence[str],
                 image_shape: int, read_images=None, filenames: Sequence[str] = ()
                 ) -> report.ReportFigures:
    """Writes the whole report into ``out_dir`` (created if needed).

    Files: pr_curves.png, f1.png, confusion_matrix.png, by_size.png; pr_curve.csv, f1.csv,
    confusion_matrix.csv, by_size.json, report.json; worst_images.csv and worst_images/*.png
    when ``read_images`` is given.

    Args:
      evaluator: has seen every evaluated image (``DetectionEvaluator.add_batch``).
      out_dir: the report's directory.
      class_names: by class id.
      image_shape: side of the network input, for the object sizes.
      read_images: optional ``indices -> {index: uint8 [H, W, 3]}`` (indices in the order the
        evaluator saw the images), for drawing the worst images.
      filenames: optional, per evaluated image, for worst_images.csv.
    """
    figures = report.compute(evaluator, list(class_names), image_shape)
    report.write_tables(figures, out_dir)
    for name, plot in PLOTS.items():
        plot(figures).savefig(os.path.join(out_dir, f"{name}.png"), dpi=_DPI)
    worst = worst_images(figures)
    if read_images is not None and worst:
        images = read_images(worst)
        entries = evaluator.images()
        folder = os.path.join(out_dir, "worst_images")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(out_dir, "worst_images.csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["png", "image_index", "filename", "missed", "false_detections",
                          "class_confusions"])
            for rank, index in enumerate(worst):
                if index not in images:
                    continue
                png = f"worst_images/{rank:02d}_image{index}.png"
                drawing.save_png(draw_errors(images[index], entries[index], figures),
                                 os.path.join(out_dir, png))
                out.writerow([png, index, filenames[index] if index < len(filenames) else ""]
                             + [int(v) for v in figures.image_errors[index]])
    return figures


def records_reader(files: Sequence[str], input_format: str, filenames: Sequence[str] = ()):
    """A ``read_images`` for ``write_report``: the evaluated images, decoded from the records.

    Args:
      files: the evaluated TFRecord files, in the evaluation's order, or a streamed Pipe-mode
        channel's description (its next pass is read: the same images, as SageMaker resends
        them).
      input_format: their schema ("tfssd" or "odapi").
      filenames: per evaluated image, its record's filename; records that are not next in
        this list were skipped by the evaluation (--skip_corrupt_records). Empty: every record
        was evaluated.
    """
    def read(indices: Sequence[int]) -> dict[int, np.ndarray]:
        import tensorflow as tf

        from tfssd.data import pipeline, schema
        from tfssd.ops.image_ops import decode_image

        wanted, found, position = set(indices), {}, 0
        parse = schema.PARSERS[input_format]
        for serialized in pipeline.validation_records(tuple(files)):
            if len(found) == len(wanted):
                break
            example = parse(serialized)
            if filenames:
                if position >= len(filenames):
                    break
                if example["filename"].numpy().decode(errors="replace") != filenames[position]:
                    continue
            if position in wanted:
                try:
                    found[position] = decode_image(example["image_bytes"]).numpy()
                except tf.errors.InvalidArgumentError:
                    pass
            position += 1
        return found

    return read
