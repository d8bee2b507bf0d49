"""tf.data input pipelines: training (augmented, with encoded targets) and evaluation.

Training stream: epoch e is exactly ``samples_per_epoch`` examples (steps per epoch times the
global batch) drawn from the records shuffled with the seed (seed, e), cycling when the files
hold fewer. Example i of the stream has the global index ``e * samples_per_epoch + i``; its
augmentation is seeded with (seed, index). Hence a resumed run reproduces the data of an
uninterrupted one: it skips serialized records, before any decoding, to its position.
Workers take every n-th example of the same stream (per-worker sharding), so one global step
always consumes the same global batch.

A SageMaker Pipe-mode training channel is streamed instead (``is_stream``; its one "file" is a
``PipeStream`` description, data/sagemaker_stream.py): the FIFOs ``<channel>_0``, ``_1``, ...
are read one after another, each image converted in memory under the bad-data policy, and the
examples shuffled within blocks of ``shuffle_buffer`` (seeded by the run's seed and the block).
A pipe is read once, so a resumed run cannot replay the interrupted order: it starts at pipe _0
again, passing over (unconverted) as many images as the interrupted epoch had used. A streamed
Pipe-mode validation channel is read through ``validation_records``: each reading of the
validation data (an iteration of ``build_eval_dataset``'s dataset) reads the channel's next pass.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import logging

from tfssd.data import augment, sagemaker_stream, schema, targets
from tfssd.ops.image_ops import decode_image, resize


def _one_pass(files: tuple[str, ...], pass_seed: tf.Tensor, block_size: int) -> tf.data.Dataset:
    """Every record of ``files`` once, in an order fixed by ``pass_seed`` (int64 [2]).

    Shuffling is stateless: the file order is permuted, the files are interleaved, and records
    are shuffled within consecutive blocks of ``block_size`` (the whole pass when it is
    smaller). Nothing depends on TensorFlow's global seed or on iterator state.
    """
    order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), seed=pass_seed)
    file_list = tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(list(files)), order))
    records = file_list.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.batch(block_size).enumerate().map(
        lambda block, batch: tf.random.experimental.stateless_shuffle(
            batch, seed=tf.random.experimental.stateless_fold_in(pass_seed, block))).unbatch()


def _epoch_records(files: tuple[str, ...], seed, epoch: tf.Tensor, block_size: int
                   ) -> tf.data.Dataset:
    """Passes over the records, each in its own order fixed by (seed, epoch, pass), endlessly."""
    epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
    return tf.data.Dataset.range(1 << 62).flat_map(lambda pass_index: _one_pass(
        files, tf.random.experimental.stateless_fold_in(epoch_seed, pass_index), block_size))


def _check_classes(classes: tf.Tensor, num_classes: int, filename: tf.Tensor) -> tf.Operation:
    return tf.debugging.Assert(
        tf.reduce_all(classes < num_classes),
        [f"A record has a class id outside 0..{num_classes - 1} (num_classes={num_classes}): "
         "record (source image)", filename, "class ids", classes], summarize=20)


def training_stream(files: tuple[str, ...], *, samples_per_epoch: int, seed,
                    start_sample: int = 0, shuffle_buffer: int = 1024) -> tf.data.Dataset:
    """The serialized training examples from global index ``start_sample`` on, without end.

    The training loop stops at its last step; an endless stream means that skipped records
    (``skip_corrupt_records``) shift later examples instead of starving the last steps.

    Yields:
      (index int64 [], serialized string []).
    """
    first_epoch, skip = divmod(start_sample, samples_per_epoch)

    def epoch_records(epoch):
        records = _epoch_records(files, seed, epoch, shuffle_buffer).take(samples_per_epoch)
        return records.enumerate(start=epoch * samples_per_epoch)

    stream = tf.data.Dataset.range(first_epoch, 1 << 62).flat_map(epoch_records)
    return stream.skip(skip)


def is_stream(files: tuple[str, ...]) -> bool:
    """Whether ``files`` stand for a streamed Pipe-mode channel (a ``PipeStream`` description)."""
    return len(files) == 1 and files[0].endswith(sagemaker_stream.STREAM_SUFFIX)


def validation_records(files: tuple[str, ...]):
    """The serialized records of validation ``files`` in order, for reading them once in Python:
    tf.data's reader of TFRecord files; for a streamed Pipe-mode channel (``is_stream``) a
    generator of its next pass (``PipeStream.next_pass``: closed before the end, it reads the rest
    of the pass unused)."""
    if is_stream(files):
        return sagemaker_stream.PipeStream.load(files[0]).next_pass(report=logging.info)
    return tf.data.TFRecordDataset(list(files))


# Examples a piped stream yields beyond what the run needs, from the pass it ends in: room for
# records that skip_corrupt_records drops after the stream, so that the last steps fill their
# batches without opening another pass.
STREAM_SPARE = 64


def piped_training_stream(description: str, *, samples_per_epoch: int, seed,
                          start_sample: int = 0, shuffle_buffer: int = 1024
                          ) -> tf.data.Dataset:
    """``training_stream`` for a Pipe-mode channel: its passes, read as SageMaker sends them.

    Memory: one block of ``shuffle_buffer`` (at most ``samples_per_epoch``) serialized
    examples (the encoded images, about their file size: 1024 x 100 KB = 100 MB for VOC-sized
    JPEGs) and the block being filled, two chunks of the converter (``PipeStream.CHUNK``
    images each), plus the decoded and augmented images in flight, as in File mode. None of it
    grows with the channel. Measured (batches of 32 at 300 x 300, images of 47 KB, 2 CPUs):
    peak RSS above the set-up process +227 MB for a pass of 1024 images and +247 MB for 4096
    with ``shuffle_buffer=256`` (File mode on the same 1024 images: +211 MB); +407 MB for 4096
    with 1024, i.e. about 200 KB per buffered image of 47 KB (the block being filled, the
    shuffled block and tf.data's copies). Time: each pass decodes every image once more (the
    policy's check, about 1 ms each); on 2 CPUs 1024 examples took 12.4 s against 7.9 s from
    TFRecord files.

    The stream ends with the pass in which the run's remaining examples have been read (giving
    up to ``STREAM_SPARE`` more from it), so that no pipe beyond the last one needed is opened.

    Yields:
      (index int64 [], serialized string []).
    """
    stream = sagemaker_stream.PipeStream.load(description)
    remaining = max(stream.epochs * samples_per_epoch - start_sample, 0)
    skip = start_sample % samples_per_epoch

    def examples():
        return stream.examples(skip=skip, limit=remaining, spare=STREAM_SPARE,
                               report=logging.info)

    records = tf.data.Dataset.from_generator(
        examples, output_signature=tf.TensorSpec([], tf.string))
    stream_seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(start_sample, tf.int64)])
    # Blocks no longer than an epoch: a small channel is still read pass by pass.
    block_size = max(1, min(shuffle_buffer, samples_per_epoch))
    shuffled = records.batch(block_size).enumerate().map(
        lambda block, batch: tf.random.experimental.stateless_shuffle(
            batch, seed=tf.random.experimental.stateless_fold_in(stream_seed, block))).unbatch()
    return shuffled.enumerate(start=start_sample)


def build_train_dataset(files: tuple[str, ...], anchors: np.ndarray, *, image_size: int,
                        label_width: int, num_classes: int, batch_size: int | tuple[int, ...],
                        samples_per_epoch: int, seed, start_sample: int = 0,
                        shuffle_buffer: int = 1024, input_format: str = "tfssd",
                        skip_corrupt_records: bool = False,
                        input_context: tf.distribute.InputContext | None = None
                        ) -> tf.data.Dataset:
    """Augmented training batches with their SSD targets.

    Args:
      files: TFRecord files in tfssd's schema, or a streamed Pipe-mode channel's description
        (``is_stream``, ``piped_training_stream``).
      anchors: float32 [A, 4], normalised yxyx, the model's anchors.
      image_size: side of the square network input.
      label_width: labels longer than this stop the run with the record named.
      num_classes: a class id outside [0, num_classes) stops the run with the record named.
      batch_size: examples per batch of this pipeline (per replica); a tuple gives each of this
        pipeline's replicas its own, in turn (a batch that does not divide evenly: the elements
        then have an unknown batch dimension).
      samples_per_epoch: examples in one epoch over all workers.
      seed: the run's seed (data order and augmentation); an int or an int64 scalar tensor.
      start_sample: global index to start from (resume).
      shuffle_buffer: records shuffled together (blocks of the stateless shuffle).
      input_format: "tfssd" or "odapi" (TF Object Detection API records).
      skip_corrupt_records: drop examples that fail to decode or check, instead of stopping.
      input_context: per-worker sharding, from ``distribute_datasets_from_function``.

    Yields:
      images: float32 [batch, S, S, 3], RGB in [0, 255].
      targets: {"cls_targets": int32 [batch, A], "box_targets": float32 [batch, A, 4]}.
    """
    anchors = tf.constant(anchors, tf.float32)
    make_stream = piped_training_stream if is_stream(files) else training_stream
    stream = make_stream(files[0] if is_stream(files) else files,
                         samples_per_epoch=samples_per_epoch, seed=seed,
                         start_sample=start_sample, shuffle_buffer=shuffle_buffer)
    if input_context is not None and input_context.num_input_pipelines > 1:
        stream = stream.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    parse = schema.PARSERS[input_format]

    def make_example(index, serialized):
        example = parse(serialized)
        with tf.control_dependencies([schema.check_label_width(
                example["label"], label_width, example["filename"])]):
            image = decode_image(example["image_bytes"])
        boxes, classes, difficult = schema.label_to_objects(example["label"])
        with tf.control_dependencies([_check_classes(classes, num_classes, example["filename"])]):
            classes = tf.identity(classes)
        example_seed = tf.stack([tf.cast(seed, tf.int64), index])
        image, boxes, classes, _ = augment.ssd_augment(image, boxes, classes, difficult,
                                                       example_seed, image_size)
        cls_targets, box_targets = targets.encode_targets(boxes, classes, anchors)
        return image, {"cls_targets": cls_targets, "box_targets": box_targets}

    dataset = stream.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_corrupt_records:
        dataset = dataset.ignore_errors(log_warning=True)
    if isinstance(batch_size, int) or len(set(batch_size)) == 1:
        size = batch_size if isinstance(batch_size, int) else batch_size[0]
        return dataset.batch(size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.batch(sum(batch_size), drop_remainder=True)
    return dataset.flat_map(lambda *batch: _split_batch(batch, batch_size)).prefetch(
        tf.data.AUTOTUNE)


def _split_batch(batch, sizes: tuple[int, ...]) -> tf.data.Dataset:
    """One batch as consecutive batches of ``sizes`` (the replicas of a pipeline take its
    elements in turn)."""
    pieces, start = None, 0
    for size in sizes:
        piece = tf.data.Dataset.from_tensors(
            tf.nest.map_structure(lambda t, start=start, size=size: t[start:start + size], batch))
        pieces = piece if pieces is None else pieces.concatenate(piece)
        start += size
    return pieces


def build_eval_dataset(files: tuple[str, ...], *, image_size: int | None, label_width: int,
                       batch_size: int, input_format: str = "tfssd",
                       skip_corrupt_records: bool = False) -> tf.data.Dataset:
    """Validation images with their padded ground truth, in file order.

    Args:
      files: TFRecord files in tfssd's schema, or a streamed Pipe-mode channel's description
        (``is_stream``): each iteration of the dataset then reads the channel's next pass,
        converting it in memory. Its memory does not grow with the pass: measured (2 CPUs,
        images of 53 KB, batches of 32 at 300 x 300, no model) peak RSS +144 MB for a pass of
        1024 images and +145 MB for 4096, against +124 / +127 MB from TFRecord files; the
        pass took 2.2 s per 1000 images against 1.1 s (each image is decoded once more).
      image_size: side of the network input; None yields the encoded images instead, for a
        model that decodes them itself (an exported SavedModel).
      label_width: labels longer than this stop the run with the record named.
      batch_size: examples per batch (the last batch may be smaller).
      input_format: "tfssd" or "odapi".
      skip_corrupt_records: drop examples that fail to decode or check, instead of stopping.

    Yields dicts of:
      images: float32 [batch, S, S, 3], RGB in [0, 255], with image_sizes: int32 [batch, 2]
        (height, width before resizing); or image_bytes: string [batch].
      gt_boxes: float32 [batch, M, 4], normalised yxyx, M = (label_width - 2) // 5.
      gt_classes: int32 [batch, M], -1 for padding.
      gt_difficult: bool [batch, M].
      filename: string [batch].
    """
    max_objects = (label_width - schema.HEADER_WIDTH) // schema.OBJECT_WIDTH

    parse = schema.PARSERS[input_format]

    def make_example(serialized):
        example = parse(serialized)
        with tf.control_dependencies([schema.check_label_width(
                example["label"], label_width, example["filename"])]):
            if image_size is None:
                image = {"image_bytes": tf.identity(example["image_bytes"])}
            else:
                decoded = decode_image(example["image_bytes"])
                image = {"images": resize(decoded, image_size),
                         "image_sizes": tf.shape(decoded)[:2]}  # (height, width) as stored
        boxes, classes, difficult = schema.label_to_objects(example["label"])
        padding = max_objects - tf.shape(classes)[0]
        return {
            **image,
            "gt_boxes": tf.pad(boxes, [[0, padding], [0, 0]]),
            "gt_classes": tf.pad(classes, [[0, padding]], constant_values=-1),
            "gt_difficult": tf.pad(difficult, [[0, padding]]),
            "filename": example["filename"],
        }

    if is_stream(files):  # the generator is called anew by each iteration: the next pass
        dataset = tf.data.Dataset.from_generator(lambda: validation_records(files),
                                                 output_signature=tf.TensorSpec([], tf.string))
    else:
        dataset = tf.data.TFRecordDataset(list(files))
    dataset = dataset.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_corrupt_records:
        dataset = dataset.ignore_errors(log_warning=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def find_undecodable_records(files: tuple[str, ...], input_format: str = "tfssd",
                             limit: int = 5) -> list[str]:
    """Scans ``files`` for records whose image does not decode; returns up to ``limit``.

    For the error message when training stops on such a record: tf.data's own error does not
    say which record it was. Each entry reads "FILE record N (image NAME): reason".
    """
    parse = schema.PARSERS[input_format]
    found = []
    if is_stream(files):  # a pipe is read once: its bad images were skipped as it was read
        return found
    for path in files:
        for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
            example = parse(serialized)
            try:
                decode_image(example["image_bytes"])
            except tf.errors.InvalidArgumentError as e:
                name = example["filename"].numpy().decode(errors="replace")
                found.append(f"{path} record {index} (image {name}): {e.message.splitlines()[0]}")
                if len(found) >= limit:
                    return found
    return found
