"""Freezing by regex: SageMaker's example pattern on both backbones."""

import pytest

from tfssd.model import freezing
from tfssd.model import ssd as ssd_lib

PATTERN = "^(conv1_|conv2_).*"  # the example in SageMaker's documentation


def test_vgg16_example_freezes_conv1_and_conv2():
    model = ssd_lib.ssd_network("vgg-16", 3, 300, width_multiplier=0.0625).model
    frozen = freezing.freeze_layers(model, PATTERN)
    assert frozen == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    assert model.get_layer("conv3_1").trainable


def test_resnet50_example_freezes_stem_and_stage_2():
    model = ssd_lib.ssd_network("resnet-50", 3, 300, width_multiplier=0.0625).model
    frozen = freezing.freeze_layers(model, PATTERN)
    assert frozen[:2] == ["conv1_conv", "conv1_bn"]
    assert all(name.startswith(("conv1_", "conv2_")) for name in frozen)
    assert "conv2_block3_3_conv" in frozen and len(frozen) == 2 + 3 * 6 + 2
    assert model.get_layer("conv3_block1_1_conv").trainable


def test_backbone_patterns_never_catch_the_heads():
    for base in ("vgg-16", "resnet-50"):
        model = ssd_lib.ssd_network(base, 3, 300, width_multiplier=0.0625).model
        frozen = freezing.freeze_layers(model, "^conv4_.*")
        assert frozen and not any("mbox" in name for name in frozen)


def test_pattern_matching_nothing_lists_real_names():
    model = ssd_lib.ssd_network("vgg-16", 3, 300, width_multiplier=0.0625).model
    with pytest.raises(ValueError, match="matches no layer.*conv1_1"):
        freezing.freeze_layers(model, "^block1_.*")
