"""Exports a trained SSD as an OpenVINO model for CPU inference, decoding and NMS inside.

  python -m tfssd.cli.export_openvino --model=MODEL_DIR_OR_EXPORT --output=ssd.xml \
      [--quantize=int8 --representative='data/train-*' --validation='data/val-*' \
       --max_map_drop=0.01 [--int8_fallback]]

Writes ssd.xml and ssd.bin (input images uint8 [B, S, S, 3] RGB, resized on the host; outputs
the TF Object Detection API's keys, through OpenVINO's MulticlassNms: see
tfssd/deploy/openvino_export.py) and ssd.labels.txt. bfloat16 is chosen when the model is
loaded (OpenVINO's inference precision hint), not here. int8 is calibrated by NNCF on
--representative and held to a gate: the VOC mAP of the int8 and the float32 model on
--validation; past --max_map_drop the command refuses (exit 1, nothing written) or, with
--int8_fallback, writes the float32 model instead.
"""

import os
import shutil
import tempfile

from absl import app, flags, logging

from tfssd.cli import export_tflite
from tfssd.cli.command_runner import fail, run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "A tfssd model directory (tfssd_run.json and checkpoints: the best "
                        "weights, else the latest) or an exported SavedModel (or its directory "
                        "of versions: the highest).")
    flags.DEFINE_string("output", None, "The .xml to write (its weights go to the .bin of the "
                        "same name); the class names go beside it as <name>.labels.txt.")
    flags.DEFINE_enum("quantize", "none", ["none", "int8"],
                      "none: float32 (run it in bfloat16 by choosing the precision at load "
                      "time); int8: NNCF post-training quantization calibrated on "
                      "--representative, held to --max_map_drop on --validation.")
    flags.DEFINE_list("representative", None, "int8: TFRecord files, globs or directories whose "
                      "images calibrate the quantization (training images are best).")
    flags.DEFINE_integer("calibration_images", 300, "int8: how many --representative images "
                         "calibrate (the first ones in file order; NNCF's default is 300).")
    flags.DEFINE_list("validation", None, "int8: TFRecords on which the int8 model's VOC mAP is "
                      "compared with the float32 model's.")
    flags.DEFINE_float("max_map_drop", 0.01, "int8: the most VOC mAP (float32 minus int8, on "
                       "--validation) the int8 model may lose; past it, the export refuses.")
    flags.DEFINE_boolean("int8_fallback", False, "int8: past --max_map_drop, write the float32 "
                         "model instead of refusing.")
    export_tflite.define_postprocess_flags()
    flags.mark_flags_as_required(["model", "output"])


def _check_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Usage errors before anything loads; the representative and validation files."""
    from tfssd.config.input_files import expand_files

    if not FLAGS.output.endswith(".xml"):
        raise app.UsageError(f"--output={FLAGS.output}: expected a file name ending in .xml")
    int8 = FLAGS.quantize == "int8"
    if int8 != bool(FLAGS.representative) or int8 != bool(FLAGS.validation):
        raise app.UsageError("--quantize=int8 needs --representative (images to calibrate on) "
                             "and --validation (records for its mAP gate); both are used only "
                             "by --quantize=int8")
    export_tflite.check_export_flags()
    found = []
    for name in ("representative", "validation"):
        patterns = getattr(FLAGS, name) or []
        files = expand_files(patterns) if patterns else ()
        if patterns and not files:
            raise app.UsageError(f"--{name}={','.join(patterns)}: no file matches")
        found.append(files)
    return found[0], found[1]


def _move(xml: str, output: str) -> None:
    """An .xml and its .bin (and labels) moved to ``output``'s names."""
    from tfssd.deploy import openvino_export

    for source, target in ((os.path.splitext(xml)[0] + ".bin", os.path.splitext(output)[0]
                            + ".bin"), (openvino_export.labels_path(xml),
                                        openvino_export.labels_path(output)), (xml, output)):
        os.replace(source, target)


def _map(path: str, validation: tuple[str, ...]) -> float:
    from tfssd.api import evaluate

    return float(evaluate(path, list(validation), metrics=("voc",)).voc.mean_ap)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    representative, validation = _check_flags()
    import importlib.util

    missing = [name for name in ("openvino", "nncf")[:2 if FLAGS.quantize == "int8" else 1]
               if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"tfssd-export-openvino needs {' and '.join(missing)}: pip install "
             "'tfssd[openvino]'", 2)
    from tfssd.cli.export_tflite import calibration_images, load_model_to_export
    from tfssd.deploy import openvino_export

    ssd = load_model_to_export()
    output = os.path.abspath(FLAGS.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".openvino-", dir=os.path.dirname(output))
    try:
        images = (calibration_images(representative, ssd.image_size, FLAGS.calibration_images)
                  if FLAGS.quantize == "int8" else None)
        models = openvino_export.build_all(ssd, images() if images else None,
                                           FLAGS.calibration_images)
        float_xml, _ = openvino_export.save(models["none"], os.path.join(staging, "float.xml"),
                                            ssd.class_names)
        chosen, quantize = float_xml, "none"
        if FLAGS.quantize == "int8":
            int8_xml, _ = openvino_export.save(models["int8"], os.path.join(staging, "int8.xml"),
                                               ssd.class_names)
            float_map, int8_map = _map(float_xml, validation), _map(int8_xml, validation)
            drop = float_map - int8_map
            print(f"VOC mAP on --validation: float32 {float_map:.4f}, int8 {int8_map:.4f}, "
                  f"drop {drop:.4f} (--max_map_drop={FLAGS.max_map_drop:g})")
            if drop <= FLAGS.max_map_drop:
                chosen, quantize = int8_xml, "int8"
            elif FLAGS.int8_fallback:
                print("int8 lost too much mAP; writing the float32 model (--int8_fallback)")
            else:
                fail(f"tfssd-export-openvino: int8 refused: it loses {drop:.4f} VOC mAP, more "
                     f"than --max_map_drop={FLAGS.max_map_drop:g}; nothing written. Calibrate "
                     "on more --representative images, allow a larger drop, or pass "
                     "--int8_fallback to write the float32 model instead.")
        _move(chosen, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = os.path.getsize(os.path.splitext(output)[0] + ".bin")
    precision = "int8" if quantize == "int8" else "float32"
    print(f"{output}: {size / 2**20:.2f} MiB of weights, {precision}, input "
          f"[B, {ssd.image_size}, {ssd.image_size}, 3] uint8, "
          f"{ssd.num_classes} classes, NMS IoU {ssd.nms_threshold:g} (per class), score > "
          f"{ssd.score_threshold:g}, at most {ssd.max_detections} detections; from {ssd.source}")
    print(f"{openvino_export.labels_path(output)}: class names")


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
