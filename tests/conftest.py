"""Shared fixtures: small datasets the tests write themselves (nothing is downloaded)."""

import glob
import os

import pytest

from tfssd.data import conversion, synthetic, voc


@pytest.fixture(scope="session")
def shapes_voc(tmp_path_factory):
    """A synthetic VOC dataset: 24 training and 8 validation images of 3 shape classes."""
    root = str(tmp_path_factory.mktemp("shapes") / "voc")
    return synthetic.make_shapes_voc(root, num_train=24, num_val=8, seed=0)


@pytest.fixture(scope="session")
def shapes_tfrecords(shapes_voc, tmp_path_factory):
    """``shapes_voc`` converted: {"train": files, "validation": files, "dir": output dir}."""
    out = str(tmp_path_factory.mktemp("shapes_tfrecords"))
    for split, prefix in (("train", "train"), ("val", "validation")):
        items = voc.read_voc(os.path.join(shapes_voc, "Annotations"),
                             os.path.join(shapes_voc, "JPEGImages"),
                             voc.read_ids(os.path.join(shapes_voc, "ImageSets", "Main",
                                                       split + ".txt")))
        conversion.convert(items, os.path.join(out, prefix), num_shards=2)
    return {"train": tuple(sorted(glob.glob(os.path.join(out, "train-*")))),
            "validation": tuple(sorted(glob.glob(os.path.join(out, "validation-*")))),
            "dir": out}


@pytest.fixture
def absl_lines():
    """The messages tfssd logs through absl while the test runs, INFO included.

    pytest's caplog misses them once an earlier test in the same process has changed absl's
    verbosity or handlers, so this listens on absl's logger itself.
    """
    import logging

    from absl import logging as absl_logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, verbosity = Collect(logging.INFO), absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    logger = logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        absl_logging.set_verbosity(verbosity)
