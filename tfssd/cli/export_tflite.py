"""Exports a trained SSD as a TFLite model for phones and edge devices.

  python -m tfssd.cli.export_tflite --model=MODEL_DIR_OR_EXPORT --output=ssd.tflite \
      [--quantize=none|float16|int8] [--representative='data/train-*' --calibration_images=100]

Writes ssd.tflite (input images [1, S, S, 3]: float32 RGB 0..255, uint8 with int8; outputs as
the TF Object Detection API's TFLite SSDs, through TFLite_Detection_PostProcess with the anchors
inside) and ssd.labels.txt (class names by id), also stored in the model's metadata. See
tfssd/deploy/tflite.py. --model is a tfssd model directory or an exported SavedModel; the
thresholds and class names are the trained model's.
"""

import os

from absl import app, flags, logging

from tfssd.cli.command_runner import run_command
from tfssd.config.run_config import TFLITE_QUANTIZATIONS

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "A tfssd model directory (tfssd_run.json and checkpoints: the best "
                        "weights, else the latest) or an exported SavedModel (or its directory "
                        "of versions: the highest).")
    flags.DEFINE_string("output", None, "The .tflite file to write; the class names go beside "
                        "it as <name>.labels.txt.")
    flags.DEFINE_enum("quantize", "none", list(TFLITE_QUANTIZATIONS),
                      "none: float32; float16: float16 weights (half the size); int8: integer "
                      "weights and activations calibrated on --representative, uint8 input.")
    flags.DEFINE_list("representative", None, "int8: TFRecord files, globs or directories whose "
                      "images calibrate the quantization (training images are best).")
    flags.DEFINE_integer("calibration_images", 100, "int8: how many --representative images "
                         "calibrate (the first ones in file order).")
    flags.DEFINE_boolean("fast_nms", False,
                         "TFLite's fast NMS: one class per box, one class-agnostic NMS (the OD "
                         "API's default; faster, differs from the SavedModel). Default: per-class "
                         "NMS, as the SavedModel.")
    define_postprocess_flags()
    flags.mark_flags_as_required(["model", "output"])


def define_postprocess_flags() -> None:
    """The post-processing overrides every export command takes."""
    flags.DEFINE_float("nms_threshold", None, "Overrides the model's NMS IoU threshold.")
    flags.DEFINE_float("score_threshold", None, "Overrides the model's score threshold (0.01).")
    flags.DEFINE_integer("max_detections", None, "Overrides the model's detections per image.")


def check_export_flags() -> None:
    """Usage errors of the flags every export command shares (calibration, post-processing,
    --model)."""
    if FLAGS.calibration_images < 1:
        raise app.UsageError(f"--calibration_images={FLAGS.calibration_images}: expected >= 1")
    if FLAGS.nms_threshold is not None and not 0 < FLAGS.nms_threshold <= 1:
        raise app.UsageError(f"--nms_threshold={FLAGS.nms_threshold}: expected (0, 1]")
    if FLAGS.score_threshold is not None and not 0 <= FLAGS.score_threshold < 1:
        raise app.UsageError(f"--score_threshold={FLAGS.score_threshold}: expected [0, 1)")
    if FLAGS.max_detections is not None and FLAGS.max_detections < 1:
        raise app.UsageError(f"--max_detections={FLAGS.max_detections}: expected >= 1")
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model}: no such file or directory")


def load_model_to_export():
    """--model as a TrainedSSD with the post-processing flags applied; a model the flags do not
    fit is a usage error."""
    from tfssd.deploy import trained_ssd

    try:
        ssd = trained_ssd.load_trained_ssd(
            FLAGS.model, nms_threshold=FLAGS.nms_threshold, score_threshold=FLAGS.score_threshold,
            max_detections=FLAGS.max_detections)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return ssd


def calibration_images(files: tuple[str, ...], image_size: int, count: int):
    """The first ``count`` images of ``files``, decoded and resized as the host feeds them."""
    import tensorflow as tf

    from tfssd.data import schema
    from tfssd.ops.image_ops import decode_image, resize

    parse = schema.PARSERS[schema.resolve_format(files, "auto")]
    dataset = tf.data.TFRecordDataset(list(files)).take(count).map(
        lambda record: resize(decode_image(parse(record)["image_bytes"]), image_size))
    return lambda: (image.numpy() for image in dataset)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer's and converter's INFO lines
    if not FLAGS.output.endswith(".tflite"):
        raise app.UsageError(f"--output={FLAGS.output}: expected a file name ending in .tflite")
    if (FLAGS.quantize == "int8") != bool(FLAGS.representative):
        raise app.UsageError("--quantize=int8 needs --representative (images to calibrate on), "
                             "and --representative is only used by --quantize=int8")
    check_export_flags()
    files = ()
    if FLAGS.representative:
        from tfssd.config.input_files import expand_files

        files = expand_files(FLAGS.representative)
        if not files:
            raise app.UsageError(f"--representative={','.join(FLAGS.representative)}: no file "
                                 "matches")
    from tfssd.deploy import tflite as tflite_export

    ssd = load_model_to_export()
    representative = (calibration_images(files, ssd.image_size, FLAGS.calibration_images)
                      if files else None)
    model_path, labels = tflite_export.export_tflite(ssd, FLAGS.output, FLAGS.quantize,
                                                     representative,
                                                     regular_nms=not FLAGS.fast_nms)
    size = os.path.getsize(model_path)
    print(f"{model_path}: {size / 2**20:.2f} MiB, quantize={FLAGS.quantize}, input "
          f"[1, {ssd.image_size}, {ssd.image_size}, 3] "
          f"{'uint8' if FLAGS.quantize == 'int8' else 'float32'}, {ssd.num_classes} classes, "
          f"NMS IoU {ssd.nms_threshold:g} ({'fast' if FLAGS.fast_nms else 'per class'}), "
          f"score >= {ssd.score_threshold:g}, at most {ssd.max_detections} detections; "
          f"from {ssd.source}")
    print(f"{labels}: class names")


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
