r"""Converts annotated images to tfssd's sharded TFRecords and prints a summary.

  # Pascal VOC layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt):
  python tools/convert.py --format=voc --voc_dir=VOCdevkit/VOC2007 --split=trainval \
      --output=data/train
  # Any folder of VOC XML files with their images:
  python tools/convert.py --format=voc --annotations_dir=annotations --images_dir=images \
      --output=data/train

Writes data/train-00000-of-0000N.tfrecord and data/class_map.json. Bad items are skipped and
listed in the summary, or stop the conversion with --strict.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfssd.data import convert, voc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("format", "voc", ["voc"], "Input format.")
flags.DEFINE_string("output", None, "Output prefix: PREFIX-00000-of-0000N.tfrecord.")
flags.DEFINE_string("voc_dir", None, "VOC root with Annotations/, JPEGImages/, ImageSets/Main/.")
flags.DEFINE_string("split", None, "With --voc_dir: the image set, e.g. train, val, trainval.")
flags.DEFINE_string("annotations_dir", None, "Folder of VOC XML files.")
flags.DEFINE_string("images_dir", None, "Folder of the images the XML files name.")
flags.DEFINE_string("ids_file", None, "Only the image ids listed here (one per line).")
flags.DEFINE_list("class_names", None, "Class names in id order; default: the output folder's "
                  "class_map.json if present, else the sorted names found.")
flags.DEFINE_integer("num_shards", None, "Output files; default one per 1000 images.")
flags.DEFINE_integer("label_width", 350, "Images whose label needs more floats are refused.")
flags.DEFINE_bool("strict", False, "Stop at the first bad item instead of skipping it.")
flags.DEFINE_bool("drop_difficult", False, "Drop objects marked difficult (default: keep, marked).")
flags.mark_flag_as_required("output")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    annotations_dir, images_dir, ids_file = FLAGS.annotations_dir, FLAGS.images_dir, FLAGS.ids_file
    if FLAGS.voc_dir:
        annotations_dir = annotations_dir or os.path.join(FLAGS.voc_dir, "Annotations")
        images_dir = images_dir or os.path.join(FLAGS.voc_dir, "JPEGImages")
        if FLAGS.split:
            ids_file = ids_file or os.path.join(FLAGS.voc_dir, "ImageSets", "Main",
                                                FLAGS.split + ".txt")
    if not annotations_dir or not images_dir:
        raise app.UsageError("Give --voc_dir, or --annotations_dir and --images_dir.")
    for path in (annotations_dir, images_dir):
        if not os.path.isdir(path):
            raise app.UsageError(f"{path}: no such directory")
    if ids_file and not os.path.isfile(ids_file):
        raise app.UsageError(f"{ids_file}: no such file")
    items = voc.read_voc(annotations_dir, images_dir, voc.read_ids(ids_file) if ids_file else None)
    try:
        summary = convert.convert(items, FLAGS.output, class_names=FLAGS.class_names,
                                  num_shards=FLAGS.num_shards, label_width=FLAGS.label_width,
                                  strict=FLAGS.strict, drop_difficult=FLAGS.drop_difficult,
                                  progress=convert.print_progress)
    except convert.ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(summary.format())


if __name__ == "__main__":
    app.run(main)
