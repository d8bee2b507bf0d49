"""Shows what TFRecords hold: counts, classes, box sizes, label width, and a PNG of samples.

  tfssd-inspect --input='data/train-*' [--grid=train.png] [--decode]

Reads tfssd's schema or the TF Object Detection API's (--input_format, detected by default).
--decode decodes every image to find the ones that would stop training.

  tfssd-inspect --input='data/train-*' --coverage --base_network=vgg-16 --image_shape=300

--coverage reports how well the network's anchors fit the boxes: for each box the best IoU of
any of the anchors the network itself trains and detects with (any --base_network, SageMaker's
sagemaker-vgg-16 and sagemaker-resnet-50 included) at --image_shape, the share of boxes whose
best IoU is not above --overlap_threshold (those get only their one forced anchor in
training), overall and by object size, and the same shares recomputed at each of
--compare_shapes, sizes measured at --image_shape throughout.
"""

import os

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.config.run_config import BASE_NETWORKS, CLASS_MAP_NAME

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("input", None, "TFRecord files, globs or directories.")
    flags.DEFINE_enum("input_format", "auto", ["auto", "tfssd", "odapi"], "Record schema.")
    flags.DEFINE_string("class_map", None, "class_map.json; default: the one beside the files.")
    flags.DEFINE_string("grid", None, "Write a PNG grid of sample images with their boxes here.")
    flags.DEFINE_integer("grid_images", 16, "Images in the grid.")
    flags.DEFINE_bool("decode", False, "Decode every image (finds undecodable records).")
    flags.DEFINE_integer("image_shape", 300, "Network input side, for the box-size histogram "
                         "and --coverage.")
    flags.DEFINE_bool("coverage", False, "Report the anchor coverage of the boxes (see above).")
    flags.DEFINE_enum("base_network", "vgg-16", list(BASE_NETWORKS),
                      "--coverage: the network whose anchors are measured (its own, as it "
                      "trains and detects with them).")
    flags.DEFINE_float("overlap_threshold", 0.5, "--coverage: the matching IoU (SageMaker's "
                       "overlap_threshold), in (0, 1].")
    flags.DEFINE_list("compare_shapes", ["300", "512", "768"], "--coverage: the input sides to "
                      "recompute the coverage at, besides --image_shape.")
    flags.mark_flag_as_required("input")


def main(argv):
    del argv
    shapes = _coverage_shapes() if FLAGS.coverage else []
    from tfssd.config.input_files import expand_files
    from tfssd.data import conversion, inspection, schema
    from tfssd.ops.drawing import save_png

    files = expand_files(FLAGS.input)
    if not files:
        raise app.UsageError(f"--input={','.join(FLAGS.input)}: no file matches")
    class_map = FLAGS.class_map or os.path.join(os.path.dirname(files[0]), CLASS_MAP_NAME)
    names = conversion.read_class_map(class_map) if os.path.isfile(class_map) else None
    input_format = schema.resolve_format(files, FLAGS.input_format)
    report = inspection.inspect_records(files, input_format, FLAGS.decode,
                                     FLAGS.grid_images if FLAGS.grid else 0, names)
    print(f"{len(files)} files, {input_format} schema")
    print(report.format(names, FLAGS.image_shape))
    if FLAGS.grid and report.samples:
        save_png(inspection.sample_grid(report), FLAGS.grid)
        print(f"wrote {FLAGS.grid}")
    if FLAGS.coverage:
        from tfssd.evaluation import anchor_coverage

        boxes = anchor_coverage.read_boxes(files, input_format)
        try:
            results = anchor_coverage.compare_shapes(boxes, FLAGS.base_network, shapes,
                                                     FLAGS.image_shape, FLAGS.overlap_threshold)
        except ValueError as e:
            raise app.UsageError(f"--coverage: {e}") from None
        print(anchor_coverage.format_table(results, FLAGS.base_network, FLAGS.overlap_threshold,
                                           FLAGS.image_shape))


def _coverage_shapes() -> list[int]:
    """--image_shape first, then the other --compare_shapes, each checked."""
    if not 0 < FLAGS.overlap_threshold <= 1:
        raise app.UsageError(f"--overlap_threshold={FLAGS.overlap_threshold}: expected (0, 1]")
    shapes = [FLAGS.image_shape]
    for value in FLAGS.compare_shapes:
        try:
            shape = int(value)
        except ValueError:
            shape = 0
        if shape < 32:
            raise app.UsageError(f"--compare_shapes: {value!r} is not an input side of at "
                                 "least 32")
        if shape not in shapes:
            shapes.append(shape)
    if FLAGS.image_shape < 32:
        raise app.UsageError(f"--image_shape={FLAGS.image_shape}: expected at least 32")
    return shapes


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
