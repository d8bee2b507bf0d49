"""Validation metrics of an exported model on TFRecords: a SavedModel, a .tflite or an .xml.

  python -m tfssd.cli.evaluate --model=EXPORT_DIR --validation=data/val-* [--metrics=voc,coco]
  python -m tfssd.cli.evaluate --model=model.tflite --validation=data/val-*

The model sees the encoded images as a deployment would: a SavedModel decodes and resizes them
in its serving graph, a .tflite gets them decoded and resized on the host (tfssd.deploy.detector).
``voc`` prints per-class AP and the mAP at --overlap_threshold (tfssd's VOC evaluation), and
SageMaker's validation:mAP line inside a SageMaker container or with --metric_lines; ``coco``
prints COCO's AP@[.5:.95], AP50, AP75 and AP by object size, computed by pycocotools.

--report=DIR also writes a report a person can act on into DIR (tfssd.evaluation.plots):
per-class precision-recall and F1-against-threshold curves with the threshold that maximises F1
(report.json), the confusion matrix at --overlap_threshold with a background row and column, AP
and recall by object size at the network input (small < 32², large >= 96² pixels), and the
images with the most errors drawn; plots as PNG beside their CSV and JSON figures.
"""

import sys

from absl import app, flags

from tfssd.cli.command_runner import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "An exported SavedModel (or its directory of versions: the highest is "
                        "used), a .tflite file from tfssd-export-tflite or an OpenVINO .xml from "
                        "tfssd-export-openvino.")
    flags.DEFINE_string("saved_model", None, "The same as --model (the older name).")
    flags.DEFINE_enum("openvino_precision", "float32", ["float32", "bfloat16"],
                      "An OpenVINO .xml's inference precision on the CPU: float32 gives the "
                      "SavedModel's detections; bfloat16 is faster on CPUs with AMX.")
    flags.DEFINE_list("validation", None, "TFRecord files, globs or directories.")
    flags.DEFINE_list("metrics", ["voc"], "Any of: voc (mAP at --overlap_threshold), coco "
                      "(AP@[.5:.95], AP50, AP75, AP small/medium/large, by pycocotools).")
    flags.DEFINE_float("overlap_threshold", 0.5, "voc: IoU for a detection to match, in (0, 1].")
    flags.DEFINE_enum("ap_method", "11point", ["11point", "allpoint"], "VOC AP interpolation.")
    flags.DEFINE_integer("label_width", 350, "Labels are at most this long.")
    flags.DEFINE_integer("batch_size", 16, "Images per call of the model.")
    flags.DEFINE_enum("input_format", "auto", ["auto", "tfssd", "odapi"],
                      "TFRecord schema: tfssd's, odapi (TF Object Detection API: image/object/"
                      "bbox/*, class labels from 1), or auto (detected).")
    flags.DEFINE_bool("skip_corrupt_records", False,
                      "Skip records whose label does not fit --label_width or is invalid, "
                      "instead of stopping with the record named.")
    flags.DEFINE_integer("num_threads", None, ".tflite and .xml only: LiteRT's or OpenVINO's "
                         "CPU threads.")
    flags.DEFINE_string("report", None, "Also write the report (PR and F1 curves, confusion "
                        "matrix, AP by object size, worst images: PNG, CSV, JSON) into this "
                        "directory.")
    flags.DEFINE_integer("image_shape", None, "--report: the network's input side, for object "
                         "sizes; default: the model's (a .tflite or model directory), else 300.")
    flags.DEFINE_bool("metric_lines", None,
                      "voc: also print SageMaker's validation:mAP metric line (#quality_metric). "
                      "Default: inside a SageMaker container only.")
    flags.mark_flags_as_mutual_exclusive(["model", "saved_model"], required=True)
    flags.mark_flag_as_required("validation")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tfssd import api
    from tfssd.config.sagemaker_container import in_container
    from tfssd.training import sagemaker_metrics
    from tfssd.training.distribution import Cluster

    if FLAGS.report:
        _check_report_dir(FLAGS.report)
    if FLAGS.image_shape is not None and FLAGS.image_shape < 1:
        raise app.UsageError(f"--image_shape={FLAGS.image_shape}: expected a positive side")
    try:
        report = api.evaluate(
            FLAGS.model or FLAGS.saved_model, FLAGS.validation, metrics=FLAGS.metrics,
            overlap_threshold=FLAGS.overlap_threshold, ap_method=FLAGS.ap_method,
            label_width=FLAGS.label_width, batch_size=FLAGS.batch_size,
            input_format=FLAGS.input_format, skip_corrupt_records=FLAGS.skip_corrupt_records,
            num_threads=FLAGS.num_threads, report_dir=FLAGS.report,
            image_shape=FLAGS.image_shape, openvino_precision=FLAGS.openvino_precision)
    except api.EvaluationDataError as e:
        print(f"tfssd-evaluate: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise app.UsageError(_as_flag(str(e))) from None
    print(f"{report.model_path}: {report.num_images} images")
    if report.voc is not None:
        print(f"VOC: IoU > {FLAGS.overlap_threshold}, {FLAGS.ap_method} AP")
        print(report.voc.format(report.class_names))
        if (in_container() if FLAGS.metric_lines is None else FLAGS.metric_lines):
            print(sagemaker_metrics.validation_map(Cluster().host, 0, report.voc.mean_ap))
    if report.coco is not None:
        print(report.coco.format(report.class_names))
    if report.figures is not None:
        _print_report(report.figures)


def _check_report_dir(path: str) -> None:
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise app.UsageError(f"--report={path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise app.UsageError(f"--report={path}: cannot create the directory ({e.strerror})"
                             ) from None


def _print_report(figures) -> None:
    from tfssd.evaluation import report

    overall = figures.curves[report.OVERALL].best()
    print(f"report: {FLAGS.report} (objects sized at {figures.image_shape}x"
          f"{figures.image_shape})")
    if overall["threshold"] is not None:
        print(f"  best overall F1 {overall['f1']:.3f} at score >= {overall['threshold']:.3f} "
              f"(precision {overall['precision']:.3f}, recall {overall['recall']:.3f})")
    for name in report.SIZES:
        size = figures.sizes[name]
        if size["objects"]:
            print(f"  {name:6s} {size['objects']:6d} objects: mAP {size['mAP']:.4f}, "
                  f"recall {size['recall']:.3f}")


def _as_flag(message: str) -> str:
    """The API names its arguments (``metrics=...``); the command names its flags."""
    for name in ("overlap_threshold", "metrics", "validation"):
        if message.startswith(f"{name}="):
            return "--" + message
    return message


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
