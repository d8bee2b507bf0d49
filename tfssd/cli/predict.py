"""Runs an exported model on image files, as SageMaker's endpoint would answer.

  tfssd-predict --model=EXPORT_DIR_OR_TFLITE [--output_dir=DIR] image.jpg [image.png ...]
  tfssd-predict --model=EXPORT_DIR_OR_TFLITE --json image.jpg ... | jq .

By default prints a short summary for people: per image, the detections scoring at least
--draw_threshold (class name, score, box in pixels) and where its drawing went. With
--output_dir, draws those detections on each image (<image stem>.png) and writes SageMaker's
response beside it (<image stem>.json): {"prediction": [[class_id, score, xmin, ymin, xmax,
ymax], ...]} with corners normalised to the image, every detection scoring at least --min_score.
With --json, stdout holds only that response, one line per image (for jq and other programs);
everything else goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

FLAGS = flags.FLAGS

# A summary lists at most this many detections of one image; the rest are counted (all of them
# are drawn and in the JSON).
MAX_LISTED = 20
# What a process killed by SIGPIPE reports to a shell (128 + 13), as `cat` does under `| head`.
BROKEN_PIPE_EXIT = 141


def define_flags() -> None:
    flags.DEFINE_string("model", None,
                        "An exported SavedModel (or its directory of numbered versions: the "
                        "highest is used), a .tflite file from tfssd-export-tflite or an "
                        "OpenVINO .xml from tfssd-export-openvino.")
    flags.DEFINE_string("saved_model", None, "The same as --model (the older name).")
    flags.DEFINE_enum("openvino_precision", "float32", ["float32", "bfloat16"],
                      "An OpenVINO .xml's inference precision on the CPU: float32 gives the "
                      "SavedModel's detections; bfloat16 is faster on CPUs with AMX.")
    flags.DEFINE_string("output_dir", None,
                        "Write <image stem>.png with the detections scoring at least "
                        "--draw_threshold drawn, and SageMaker's <image stem>.json beside it.")
    flags.DEFINE_string("json_dir", None,
                        "Write SageMaker's <image stem>.json here instead of in --output_dir "
                        "(without --output_dir: the JSON files only, nothing drawn).")
    flags.DEFINE_bool("json", False,
                      "Print SageMaker's JSON on stdout instead of the summary: one line per "
                      "image, {\"prediction\": [[class_id, score, xmin, ymin, xmax, ymax], "
                      "...]}, and nothing else on stdout (for jq and other programs).")
    flags.DEFINE_float("draw_threshold", 0.5,
                       "The summary lists, and --output_dir's images show, only detections "
                       "scoring at least this.")
    flags.DEFINE_float("min_score", 0.0,
                       "SageMaker's JSON (--json, the .json files) holds only detections scoring "
                       "at least this.")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_PIXELS,
                         "Images declaring more pixels (width x height) are refused before "
                         "they are decoded; 0: no limit.")
    flags.mark_flags_as_mutual_exclusive(["model", "saved_model"], required=True)


def _stem(image_path: str) -> str:
    return os.path.splitext(os.path.basename(image_path))[0]


def _check_distinct_stems(images: list[str], flag: str) -> None:
    """Two images whose files would overwrite each other's output are refused up front."""
    seen: dict[str, str] = {}
    for path in images:
        other = seen.setdefault(_stem(path), path)
        if other != path:
            raise app.UsageError(
                f"{other} and {path} would both be written as {_stem(path)}.* in {flag}; "
                "rename one, or predict them in separate runs")


def _drawn(rows: list[list[float]], threshold: float) -> list[list[float]]:
    """The SageMaker rows [class_id, score, xmin, ymin, xmax, ymax] scoring at least
    ``threshold``: what the summary lists and the drawing shows."""
    return [row for row in rows if row[1] >= threshold]


