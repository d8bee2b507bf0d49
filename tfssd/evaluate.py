"""Validation mAP of an exported SavedModel on TFRecords, through its serving signature.

  python -m tfssd.evaluate --saved_model=EXPORT_DIR --validation=data/val-*

The model sees the encoded images exactly as a deployment would (decoding and resizing inside
the SavedModel). Prints per-class AP and the mAP, also as SageMaker's validation:mAP line.
"""

from absl import app, flags

from tfssd.command import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("saved_model", None, "An exported SavedModel or its directory of versions.")
    flags.DEFINE_list("validation", None, "TFRecord files, globs or directories.")
    flags.DEFINE_float("overlap_threshold", 0.5, "IoU for a detection to match, in (0, 1].")
    flags.DEFINE_enum("ap_method", "11point", ["11point", "allpoint"], "VOC AP interpolation.")
    flags.DEFINE_integer("label_width", 350, "Labels are at most this long.")
    flags.DEFINE_integer("batch_size", 16, "Images per call of the model.")
    flags.mark_flags_as_required(["saved_model", "validation"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not 0 < FLAGS.overlap_threshold <= 1:
        raise app.UsageError(f"--overlap_threshold={FLAGS.overlap_threshold}: expected (0, 1]")
    from tfssd.files import expand_files

    files = expand_files(FLAGS.validation)
    if not files:
        raise app.UsageError(f"--validation={','.join(FLAGS.validation)}: no file matches")
    import tensorflow as tf

    from tfssd import export, sagemaker_metrics
    from tfssd.data import pipeline
    from tfssd.distribute import Cluster
    from tfssd.evaluation import DetectionEvaluator
    from tfssd.training.validation import evaluate_batches

    path = export.latest_version(FLAGS.saved_model)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    class_names = export.read_labels(path)
    num_classes = len(class_names)
    dataset = pipeline.build_eval_dataset(files, image_size=None, label_width=FLAGS.label_width,
                                          batch_size=FLAGS.batch_size)
    evaluator = DetectionEvaluator(num_classes, FLAGS.overlap_threshold, FLAGS.ap_method)
    result = evaluate_batches(dataset, lambda batch: serve(images=batch["image_bytes"]),
                              evaluator)
    print(f"{path}: {evaluator.num_images} images, IoU > {FLAGS.overlap_threshold}, "
          f"{FLAGS.ap_method} AP")
    print(result.format(class_names))
    print(sagemaker_metrics.validation_map(Cluster().host, 0, result.mean_ap))


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
