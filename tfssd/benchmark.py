"""Training throughput of tfssd on this machine, in images per second.

  tfssd-benchmark --base_network=vgg-16 --image_shape=300 --mini_batch_size=8

Prints three figures, each after warm-up steps:
  train step    the full train step (forward, multibox loss, backward, optimizer) on one batch
                held in memory: the model's speed;
  input         the tf.data pipeline alone (decode, SSD augmentation, matching), on synthetic
                shapes written as TFRecords;
  end to end    the two together, as training runs.
"""

import os
import tempfile
import time

from absl import flags

from tfssd.command import run_command

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("base_network", "vgg-16", ["vgg-16", "resnet-50"], "Backbone.")
    flags.DEFINE_integer("image_shape", 300, "Input side.")
    flags.DEFINE_integer("mini_batch_size", 8, "Batch size.")
    flags.DEFINE_float("width_multiplier", 1.0, "Network width.")
    flags.DEFINE_integer("num_classes", 20, "Classes.")
    flags.DEFINE_integer("warmup_steps", 2, "Steps not timed.")
    flags.DEFINE_integer("steps", 5, "Steps timed.")
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam", "rmsprop", "adadelta"], "Optimizer.")
    flags.DEFINE_bool("input_only", False, "Measure only the input pipeline.")
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: its default).")


def _rate(step_fn, batch: int) -> tuple[float, float]:
    for _ in range(FLAGS.warmup_steps):
        step_fn()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        step_fn()
    seconds = (time.perf_counter() - start) / FLAGS.steps
    return batch / seconds, seconds


def main(argv):
    del argv
    import tensorflow as tf

    from tfssd import config as config_lib
    from tfssd.data import conversion, synthetic, voc
    from tfssd.distribute import Cluster
    from tfssd.training import Trainer

    tf.get_logger().setLevel("WARNING")
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    batch = FLAGS.mini_batch_size
    work = tempfile.mkdtemp(prefix="tfssd-benchmark-")
    images = batch * (FLAGS.warmup_steps + FLAGS.steps + 1)
    synthetic.make_shapes_voc(os.path.join(work, "voc"), images, 0, seed=0)
    items = voc.read_voc(os.path.join(work, "voc", "Annotations"),
                         os.path.join(work, "voc", "JPEGImages"))
    conversion.convert(items, os.path.join(work, "data", "train"), num_shards=2)
    config = config_lib.Config(
        model=config_lib.ModelConfig(num_classes=FLAGS.num_classes,
                                     base_network=FLAGS.base_network,
                                     image_size=FLAGS.image_shape,
                                     width_multiplier=FLAGS.width_multiplier,
                                     use_pretrained_model=False),
        data=config_lib.DataConfig(train_files=tuple(tf.io.gfile.glob(f"{work}/data/train-*"))),
        train=config_lib.TrainConfig(num_training_samples=images, epochs=100,
                                     mini_batch_size=batch, optimizer=FLAGS.optimizer,
                                     model_dir=os.path.join(work, "run"), seed=0))
    trainer = Trainer(config, tf.distribute.get_strategy(), Cluster())
    print(f"{trainer.model.name}: width {FLAGS.width_multiplier}, batch {batch}, "
          f"{trainer.model.count_params():,} parameters, {trainer.ssd.num_anchors} anchors, "
          f"{os.cpu_count()} CPUs")
    stream = iter(trainer.train_dataset())
    rate, _ = _rate(lambda: tf.nest.map_structure(lambda t: t.numpy(), next(stream)), batch)
    print(f"input:      {rate:7.2f} images/s")
    if FLAGS.input_only:
        return
    fixed = tf.data.Dataset.from_tensors(next(iter(trainer.train_dataset()))).repeat()
    fixed_iterator = iter(trainer.strategy.experimental_distribute_dataset(fixed))
    rate, seconds = _rate(lambda: [t.numpy() for t in trainer.train_step(fixed_iterator)], batch)
    print(f"train step: {rate:7.2f} images/s ({seconds:.2f} s per step)")
    stream = iter(trainer.train_dataset())
    rate, seconds = _rate(lambda: [t.numpy() for t in trainer.train_step(stream)], batch)
    print(f"end to end: {rate:7.2f} images/s ({seconds:.2f} s per step)")


def run() -> None:
    run_command(define_flags, main)


if __name__ == "__main__":
    run()
