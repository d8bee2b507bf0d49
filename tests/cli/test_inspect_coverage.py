"""tfssd-inspect --coverage: anchor coverage at the input sizes asked for, as a user runs it."""

import re
import subprocess
import sys

import numpy as np
import pytest

from tfssd.evaluation import anchor_coverage
from tfssd.model.ssd import ssd_network
from tfssd.ops import anchors as anchors_lib


def run(*argv):
    return subprocess.run([sys.executable, "-m", "tfssd.cli.inspect_data", *argv],
                          capture_output=True, text=True, timeout=300)


def test_coverage_at_two_input_sizes(shapes_tfrecords):
    result = run(f"--input={shapes_tfrecords['dir']}/validation-*", "--coverage",
                 "--base_network=vgg-16", "--image_shape=300", "--compare_shapes=512")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("anchor coverage of"))
    assert "vgg-16: share of boxes whose best anchor IoU <= 0.5" in lines[title]
    assert lines[title + 1].split()[:4] == ["image_shape", "anchors", "median", "IoU"]
    rows = [line.split() for line in lines[title + 2:]]
    assert [row[:2] for row in rows] == [["300", "8732"], ["512", "24564"]]
    assert all(re.fullmatch(r"\d+\.\d%", row[3]) for row in rows)


@pytest.mark.parametrize("base_network", ["sagemaker-vgg-16", "sagemaker-resnet-50"])
def test_sagemaker_networks_are_measured_with_their_own_anchors(shapes_tfrecords, base_network):
    """The table is the one the full network's anchors give (SageMaker's MultiBoxPrior). For
    VGG-16 it differs from what SSD's rule gives on the same feature maps (MXNet's steps of
    8 / 300, 16 / 300, ... place the centres elsewhere); ResNet-50's are the rule's anchors in
    another order, so its coverage is the rule's."""
    result = run(f"--input={shapes_tfrecords['dir']}/validation-*", "--coverage",
                 f"--base_network={base_network}", "--image_shape=300", "--compare_shapes=512",
                 "--overlap_threshold=0.6")
    assert result.returncode == 0, result.stderr[-3000:]
    boxes = anchor_coverage.read_boxes(shapes_tfrecords["validation"])
    own, generic = [], []
    for shape in (300, 512):
        network = ssd_network(base_network, num_classes=3, image_size=shape)
        rule = anchors_lib.ssd_anchors(network.feature_map_sizes)
        own.append(anchor_coverage.coverage(boxes, network.anchors, shape, 0.6, 300))
        generic.append(anchor_coverage.coverage(boxes, rule, shape, 0.6, 300))
    expected = anchor_coverage.format_table(own, base_network, 0.6, 300)
    assert expected in result.stdout, result.stdout
    if base_network == "sagemaker-vgg-16":
        assert not all(np.array_equal(a.best_iou, b.best_iou) for a, b in zip(own, generic))
        assert anchor_coverage.format_table(generic, base_network, 0.6, 300) not in result.stdout


def test_bad_compare_shapes_are_named_without_a_traceback(shapes_tfrecords):
    result = run(f"--input={shapes_tfrecords['dir']}/validation-*", "--coverage",
                 "--compare_shapes=512,big")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--compare_shapes: 'big' is not an input side of at least 32" in result.stderr
