r"""Converts annotated images to tfssd's sharded TFRecords and prints a summary.

  # Pascal VOC layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt), or any folder
  # of VOC XML files with --annotations_dir/--images_dir [--ids_file]:
  tfssd-convert --format=voc --voc_dir=VOCdevkit/VOC2007 --split=trainval \
      --output=data/train
  # COCO instances JSON:
  tfssd-convert --format=coco --coco_json=instances_train2017.json \
      --images_dir=train2017 --output=data/train
  # SageMaker image + per-image JSON (the train and train_annotation channels):
  tfssd-convert --format=sagemaker_json --images_dir=train \
      --annotations_dir=train_annotation --output=data/train
  # SageMaker augmented manifest (JSON Lines), s3:// references resolved under --images_root:
  tfssd-convert --format=manifest --manifest=train.manifest --images_root=images \
      --output=data/train
  # MXNet im2rec list, or RecordIO (the .idx file is not needed):
  tfssd-convert --format=lst --lst=train.lst --images_root=images --output=data/train
  tfssd-convert --format=recordio --rec=train.rec --output=data/train
  # YOLO (Ultralytics) .txt labels; --labels_dir defaults to --images_dir with its last
  # "images" folder replaced by "labels"; class names from data.yaml (or --class_names):
  tfssd-convert --format=yolo --images_dir=coco128/images/train2017 \
      --data_yaml=coco128/data.yaml --output=data/train

Writes data/train-00000-of-0000N.tfrecord and data/class_map.json. Bad items are skipped and
listed in the summary, or stop the conversion with --strict.
"""

import sys

from absl import app, flags

from tfssd.cli.command_runner import run_command
from tfssd.data.readers import FORMATS, READERS
from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("format", None, list(FORMATS), "Input format: " + "; ".join(
        f"{r.name}: {r.help}" for r in READERS.values()) + ".")
    flags.DEFINE_string("output", None, "Output prefix: PREFIX-00000-of-0000N.tfrecord.")
    flags.DEFINE_string("voc_dir", None,
                        "voc: root with Annotations/, JPEGImages/, ImageSets/Main/.")
    flags.DEFINE_string("split", None,
                        "voc, with --voc_dir: the image set, e.g. train or trainval.")
    flags.DEFINE_string("annotations_dir", None, "voc: folder of XML files; sagemaker_json: folder "
                        "of per-image JSON files.")
    flags.DEFINE_string("images_dir", None,
                        "voc, coco, sagemaker_json, yolo: folder of the images.")
    flags.DEFINE_string("labels_dir", None, "yolo: folder of the .txt label files; default: "
                        "--images_dir with its last 'images' component replaced by 'labels'.")
    flags.DEFINE_string("data_yaml", None, "yolo: Ultralytics data.yaml giving the class names "
                        "(used unless --class_names is given).")
    flags.DEFINE_string("ids_file", None, "voc: only the image ids listed here (one per line).")
    flags.DEFINE_string("coco_json", None, "coco: the instances JSON file.")
    flags.DEFINE_string("manifest", None, "manifest: the augmented manifest (JSON Lines).")
    flags.DEFINE_string("manifest_attribute", None, "manifest: the attribute holding the boxes; "
                        "default: the one whose -metadata type is groundtruth/object_detection.")
    flags.DEFINE_string("images_root", None,
                        "manifest, lst: root that image paths are relative to.")
    flags.DEFINE_string("lst", None, "lst: the im2rec .lst file.")
    flags.DEFINE_string("rec", None, "recordio: the .rec file.")
    flags.DEFINE_list("class_names", None, "Class names in id order; default: the output folder's "
                      "class_map.json if present, else what the format provides (names found, "
                      "sorted, for voc).")
    flags.DEFINE_integer("num_shards", None, "Output files; default one per 1000 images.")
    flags.DEFINE_integer("label_width", 350, "Images whose label needs more floats are refused.")
    flags.DEFINE_bool("strict", False, "Stop at the first bad item instead of skipping it.")
    flags.DEFINE_bool("drop_difficult", False,
                      "Drop objects marked difficult (default: keep, marked).")
    flags.DEFINE_bool("drop_empty", False,
                      "Skip images without objects (default: keep as negatives).")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_PIXELS,
                         "Images declaring more pixels (width x height) are skipped before they "
                         "are decoded; 0: no limit.")
    flags.mark_flags_as_required(["format", "output"])


SOURCE_OPTIONS = ("voc_dir", "split", "annotations_dir", "images_dir", "labels_dir", "data_yaml",
                  "ids_file", "coco_json", "manifest", "manifest_attribute", "images_root", "lst",
                  "rec")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # TensorFlow is imported by the conversion, not at start-up: --help answers at once.
    from tfssd import api
    from tfssd.data.sources import ReaderOptionError, SourceDataError

    try:
        summary = api.convert(
            FLAGS.format, FLAGS.output, class_names=FLAGS.class_names,
            num_shards=FLAGS.num_shards, label_width=FLAGS.label_width, strict=FLAGS.strict,
            drop_difficult=FLAGS.drop_difficult, drop_empty=FLAGS.drop_empty,
            max_image_pixels=FLAGS.max_image_pixels, progress=True,
            **{name: FLAGS[name].value for name in SOURCE_OPTIONS})
    except ReaderOptionError as e:
        raise app.UsageError(str(e)) from None
    except (SourceDataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(summary.format())


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
