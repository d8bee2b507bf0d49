"""Validation metrics of an exported model on TFRecords: a SavedModel or a .tflite file.

  python -m tfssd.evaluate --model=EXPORT_DIR --validation=data/val-* [--metrics=voc,coco]
  python -m tfssd.evaluate --model=model.tflite --validation=data/val-*

The model sees the encoded images as a deployment would: a SavedModel decodes and resizes them
in its serving graph, a .tflite gets them decoded and resized on the host (tfssd.detectors).
``voc`` prints per-class AP and the mAP at --overlap_threshold (tfssd's VOC evaluation), also as
SageMaker's validation:mAP line; ``coco`` prints COCO's AP@[.5:.95], AP50, AP75 and AP by object
size, computed by pycocotools.
"""

import sys

from absl import app, flags

from tfssd.command import run_command

FLAGS = flags.FLAGS
METRICS = ("voc", "coco")


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "An exported SavedModel (or its directory of versions: the highest is "
                        "used) or a .tflite file from tfssd-export-tflite.")
    flags.DEFINE_string("saved_model", None, "The same as --model (the older name).")
    flags.DEFINE_list("validation", None, "TFRecord files, globs or directories.")
    flags.DEFINE_list("metrics", ["voc"], "Any of: voc (mAP at --overlap_threshold), coco "
                      "(AP@[.5:.95], AP50, AP75, AP small/medium/large, by pycocotools).")
    flags.DEFINE_float("overlap_threshold", 0.5, "voc: IoU for a detection to match, in (0, 1].")
    flags.DEFINE_enum("ap_method", "11point", ["11point", "allpoint"], "VOC AP interpolation.")
    flags.DEFINE_integer("label_width", 350, "Labels are at most this long.")
    flags.DEFINE_integer("batch_size", 16, "Images per call of the model.")
    flags.DEFINE_bool("skip_corrupt_records", False,
                      "Skip records whose label does not fit --label_width or is invalid, "
                      "instead of stopping with the record named.")
    flags.DEFINE_integer("num_threads", None, ".tflite only: LiteRT's CPU threads.")
    flags.mark_flags_as_mutual_exclusive(["model", "saved_model"], required=True)
    flags.mark_flag_as_required("validation")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not 0 < FLAGS.overlap_threshold <= 1:
        raise app.UsageError(f"--overlap_threshold={FLAGS.overlap_threshold}: expected (0, 1]")
    unknown = [m for m in FLAGS.metrics if m not in METRICS]
    if unknown or not FLAGS.metrics:
        raise app.UsageError(f"--metrics={','.join(FLAGS.metrics)}: expected one or more of "
                             f"{', '.join(METRICS)}")
    from tfssd.files import expand_files

    files = expand_files(FLAGS.validation)
    if not files:
        raise app.UsageError(f"--validation={','.join(FLAGS.validation)}: no file matches")
    import tensorflow as tf

    from tfssd import detectors, sagemaker_metrics
    from tfssd.coco_metrics import COCOEvaluator
    from tfssd.data import pipeline
    from tfssd.distribute import Cluster
    from tfssd.evaluation import DetectionEvaluator
    from tfssd.image_check import inspect_image
    from tfssd.training import errors
    from tfssd.training.validation import evaluate_batches

    try:
        detector = detectors.load_detector(FLAGS.model or FLAGS.saved_model, FLAGS.num_threads)
    except (FileNotFoundError, ImportError) as e:
        raise app.UsageError(str(e)) from None
    class_names = detector.class_names
    num_classes = len(class_names)
    dataset = pipeline.build_eval_dataset(files, image_size=None, label_width=FLAGS.label_width,
                                          batch_size=FLAGS.batch_size,
                                          skip_corrupt_records=FLAGS.skip_corrupt_records)
    evaluator = DetectionEvaluator(num_classes, FLAGS.overlap_threshold, FLAGS.ap_method)
    coco = COCOEvaluator(num_classes) if "coco" in FLAGS.metrics else None

    def add_to_coco(batch, detections):
        # COCO's object sizes are in pixels: each image's size, read from its header.
        sizes = [inspect_image(data, name.decode(errors="replace"), max_pixels=0, decode=False)
                 for data, name in zip(batch["image_bytes"].numpy(), batch["filename"].numpy())]
        coco.add_batch(detections, batch, [(info.height, info.width) for info in sizes])

    try:
        result = evaluate_batches(dataset, lambda batch: detector(batch["image_bytes"]),
                                  evaluator, add_to_coco if coco else None)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        # A record the model or the pipeline cannot take: named, with what to do.
        known = errors.data_error(e, files, "tfssd")
        print(f"tfssd-evaluate: {known if known is not e else errors.cause(e)}", file=sys.stderr)
        sys.exit(1)
    print(f"{detector.path}: {evaluator.num_images} images")
    if "voc" in FLAGS.metrics:
        print(f"VOC: IoU > {FLAGS.overlap_threshold}, {FLAGS.ap_method} AP")
        print(result.format(class_names))
        print(sagemaker_metrics.validation_map(Cluster().host, 0, result.mean_ap))
    if coco:
        print(coco.result().format(class_names))


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
