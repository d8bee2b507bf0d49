"""Runs an exported SavedModel on image files, as SageMaker's endpoint would answer.

  python -m tfssd.predict --saved_model=EXPORT_DIR [--output_dir=DIR] image.jpg [image.png ...]

Prints one JSON line per image: {"prediction": [[class_id, score, xmin, ymin, xmax, ymax], ...]}
with corners normalised to the image (SageMaker's response format, batch-transform style).
With --output_dir, writes each image with its boxes drawn as PNG and the JSON beside it.
"""

import json
import os
import sys

from absl import app, flags

from tfssd.command import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("saved_model", None,
                        "An exported SavedModel, or a directory of numbered versions (the "
                        "highest is used).")
    flags.DEFINE_string("output_dir", None, "Write <image>.png with boxes drawn and <image>.json.")
    flags.DEFINE_float("draw_threshold", 0.5, "Only detections scoring at least this are drawn.")
    flags.DEFINE_float("min_score", 0.0, "Only detections scoring at least this are printed.")
    flags.mark_flag_as_required("saved_model")


def to_sagemaker(detections: dict, index: int, min_score: float = 0.0) -> dict:
    """Serving outputs of image ``index`` -> {"prediction": [[cls, score, x0, y0, x1, y1], ...]}."""
    count = int(detections["num_detections"][index])
    rows = []
    for k in range(count):
        score = float(detections["detection_scores"][index][k])
        if score < min_score:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in detections["detection_boxes"][index][k])
        rows.append([float(detections["detection_classes"][index][k]), score,
                     xmin, ymin, xmax, ymax])
    return {"prediction": rows}


def main(argv):
    images = argv[1:]
    if not images:
        raise app.UsageError("Give one or more image files.")
    import numpy as np
    import tensorflow as tf

    from tfssd import export, visualization
    from tfssd.ops.image_ops import decode_image

    path = export.latest_version(FLAGS.saved_model)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    class_names = export.read_labels(path)
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    for image_path in images:
        try:
            with open(image_path, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"{image_path}: {e}", file=sys.stderr)
            sys.exit(1)
        detections = {k: v.numpy() for k, v in serve(images=tf.constant([data])).items()}
        response = to_sagemaker(detections, 0, FLAGS.min_score)
        print(json.dumps(response))
        if FLAGS.output_dir:
            stem = os.path.splitext(os.path.basename(image_path))[0]
            keep = [r for r in response["prediction"] if r[1] >= FLAGS.draw_threshold]
            boxes = np.array([[r[3], r[2], r[5], r[4]] for r in keep]).reshape(-1, 4)
            drawn = visualization.draw_boxes(decode_image(data).numpy(), boxes,
                                             np.array([int(r[0]) for r in keep]),
                                             np.array([r[1] for r in keep]), class_names or None)
            visualization.save_png(drawn, os.path.join(FLAGS.output_dir, stem + ".png"))
            with open(os.path.join(FLAGS.output_dir, stem + ".json"), "w") as f:
                json.dump(response, f)


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
