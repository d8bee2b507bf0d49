"""tfssd-convert for every format and tfssd-inspect, as a user runs them."""

import os
import re
import subprocess
import sys

import pytest

from tests.data import format_writers as fw
from tests.processes import run_python_concurrently

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*argv, check=True):
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    images = str(tmp / "images")
    pictures = fw.tiny_dataset(images)
    fw.write_voc(pictures, str(tmp / "voc"))
    fw.write_coco(pictures, str(tmp / "coco.json"))
    fw.write_sagemaker_json(pictures, str(tmp / "annotations"))
    fw.write_manifest(pictures, str(tmp / "train.manifest"))
    fw.write_lst(pictures, str(tmp / "train.lst"))
    fw.write_rec(pictures, str(tmp / "train.rec"))
    return tmp, images


@pytest.mark.slow
@pytest.mark.parametrize("name,arguments", [
    ("voc", ["--format=voc", "--annotations_dir={t}/voc/Annotations", "--images_dir={i}"]),
    ("coco", ["--format=coco", "--coco_json={t}/coco.json", "--images_dir={i}"]),
    ("sagemaker_json", ["--format=sagemaker_json", "--images_dir={i}",
                        "--annotations_dir={t}/annotations"]),
    ("manifest", ["--format=manifest", "--manifest={t}/train.manifest", "--images_root={t}"]),
    ("lst", ["--format=lst", "--lst={t}/train.lst", "--images_root={i}"]),
    ("recordio", ["--format=recordio", "--rec={t}/train.rec"]),
])
def test_convert_each_format(sources, tmp_path, name, arguments):
    tmp, images = sources
    result = run("-m", "tfssd.cli.convert", *[a.format(t=tmp, i=images) for a in arguments],
                 f"--output={tmp_path}/data/train")
    assert "images: 3 read, 3 written, 0 skipped" in result.stdout
    assert re.search(r"boxes written: 3 \(0 marked difficult\)", result.stdout)
    assert os.path.isfile(tmp_path / "data" / "train-00000-of-00001.tfrecord")
    assert os.path.isfile(tmp_path / "data" / "class_map.json")


@pytest.mark.slow
def test_convert_reports_usage_errors(sources, tmp_path):
    tmp, _ = sources
    no_json, result = run_python_concurrently(
        ["-m", "tfssd.cli.convert", "--format=coco", f"--output={tmp_path}/x"],
        ["-m", "tfssd.cli.convert", "--format=voc", f"--annotations_dir={tmp}/voc/Annotations",
         f"--images_dir={tmp}/nowhere", f"--output={tmp_path}/x"], cwd=ROOT)
    assert no_json.returncode != 0 and "--format=coco needs --coco_json and --images_dir" in (
        no_json.stdout + no_json.stderr)
    assert "--images_dir=" in result.stderr and "no such file or directory" in result.stderr


@pytest.mark.slow
def test_strict_conversion_fails_with_the_item_named(sources, tmp_path):
    tmp, images = sources
    (tmp / "broken.lst").write_text((tmp / "train.lst").read_text().replace("img1.jpg",
                                                                            "missing.jpg"))
    result = run("-m", "tfssd.cli.convert", "--format=lst", f"--lst={tmp}/broken.lst",
                 f"--images_root={images}", f"--output={tmp_path}/data/t", "--strict",
                 check=False)
    assert result.returncode == 1
    assert "error: missing.jpg: missing or unreadable image file" in result.stderr
    assert not os.path.exists(tmp_path / "data")  # not even the folder it created


@pytest.mark.slow
def test_inspect_tfrecord(shapes_tfrecords, tmp_path):
    grid = tmp_path / "grid.png"
    result = run("-m", "tfssd.cli.inspect_data", f"--input={shapes_tfrecords['dir']}/train-*",
                 f"--grid={grid}", "--grid_images=4", "--decode")
    assert "records: 24" in result.stdout and "tfssd schema" in result.stdout
    assert re.search(r"\s0 circle\s+\d+", result.stdout)
    assert "largest label width needed" in result.stdout and "does not decode" not in result.stdout
    assert grid.stat().st_size > 1000