def _class_name(class_id: float, class_names: list[str]) -> str:
    index = int(class_id)
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def summary_lines(image_path: str, width: int, height: int, rows: list[list[float]],
                  class_names: list[str], threshold: float, drawing: str | None) -> list[str]:
    """One image's summary for people.

    Args:
      image_path: the image as the user named it.
      width, height: its size in pixels.
      rows: SageMaker's rows [class_id, score, xmin, ymin, xmax, ymax] (normalised corners),
        best first.
      class_names: names by class id (ids are shown where missing).
      threshold: --draw_threshold; only rows scoring at least this are listed.
      drawing: where its drawing was written, if it was.

    Returns:
      A header line (path, size, what passed, the drawing), then one indented line per
      detection listed: class name, score, box corners in pixels.
    """
    shown = _drawn(rows, threshold)
    if shown:
        found = f"{len(shown)} detection{'s' * (len(shown) != 1)} at or above {threshold:g}"
    else:
        best = (f" (best: {_class_name(rows[0][0], class_names)} {rows[0][1]:.3f})"
                if rows else "")
        found = f"no detections at or above {threshold:g}{best}"
    lines = [f"{image_path} ({width}x{height}): {found}"
             + (f"; drawn in {drawing}" if drawing else "")]
    name_width = max((len(_class_name(r[0], class_names)) for r in shown[:MAX_LISTED]),
                     default=0)
    for class_id, score, xmin, ymin, xmax, ymax in shown[:MAX_LISTED]:
        lines.append(f"  {_class_name(class_id, class_names):<{name_width}}  {score:.3f}  "
                     f"x {round(xmin * width)}-{round(xmax * width)}, "
                     f"y {round(ymin * height)}-{round(ymax * height)}")
    if len(shown) > MAX_LISTED:
        lines.append(f"  ... and {len(shown) - MAX_LISTED} more at or above {threshold:g}")
    return lines


def main(argv):
    images = argv[1:]
    if not images:
        raise app.UsageError("Give one or more image files.")
    draw_dir = FLAGS.output_dir
    json_dir = FLAGS.json_dir or FLAGS.output_dir
    for flag, directory in (("--output_dir", draw_dir), ("--json_dir", FLAGS.json_dir)):
        if directory:
            _check_distinct_stems(images, flag)
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
    for directory in {draw_dir, json_dir} - {None}:
        os.makedirs(directory, exist_ok=True)
    # stdout carries the JSON lines under --json, the summary otherwise; notes for people go to
    # stderr under --json, so that a pipe reads nothing but JSON.
    notes = sys.stderr if FLAGS.json else sys.stdout
    threshold = FLAGS.draw_threshold
    failed = none_drawn = predicted = 0
    try:
        for image_path in images:
            # Each image is checked before the model sees it; a bad one is named and skipped.
            try:
                with open(image_path, "rb") as f:
                    data = f.read()
                info = inspect_image(data, image_path, FLAGS.max_image_pixels,
                                     formats=SERVED_FORMATS)
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
            predicted += 1
            keep = _drawn(response["prediction"], threshold)
            none_drawn += not keep
            drawing = None
            if draw_dir:
                drawing = os.path.join(draw_dir, _stem(image_path) + ".png")
                boxes = np.array([[r[3], r[2], r[5], r[4]] for r in keep]).reshape(-1, 4)
                drawn = visualization.draw_boxes(decode_image(data).numpy(), boxes,
                                                 np.array([int(r[0]) for r in keep]),
                                                 np.array([r[1] for r in keep]),
                                                 class_names or None)
                visualization.save_png(drawn, drawing)
            if json_dir:
                with open(os.path.join(json_dir, _stem(image_path) + ".json"), "w") as f:
                    json.dump(response, f)
            if FLAGS.json:
                print(json.dumps(response), flush=True)
            else:
                print("\n".join(summary_lines(image_path, info.width, info.height,
                                              response["prediction"], class_names, threshold,
                                              drawing)), flush=True)
        if none_drawn and (draw_dir or not FLAGS.json):
            print(f"{none_drawn} of {predicted} images had no detections at or above "
                  f"--draw_threshold={threshold:g}"
                  + (" (drawn without boxes)" if draw_dir else ""), file=notes, flush=True)
        if json_dir and predicted:
            print(f"SageMaker's JSON of each image (detections scoring at least --min_score="
                  f"{FLAGS.min_score:g}): {os.path.join(json_dir, '<image>.json')}", file=notes,
                  flush=True)
        elif not FLAGS.json and predicted:
            print("(--output_dir=DIR draws them and writes SageMaker's JSON; --json prints the "
                  "JSON instead of this summary)", file=notes, flush=True)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as command-line tools do; what Python
        # still holds for stdout goes nowhere instead of raising again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_EXIT)
    if failed:
        print(f"{failed} of {len(images)} images could not be predicted (named above)",
              file=sys.stderr)
        sys.exit(1)


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
