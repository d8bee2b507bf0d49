"""Writes a synthetic Pascal VOC dataset of coloured circles, squares and triangles.

  python tools/make_shapes_dataset.py --output_dir=demo_output/voc --num_train=400 --num_val=50

Layout: JPEGImages/, Annotations/ (VOC XML), ImageSets/Main/{train,val}.txt. For trying the
whole pipeline without downloading anything.
"""

from absl import app, flags

from tfssd.data import synthetic

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "Root of the VOC layout to write.")
    flags.DEFINE_integer("num_train", 400, "Training images.")
    flags.DEFINE_integer("num_val", 50, "Validation images.")
    flags.DEFINE_integer("seed", 0, "Seed of the generator.")
    flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    synthetic.make_shapes_voc(FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.seed)
    print(f"wrote {FLAGS.num_train} training and {FLAGS.num_val} validation images of "
          f"{', '.join(synthetic.CLASS_NAMES)} to {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
