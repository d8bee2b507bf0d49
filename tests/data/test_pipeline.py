"""The training and evaluation pipelines: shapes, targets, resume and sharding."""

import numpy as np
import tensorflow as tf

from tfssd.data import pipeline
from tfssd.ops import anchors as anchors_lib

ANCHORS = anchors_lib.ssd_anchors([(8, 8), (4, 4), (2, 2), (1, 1)])


def _indices(stream):
    return [int(i) for i, _ in stream]


def test_train_batches_have_fixed_shapes_and_positives(shapes_tfrecords):
    dataset = pipeline.build_train_dataset(
        shapes_tfrecords["train"], ANCHORS, image_size=64, label_width=350, num_classes=3,
        batch_size=4, samples_per_epoch=24, seed=5)
    batches = list(dataset.take(6))
    assert len(batches) == 6
    images, targets = batches[0]
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.float32
    assert targets["cls_targets"].shape == (4, len(ANCHORS))
    assert targets["box_targets"].shape == (4, len(ANCHORS), 4)
    cls = np.concatenate([t["cls_targets"].numpy() for _, t in batches])
    assert cls.max() <= 3 and (cls > 0).sum() > 24  # every image has shapes


def test_epochs_cover_the_data_and_differ_in_order(shapes_tfrecords):
    stream = pipeline.training_stream(shapes_tfrecords["train"], samples_per_epoch=24, seed=1)
    records = [r.numpy() for _, r in stream.take(48)]
    assert len(records) == 48
    first, second = records[:24], records[24:]
    assert sorted(first) == sorted(second) and len(set(first)) == 24
    assert first != second


def test_resume_reproduces_the_stream(shapes_tfrecords):
    files = shapes_tfrecords["train"]
    full = list(pipeline.training_stream(files, samples_per_epoch=20, seed=9).take(60))
    for start in (0, 7, 20, 33):
        resumed = list(pipeline.training_stream(files, samples_per_epoch=20, seed=9,
                                                start_sample=start).take(60 - start))
        assert [int(i) for i, _ in resumed] == list(range(start, 60))
        assert [r.numpy() for _, r in resumed] == [r.numpy() for _, r in full[start:]]


def test_workers_split_each_global_batch(shapes_tfrecords):
    """Through build_train_dataset with a two-pipeline input context, as dist_sync runs it:
    worker k's batch i is examples k, k + 2, ... of the one-machine run's global batch i."""
    def batches(context=None, batch_size=8):
        dataset = pipeline.build_train_dataset(
            shapes_tfrecords["train"], ANCHORS, image_size=64, label_width=350, num_classes=3,
            batch_size=batch_size, samples_per_epoch=24, seed=2, input_context=context)
        return [(images.numpy(), targets["cls_targets"].numpy())
                for images, targets in dataset.take(3)]

    whole = batches()
    workers = [batches(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=k,
                                                  num_replicas_in_sync=2), batch_size=4)
               for k in range(2)]
    for i, (images, classes) in enumerate(whole):
        for k in range(2):
            np.testing.assert_array_equal(workers[k][i][0], images[k::2])
            np.testing.assert_array_equal(workers[k][i][1], classes[k::2])
    assert not np.array_equal(workers[0][0][0], workers[1][0][0])


def test_eval_dataset_pads_ground_truth(shapes_tfrecords):
    batch = next(iter(pipeline.build_eval_dataset(shapes_tfrecords["validation"], image_size=64,
                                                  label_width=32, batch_size=8)))
    assert batch["images"].shape == (8, 64, 64, 3)
    assert batch["gt_boxes"].shape == (8, 6, 4) and batch["gt_classes"].shape == (8, 6)
    real = batch["gt_classes"].numpy() >= 0
    assert real.any(axis=1).all() and not real.all()
    encoded = next(iter(pipeline.build_eval_dataset(shapes_tfrecords["validation"],
                                                    image_size=None, label_width=32,
                                                    batch_size=8)))
    assert encoded["image_bytes"].dtype == tf.string and "images" not in encoded
