r"""Trains an SSD detector from SageMaker Object Detection hyperparameters.

  python -m tfssd.train --num_classes=20 --num_training_samples=16551 \
      --train=data/train-* --validation=data/val-* [--flagfile=flags/ssd300_vgg16_voc.flags]

Hyperparameters are validated before TensorFlow is imported, so a bad value fails in a moment.
"""

import os
import sys

from absl import app, flags, logging

from tfssd import hyperparameters

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        values, options = hyperparameters.resolve(FLAGS)
    except hyperparameters.HyperparameterError as e:
        raise app.UsageError(str(e)) from None
    # TensorFlow is imported only once the hyperparameters are known to be good.
    import tensorflow as tf

    from tfssd import distribute, training
    from tfssd.model.weights import PretrainedWeightsError

    tf.get_logger().setLevel("WARNING")  # TF's INFO lines would drown the progress lines

    try:
        strategy, cluster = distribute.build_strategy(values["kv_store"],
                                                      values["mini_batch_size"])
        config = hyperparameters.build_config(values, options, num_workers=cluster.num_workers)
        training.train(config, strategy, cluster)
    except (training.TrainingError, PretrainedWeightsError, distribute.DistributionError) as e:
        logging.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
    hyperparameters.define_flags()
    app.run(main)
