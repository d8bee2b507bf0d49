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
                 "--log_every_steps=1", "--seed=1", "--metric_lines")  # not by default on a pipe
    return {"work": work, "model_dir": model_dir, "log": result.stdout + result.stderr}


def _scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalar summaries in the event files of ``folder``."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.shape == () and array.dtype.kind == "f":
                    found.setdefault(value.tag, {})[event.step] = float(array)
    return found


@pytest.mark.slow
def test_train_writes_sagemaker_metrics_and_an_export(trained):
    """The metric lines carry the run's own values: with --log_every_steps=1, each step's
    losses and throughput as the run recorded them in TensorBoard, progress step by step, each
    epoch's validation mAP, then the exported model's: the best epoch's."""
    found = {name: [float(v) for v in re.findall(regex, trained["log"])]
             for name, regex in METRIC_REGEXES.items()}
    for name, values in found.items():
        assert values, f"no {name} line in the log"
        assert all(math.isfinite(v) for v in values), (name, values)
    train = _scalars(trained["model_dir"] / "train")
    validation = _scalars(trained["model_dir"] / "validation")
    steps = sorted(train["loss/cross_entropy"])
    assert steps == [1, 2, 3, 4]  # 8 samples, batches of 4, 2 epochs
    assert found["train:progress"] == [25.0, 50.0, 75.0, 100.0]
    # Printed with 6 decimals (3 for the throughput).
    for name, tag, decimals in (("train:cross_entropy", "loss/cross_entropy", 6),
                                ("train:smooth_l1", "loss/smooth_l1", 6),
                                ("train:throughput", "throughput_images_per_second", 3)):
        np.testing.assert_allclose(found[name], [train[tag][s] for s in steps], rtol=1e-6,
                                   atol=0.6 * 10.0 ** -decimals, err_msg=name)
    assert all(v > 0 for v in found["train:cross_entropy"] + found["train:throughput"])
    # One per epoch (after steps 2 and 4), then the exported model's, which tuning ranks by:
    # the best epoch's weights.
    epochs, final = found["validation:mAP"][:-1], found["validation:mAP"][-1]
    np.testing.assert_allclose(epochs, [validation["mAP"][2], validation["mAP"][4]], atol=6e-7)
    assert abs(final - max(epochs)) <= 1e-4, found["validation:mAP"]
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


def _voc07_ap(detections: list, ground_truth: list, class_id: int) -> float:
    """PASCAL VOC 2007's 11-point AP of one class, written here from the devkit's definition:
    detections by falling score, each a true positive when its best-overlapping ground truth
    of the class (IoU > 0.5) is not yet taken; difficult objects count neither way.

    ``detections``: per image (boxes [K, 4] yxyx, scores [K], classes [K]); ``ground_truth``:
    per image (boxes [M, 4], classes [M], difficult [M]).
    """
    found = [(score, image, box) for image, (boxes, scores, classes) in enumerate(detections)
             for box, score, c in zip(boxes, scores, classes) if int(c) == class_id]
    found.sort(key=lambda d: -d[0])
    objects = sum(int(((c == class_id) & ~d).sum()) for _, c, d in ground_truth)
    taken = [np.zeros(len(c), bool) for _, c, _ in ground_truth]
    hits = []
    for _, image, box in found:
        gt_boxes, gt_classes, difficult = ground_truth[image]
        best, best_iou = -1, 0.0
        for j, (gt, c) in enumerate(zip(gt_boxes, gt_classes)):
            if c != class_id:
                continue
            height = min(box[2], gt[2]) - max(box[0], gt[0])
            width = min(box[3], gt[3]) - max(box[1], gt[1])
            inter = max(height, 0.0) * max(width, 0.0)
            union = ((box[2] - box[0]) * (box[3] - box[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1])
                     - inter)
            if union > 0 and inter / union > best_iou:
                best, best_iou = j, inter / union
        if best_iou > 0.5 and difficult[best]:
            continue
        hit = best_iou > 0.5 and not taken[image][best]
        if hit:
            taken[image][best] = True
        hits.append(hit)
    if not objects:
        return float("nan")
    true_positives = np.cumsum(hits)
    recall = true_positives / objects
    precision = true_positives / np.arange(1, len(hits) + 1)
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.linspace(0, 1, 11)]))


