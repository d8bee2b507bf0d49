"""Imports a model trained by SageMaker's built-in Object Detection algorithm (MXNet).

  tfssd-import-sagemaker --model=model.tar.gz --output=MODEL_DIR [--class_names=boat,buoy]

--model is SageMaker's model.tar.gz (model_algo_1-symbol.json, model_algo_1-0000.params,
hyperparams.json) or a directory holding those files. Writes MODEL_DIR, a tfssd model
directory (tfssd_run.json, the weights as best/) with the SavedModel in MODEL_DIR/export/1:
serve, predict, evaluate, export to TFLite or fine-tune (--init_from) it as any tfssd model.
The network is SageMaker's own (ResNet-50 v2 or VGG-16 reduced SSD, rebuilt layer for layer, see
tfssd/model/sagemaker_networks.py); a graph that differs is refused, naming the differences.
No MXNet is needed. See tfssd/deploy/sagemaker_import.py.
"""

import os

from absl import app, flags, logging

from tfssd.cli.command_runner import fail, run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, "SageMaker's model.tar.gz, or a directory with its "
                        "extracted files.")
    flags.DEFINE_string("output", None, "The tfssd model directory to write (new or empty).")
    flags.DEFINE_list("class_names", None, "Names of the classes by id (SageMaker's artifact "
                      "has none). Default: 0, 1, ...")
    flags.DEFINE_integer("max_detections", 200, "Detections per image of the export.")
    flags.DEFINE_integer("image_shape", None, "The image_shape the model was trained at, for an "
                         "artifact without hyperparams.json (the graph does not say it).",
                         lower_bound=1)
    flags.mark_flags_as_required(["model", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer's INFO lines
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model}: no such file or directory")
    if FLAGS.max_detections < 1:
        raise app.UsageError(f"--max_detections={FLAGS.max_detections}: expected >= 1")
    from tfssd.deploy import sagemaker_import

    try:
        imported = sagemaker_import.import_sagemaker_model(
            FLAGS.model, FLAGS.output, class_names=FLAGS.class_names,
            max_detections=FLAGS.max_detections, image_size=FLAGS.image_shape)
    except ValueError as e:  # SageMakerImportError, MXNetFormatError
        fail(str(e))
        return
    print(f"{imported.model_dir}: tfssd model directory of SageMaker's "
          f"{imported.base_network} SSD ({imported.num_classes} classes, image_shape "
          f"{imported.image_size}, width {imported.width_multiplier:g}); SavedModel "
          f"{imported.export_dir}")


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
