"""The commands a user runs, as subprocesses: convert, train, predict, evaluate."""

import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tfssd
from tfssd.training.sagemaker_metrics import METRIC_REGEXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*argv, timeout=600):
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(shapes_voc, tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    for split, prefix in (("train", "train"), ("val", "val")):
        converted = run("-m", "tfssd.cli.convert", "--format=voc", f"--voc_dir={shapes_voc}",
                        f"--split={split}",
                        f"--output={work}/data/{prefix}")
        assert re.search(r"images: \d+ read, \d+ written, 0 skipped", converted.stdout)
    model_dir = work / "run"
    result = run("-m", "tfssd.train", "--num_classes=3", "--num_training_samples=8",  # the card
                 "--mini_batch_size=4", "--epochs=2", "--use_pretrained_model=0",
                 "--width_multiplier=0.0625", f"--train={work}/data/train-*",
                 f"--validation={work}/data/val-*", f"--model_dir={model_dir}",
                 "--log_every_steps=1", "--seed=1")
    return {"work": work, "model_dir": model_dir, "log": result.stdout + result.stderr}


@pytest.mark.slow
def test_train_writes_sagemaker_metrics_and_an_export(trained):
    found = {name: re.findall(regex, trained["log"]) for name, regex in METRIC_REGEXES.items()}
    for name, values in found.items():
        assert values, f"no {name} line in the log"
        numbers = [float(v) for v in values]
        assert all(math.isfinite(v) for v in numbers), (name, values)
        low, high = {"train:progress": (0, 100), "validation:mAP": (0, 1)}.get(name, (0, 1e9))
        assert all(low <= v <= high for v in numbers), (name, values)
        if name in ("train:cross_entropy", "train:smooth_l1", "train:throughput"):
            assert all(v > 0 for v in numbers), (name, values)
    assert float(found["train:progress"][-1]) == 100.0
    # One per epoch, then the exported model's (the best epoch's weights), which tuning ranks by.
    epochs, final = [float(v) for v in found["validation:mAP"][:-1]], float(
        found["validation:mAP"][-1])
    assert len(epochs) == 2 and abs(final - max(epochs)) < 0.02, found["validation:mAP"]
    assert os.path.isfile(trained["model_dir"] / "export" / "1" / "saved_model.pb")


@pytest.mark.slow
def test_predict_prints_sagemaker_responses_and_draws(trained, shapes_voc, tmp_path):
    images = sorted(glob.glob(os.path.join(shapes_voc, "JPEGImages", "*.jpg")))[:2]
    result = run("-m", "tfssd.cli.predict", f"--saved_model={trained['model_dir']}/export",
                 f"--output_dir={tmp_path}", "--draw_threshold=0", "--json", *images)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 2
    # The same export loaded in this process: the command's rows are its detections.
    expected = tfssd.load(trained["model_dir"] / "export").detect(images)
    for response, detections in zip(lines, expected):
        assert set(response) == {"prediction"}
        rows = np.array(response["prediction"]).reshape(-1, 6)
        assert len(rows) == len(detections.scores) > 0
        np.testing.assert_array_equal(rows[:, 0], detections.classes)
        np.testing.assert_allclose(rows[:, 1], detections.scores, atol=1e-6)
        np.testing.assert_allclose(rows[:, 2:], detections.boxes[:, [1, 0, 3, 2]], atol=1e-6)
        for class_id, score, xmin, ymin, xmax, ymax in response["prediction"]:
            assert class_id in (0.0, 1.0, 2.0) and 0 <= score <= 1
            assert 0 <= xmin <= xmax <= 1 and 0 <= ymin <= ymax <= 1
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        drawn = Image.open(tmp_path / f"{stem}.png")
        assert drawn.size == Image.open(image).size
        assert json.loads((tmp_path / f"{stem}.json").read_text()) == lines[images.index(image)]


@pytest.mark.slow
def test_evaluate_the_exported_model(trained, tmp_path):
    """With --report, which adds its files and lines to the same output."""
    result = run("-m", "tfssd.cli.evaluate", f"--saved_model={trained['model_dir']}/export",
                 f"--validation={trained['work']}/data/val-*", f"--report={tmp_path}/report",
                 "--image_shape=300")
    # The training log's last validation:mAP line is this export's mAP.
    evaluated = float(re.search(METRIC_REGEXES["validation:mAP"], result.stdout).group(1))
    final = float(re.findall(METRIC_REGEXES["validation:mAP"], trained["log"])[-1])
    assert abs(evaluated - final) < 1e-4, (evaluated, final)
    assert "circle" in result.stdout and "8 images" in result.stdout
    assert f"report: {tmp_path}/report (objects sized at 300x300)" in result.stdout
    for name in ("pr_curves", "f1", "confusion_matrix", "by_size"):
        with Image.open(tmp_path / "report" / f"{name}.png") as png:
            assert png.size == (800, 600)
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["images"] == 8 and "overall" in summary["best_threshold"]
    confusion = (tmp_path / "report" / "confusion_matrix.csv").read_text().splitlines()
    assert confusion[0].endswith(",background") and len(confusion) == 3 + 2


def _as_odapi(tfssd_files: list[str], path: str) -> None:
    """tfssd's records rewritten in the TF Object Detection API's schema (labels from 1)."""
    import tensorflow as tf

    from tfssd.data import schema

    with tf.io.TFRecordWriter(path) as writer:
        for record in tf.data.TFRecordDataset(tfssd_files):
            example = schema.parse_example(record)
            boxes, classes, _ = schema.label_to_objects(example["label"])  # yxyx, from 0
            boxes, classes = boxes.numpy(), classes.numpy()
            floats = lambda values: tf.train.Feature(float_list=tf.train.FloatList(value=values))
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[example["image_bytes"].numpy()])),
                "image/object/bbox/ymin": floats(boxes[:, 0]),
                "image/object/bbox/xmin": floats(boxes[:, 1]),
                "image/object/bbox/ymax": floats(boxes[:, 2]),
                "image/object/bbox/xmax": floats(boxes[:, 3]),
                "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=classes + 1)),
            }
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())