@pytest.mark.slow
def test_evaluate_the_exported_model(trained, tmp_path):
    """Its mAP is the VOC 2007 mAP computed here, independently, on the export's own detections
    (the SavedModel run in this process on each record's encoded image); with --report, which
    adds its files and lines to the same output, the report counts the records' objects."""
    import tensorflow as tf

    from tfssd.data import schema

    result = run("-m", "tfssd.cli.evaluate", f"--saved_model={trained['model_dir']}/export",
                 f"--validation={trained['work']}/data/val-*", f"--report={tmp_path}/report",
                 "--image_shape=300", "--metric_lines")
    evaluated = float(re.search(METRIC_REGEXES["validation:mAP"], result.stdout).group(1))

    serve = tf.saved_model.load(str(trained["model_dir"] / "export" / "1")).signatures[
        "serving_default"]
    detections, ground_truth = [], []
    for record in tf.data.TFRecordDataset(sorted(glob.glob(f"{trained['work']}/data/val-*"))):
        example = schema.parse_example(record)
        boxes, classes, difficult = (t.numpy() for t in schema.label_to_objects(
            example["label"]))
        ground_truth.append((boxes, classes, difficult))
        out = {k: v.numpy()[0] for k, v in serve(images=example["image_bytes"][None]).items()}
        n = int(out["num_detections"])
        detections.append((out["detection_boxes"][:n], out["detection_scores"][:n],
                           out["detection_classes"][:n]))
    assert len(ground_truth) == 8 and sum(len(d[1]) for d in detections) > 0
    ap = [_voc07_ap(detections, ground_truth, c) for c in range(3)]
    expected = float(np.nanmean(ap))
    print("VOC07 mAP, tfssd-evaluate and recomputed:", evaluated, expected, ap)
    assert expected > 0 and abs(evaluated - expected) <= 1e-6, (evaluated, expected, ap)
    # The training log's last validation:mAP line is this export's mAP.
    final = float(re.findall(METRIC_REGEXES["validation:mAP"], trained["log"])[-1])
    assert abs(evaluated - final) < 1e-4, (evaluated, final)
    assert "circle" in result.stdout and "8 images" in result.stdout
    assert f"report: {tmp_path}/report (objects sized at 300x300)" in result.stdout
    for name in ("pr_curves", "f1", "confusion_matrix", "by_size"):
        with Image.open(tmp_path / "report" / f"{name}.png") as png:
            assert png.size == (800, 600)
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["images"] == 8 and "overall" in summary["best_threshold"]
    rows = [row.split(",") for row in
            (tmp_path / "report" / "confusion_matrix.csv").read_text().splitlines()]
    assert rows[0] == ["ground truth \\ detection", "circle", "square", "triangle",
                       "background"]
    # Each class's row counts its objects (found, confused or missed), difficult ones left out.
    objects = [sum(int(((c == k) & ~d).sum()) for _, c, d in ground_truth) for k in range(3)]
    assert [sum(int(v) for v in row[1:]) for row in rows[1:4]] == objects
    assert rows[4][0] == "background" and rows[4][-1] == "0"


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
    results = [run("-m", "tfssd.cli.evaluate", f"--model={trained['model_dir']}/export",
                   f"--validation={validation}", *extra)
               for validation, extra in ((f"{work}/data/val-*", ["--metric_lines"]),
                                         (f"{work}/odapi_val.tfrecord", []))]
    maps = [re.search(r"^mAP (\S+)$", result.stdout, re.M).group(1) for result in results]
    print("validation mAP, tfssd and OD API records:", maps)
    assert float(maps[0]) > 0 and maps[0] == maps[1] and "8 images" in results[1].stdout
    # SageMaker's metric line when asked for (the same mAP), and not by default outside a job.
    metric = float(re.search(METRIC_REGEXES["validation:mAP"], results[0].stdout).group(1))
    assert abs(metric - float(maps[0])) <= 5e-5
    assert "#quality_metric" not in results[1].stdout + results[1].stderr


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
