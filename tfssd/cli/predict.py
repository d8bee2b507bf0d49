"""Runs an exported model on image files, as SageMaker's endpoint would answer.

  tfssd-predict --model=EXPORT_DIR_OR_TFLITE [--output_dir=DIR] image.jpg [image.png ...]

Prints one JSON line per image: {"prediction": [[class_id, score, xmin, ymin, xmax, ymax], ...]}
with corners normalised to the image (SageMaker's response format, batch-transform style).
With --output_dir, writes each image with its boxes drawn as PNG and the JSON beside it.
"""

import json
import os
import sys

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "An exported SavedModel (or its directory of numbered versions: the "
                        "highest is used), a .tflite file from tfssd-export-tflite or an "
                        "OpenVINO .xml from tfssd-export-openvino.")
    flags.DEFINE_string("saved_model", None, "The same as --model (the older name).")
    flags.DEFINE_enum("openvino_precision", "float32", ["float32", "bfloat16"],
                      "An OpenVINO .xml's inference precision on the CPU: float32 gives the "
                      "SavedModel's detections; bfloat16 is faster on CPUs with AMX.")
    flags.DEFINE_string("output_dir", None, "Write <image>.png with boxes drawn and <image>.json.")
    flags.DEFINE_float("draw_threshold", 0.5, "Only detections scoring at least this are drawn.")
    flags.DEFINE_float("min_score", 0.0, "Only detections scoring at least this are printed.")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_PIXELS,
                         "Images declaring more pixels (width x height) are refused before "
                         "they are decoded; 0: no limit.")
    flags.mark_flags_as_mutual_exclusive(["model", "saved_model"], required=True)


def main(argv):
    images = argv[1:]
    if not images:
        raise app.UsageError("Give one or more image files.")
    import numpy as np

    from tfssd.deploy import detector as detectors
    from tfssd.deploy.contracts import to_sagemaker
    from tfssd.ops import drawing as visualization
    from tfssd.ops.image_check import SERVED_FORMATS, ImageError, inspect_image
    from tfssd.ops.image_ops import decode_image

    try:
        detector = detectors.load_detector(FLAGS.model or FLAGS.saved_model,
                                           precision=FLAGS.openvino_precision)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise app.UsageError(f"--model: {e}") from None
    class_names = detector.class_names
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    failed = 0
    for image_path in images:
        # Each image is checked before the model sees it; a bad one is named and skipped.
        try:
            with open(image_path, "rb") as f:
                data = f.read()
            inspect_image(data, image_path, FLAGS.max_image_pixels, formats=SERVED_FORMATS)
        except OSError as e:
            print(f"{image_path}: cannot read: {e.strerror or e}; skipped", file=sys.stderr)
            failed += 1
            continue
        except ImageError as e:
            print(f"{e}; skipped", file=sys.stderr)
            failed += 1
            continue
        detections = detector([data])
        response = to_sagemaker({k: v[0] for k, v in detections.items()}, FLAGS.min_score)
        print(json.dumps(response))
        if FLAGS.output_dir:
            stem = os.path.splitext(os.path.basename(image_path))[0]
            keep = [r for r in response["prediction"] if r[1] >= FLAGS.draw_threshold]
            if not keep:
                best = max((r[1] for r in response["prediction"]), default=0.0)
                print(f"{image_path}: no detection scores at least --draw_threshold="
                      f"{FLAGS.draw_threshold:g} (best {best:.3f}); drawn without boxes",
                      file=sys.stderr)
            boxes = np.array([[r[3], r[2], r[5], r[4]] for r in keep]).reshape(-1, 4)
            drawn = visualization.draw_boxes(decode_image(data).numpy(), boxes,
                                             np.array([int(r[0]) for r in keep]),
                                             np.array([r[1] for r in keep]), class_names or None)
            visualization.save_png(drawn, os.path.join(FLAGS.output_dir, stem + ".png"))
            with open(os.path.join(FLAGS.output_dir, stem + ".json"), "w") as f:
                json.dump(response, f)
    if failed:
        print(f"{failed} of {len(images)} images could not be predicted (named above)",
              file=sys.stderr)
        sys.exit(1)


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