def test_evaluate_takes_object_detection_api_records(trained):
    """Such records train directly; they evaluate the same, with --input_format detected."""
    work = trained["work"]
    _as_odapi(sorted(glob.glob(f"{work}/data/val-*")), f"{work}/odapi_val.tfrecord")
    maps = []
    for validation in (f"{work}/data/val-*", f"{work}/odapi_val.tfrecord"):
        result = run("-m", "tfssd.cli.evaluate", f"--model={trained['model_dir']}/export",
                     f"--validation={validation}")
        maps.append(re.search(METRIC_REGEXES["validation:mAP"], result.stdout).group(1))
    print("validation mAP, tfssd and OD API records:", maps)
    assert float(maps[0]) > 0 and maps[0] == maps[1] and "8 images" in result.stdout


def _console_scripts() -> dict[str, str]:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    return dict(line.split(" = ") for line in
                setup["options.entry_points"]["console_scripts"].strip().splitlines())


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_help_of_the_installed_command_shows_its_docstring_and_flags(script):
    """Under a console script absl's main module is pip's wrapper; --help once listed nothing."""
    import shutil

    path = shutil.which(script, path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip(f"{script} is not installed beside {sys.executable} (pip install -e .)")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    module = _console_scripts()[script].split(":")[0]
    first_line = __import__(module, fromlist=["_"]).__doc__.strip().splitlines()[0]
    assert result.stdout.startswith(first_line), result.stdout[:500]
    assert "show_traceback" in result.stdout
    if script != "tfssd-cluster-server":  # TF_CONFIG is all it takes
        assert len(re.findall(r"^  --", result.stdout, re.M)) > 1, result.stdout
