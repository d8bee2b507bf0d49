"""Shows what TFRecords hold: counts, classes, box sizes, label width, and a PNG of samples.

  tfssd-inspect --input='data/train-*' [--grid=train.png] [--decode]

Reads tfssd's schema or the TF Object Detection API's (--input_format, detected by default).
--decode decodes every image to find the ones that would stop training.
"""

import os

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.config.run_config import CLASS_MAP_NAME

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("input", None, "TFRecord files, globs or directories.")
    flags.DEFINE_enum("input_format", "auto", ["auto", "tfssd", "odapi"], "Record schema.")
    flags.DEFINE_string("class_map", None, "class_map.json; default: the one beside the files.")
    flags.DEFINE_string("grid", None, "Write a PNG grid of sample images with their boxes here.")
    flags.DEFINE_integer("grid_images", 16, "Images in the grid.")
    flags.DEFINE_bool("decode", False, "Decode every image (finds undecodable records).")
    flags.DEFINE_integer("image_shape", 300, "Network input side, for the box-size histogram.")
    flags.mark_flag_as_required("input")


def main(argv):
    del argv
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


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
