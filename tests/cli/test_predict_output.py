"""What tfssd-predict shows and writes: a summary for people on stdout (through a pipe and on a
terminal), SageMaker's JSON in files or, with --json, alone on stdout; drawings of only what
passes --draw_threshold.

A tiny model trained and exported here is run by the command in a subprocess; its answers are
compared with the same export loaded in this process (``tfssd.load``), value by value.
"""

import dataclasses
import glob
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfssd
from tests.training.test_training import tiny_config
from tfssd import training
from tfssd.cli.predict import BROKEN_PIPE_EXIT, MAX_LISTED
from tfssd.ops import drawing
from tfssd.ops.image_ops import decode_image
from tfssd.training.distribution import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 300
HEADER = re.compile(r"^(?P<path>\S+) \((?P<width>\d+)x(?P<height>\d+)\): (?P<found>.*)$")
DETECTION = re.compile(r"^  (?P<name>\S+) +(?P<score>\d\.\d{3})  "
                       r"x (?P<x0>-?\d+)-(?P<x1>-?\d+), y (?P<y0>-?\d+)-(?P<y1>-?\d+)$")


@pytest.fixture(scope="module")
def model(shapes_tfrecords, shapes_voc, tmp_path_factory):
    """The export of a tiny trained model, three of its validation images, and what the export
    loaded in this process detects on them."""
    run_dir = tmp_path_factory.mktemp("predict_output") / "run"
    result = training.train(tiny_config(shapes_tfrecords, run_dir), tf.distribute.get_strategy(),
                            Cluster())
    images = sorted(glob.glob(os.path.join(shapes_voc, "JPEGImages", "*.jpg")))[-3:]
    detections = tfssd.load(result.export_path).detect(images)
    return {"export": os.path.dirname(result.export_path), "images": images,
            "detections": dict(zip(images, detections))}


def _predict(*flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "tfssd.cli.predict", *flags],
                          stdout=stdout, stderr=stderr, text=True, timeout=TIMEOUT_S, cwd=ROOT)


def _run_in_pty(*flags) -> tuple[int, str]:
    """tfssd-predict with stdout and stderr on a pseudo-terminal, as a person runs it; its exit
    code and everything the terminal showed ("\\r\\n" read as "\\n")."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "tfssd.cli.predict", *flags],
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                               cwd=ROOT, close_fds=True)
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        else:
            pytest.fail(f"tfssd-predict on a terminal ran past {TIMEOUT_S} s")
        return process.wait(timeout=30), shown.decode().replace("\r\n", "\n")
    finally:
        process.kill()
        os.close(controller)


def _summaries(stdout: str) -> tuple[dict[str, dict], list[str]]:
    """Parses the summary: {image path: its header's fields, its detection lines, and any other
    line before the next image's ("stray")}, and the lines after the last image's."""
    images, current, tail = {}, None, []
    for line in stdout.splitlines():
        header, detection = HEADER.match(line), DETECTION.match(line)
        if header:
            if current is not None:
                current["stray"] = tail
            current = images[header["path"]] = {**header.groupdict(), "rows": [], "more": 0,
                                                "stray": []}
            tail = []
        elif detection and current is not None and not tail:
            current["rows"].append(detection.groupdict())
        elif line.startswith("  ... and ") and current is not None and not tail:
            current["more"] = int(line.split()[2])
        else:
            tail.append(line)
    return images, tail


def _assert_same_as_the_model(prediction: list, expected) -> None:
    """SageMaker's rows [class_id, score, xmin, ymin, xmax, ymax] equal one ``Detections``."""
    rows = np.array(prediction, np.float64).reshape(-1, 6)
    assert len(rows) == len(expected.scores) > 0
    np.testing.assert_array_equal(rows[:, 0], expected.classes)
    np.testing.assert_allclose(rows[:, 1], expected.scores, atol=1e-6)
    np.testing.assert_allclose(rows[:, 2:], expected.boxes[:, [1, 0, 3, 2]], atol=1e-6)


def _assert_summary_lists_the_model(summary: dict, expected, threshold: float) -> None:
    """One image's summary lists the model's detections scoring at least ``threshold``: class
    names, scores to 3 decimals, boxes in pixels, at most MAX_LISTED and the rest counted."""
    width, height = int(summary["width"]), int(summary["height"])
    passing = np.flatnonzero(expected.scores >= threshold)
    assert len(summary["rows"]) == min(len(passing), MAX_LISTED)
    assert summary["more"] == max(0, len(passing) - MAX_LISTED)
    names = expected.names()
    for row, k in zip(summary["rows"], passing):
        assert row["name"] == names[k]
        assert abs(float(row["score"]) - expected.scores[k]) <= 5e-4 + 1e-6
        ymin, xmin, ymax, xmax = expected.boxes[k] * [height, width, height, width]
        got = [int(row[key]) for key in ("x0", "y0", "x1", "y1")]
        np.testing.assert_allclose(got, [xmin, ymin, xmax, ymax], atol=0.5 + 1e-3)


def _assert_tail(tail: list[str], model, threshold: float, json_dir) -> None:
    """After the images: how many had nothing to draw (if any did), where the JSON went."""
    none = sum(not (d.scores >= threshold).any() for d in model["detections"].values())
    counted = [f"{none} of {len(model['images'])} images had no detections at or above "
               f"--draw_threshold={threshold:g} (drawn without boxes)"] if none else []
    assert tail[:-1] == counted and tail[-1].endswith(f": {json_dir}/<image>.json"), tail


def _threshold_between(model, count: int) -> float:
    """A score that the first image's ``count`` best detections reach and the rest do not."""
    scores = model["detections"][model["images"][0]].scores
    assert scores[count - 1] > scores[count], scores[count - 1:count + 1]
    return float(scores[count - 1] + scores[count]) / 2


def _drawn_as_expected(png_path: str, image_path: str, prediction: list, threshold: float,
                       class_names: list[str]) -> bool:
    """The PNG equals the image with exactly SageMaker's rows scoring at least ``threshold``
    drawn on it."""
    keep = [r for r in prediction if r[1] >= threshold]
    with open(image_path, "rb") as f:
        pixels = decode_image(f.read()).numpy()
    expected = drawing.draw_boxes(pixels, np.array([[r[3], r[2], r[5], r[4]] for r in keep]
                                                   ).reshape(-1, 4),
                                  np.array([int(r[0]) for r in keep]),
                                  np.array([r[1] for r in keep]), class_names)
    return np.array_equal(np.asarray(Image.open(png_path).convert("RGB")), expected)


@pytest.mark.slow
def test_a_pipe_gets_the_summary_and_the_files_get_the_json(model, tmp_path):
    threshold = _threshold_between(model, 3)
    result = _predict(f"--model={model['export']}", f"--output_dir={tmp_path}",
                      f"--draw_threshold={threshold!r}", *model["images"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"prediction"' not in result.stdout
    summaries, tail = _summaries(result.stdout)
    assert list(summaries) == model["images"]
    class_names = list(model["detections"][model["images"][0]].class_names)
    for image in model["images"]:
        expected, stem = model["detections"][image], os.path.splitext(os.path.basename(image))[0]
        summary = summaries[image]
        assert not summary["stray"], summary["stray"]
        assert (int(summary["width"]), int(summary["height"])) == Image.open(image).size
        assert summary["found"].endswith(f"; drawn in {tmp_path / stem}.png")
        _assert_summary_lists_the_model(summary, expected, threshold)
        # The JSON file holds every detection (--min_score=0), as the model returns them.
        prediction = json.loads((tmp_path / f"{stem}.json").read_text())["prediction"]
        _assert_same_as_the_model(prediction, expected)
        assert _drawn_as_expected(str(tmp_path / f"{stem}.png"), image, prediction, threshold,
                                  class_names), f"{stem}.png: not only what passes is drawn"
    assert len(summaries[model["images"][0]]["rows"]) == 3
    _assert_tail(tail, model, threshold, tmp_path)


@pytest.mark.slow
def test_json_flag_puts_only_sagemaker_json_on_stdout(model, tmp_path):
    # A --min_score that leaves out half of the first image's detections.
    min_score = _threshold_between(model, len(model["detections"][model["images"][0]].scores) // 2)
    result = _predict(f"--model={model['export']}", "--json", f"--json_dir={tmp_path}",
                      f"--min_score={min_score!r}", *model["images"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(model["images"])
    for line, image in zip(lines, model["images"]):
        response = json.loads(line)
        assert set(response) == {"prediction"}
        stem = os.path.splitext(os.path.basename(image))[0]
        assert json.loads((tmp_path / f"{stem}.json").read_text()) == response
        expected = model["detections"][image]
        kept = expected.scores >= min_score
        _assert_same_as_the_model(response["prediction"], dataclasses.replace(
            expected, boxes=expected.boxes[kept], scores=expected.scores[kept],
            classes=expected.classes[kept]))
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.splitext(os.path.basename(i))[0] + ".json" for i in model["images"])  # no PNG


@pytest.mark.slow
def test_a_terminal_shows_the_summary_without_json_or_log_prefixes(model, tmp_path):
    code, shown = _run_in_pty(f"--model={model['export']}", f"--output_dir={tmp_path}",
                              *model["images"])
    assert code == 0, shown[-3000:]
    assert "prediction" not in shown and "[[" not in shown
    summaries, tail = _summaries(shown)
    assert list(summaries) == model["images"]
    for image in model["images"]:
        _assert_summary_lists_the_model(summaries[image], model["detections"][image], 0.5)
        # Nothing else on the terminal: no absl or TensorFlow log (I1204 12:44:33.375412 ...).
        assert not summaries[image]["stray"], summaries[image]["stray"]
    _assert_tail(tail, model, 0.5, tmp_path)
    assert len(shown.splitlines()) <= len(model["images"]) * (MAX_LISTED + 2) + 2


@pytest.mark.slow
def test_threshold_above_every_score_says_so_once_and_draws_no_box(model, tmp_path):
    best = max(float(d.scores[0]) for d in model["detections"].values())
    assert best < 1.0, best
    result = _predict(f"--model={model['export']}", f"--output_dir={tmp_path}",
                      "--draw_threshold=1", *model["images"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries, tail = _summaries(result.stdout)
    for image in model["images"]:
        expected = model["detections"][image]
        assert summaries[image]["found"].startswith(
            f"no detections at or above 1 (best: {expected.names()[0]} "
            f"{expected.scores[0]:.3f})")
        assert not summaries[image]["rows"] and not summaries[image]["stray"]
        stem = os.path.splitext(os.path.basename(image))[0]
        with open(image, "rb") as f:
            pixels = decode_image(f.read()).numpy()
        drawn = np.asarray(Image.open(tmp_path / f"{stem}.png").convert("RGB"))
        np.testing.assert_array_equal(drawn, pixels)  # the image as decoded, no box on it
    _assert_tail(tail, model, 1.0, tmp_path)  # "3 of 3 images had no detections ...", once
    assert result.stdout.count("no detections at or above --draw_threshold") == 1
    assert "no detection" not in result.stderr


@pytest.mark.slow
def test_json_through_a_pipe_closed_early_stops_quietly(model):
    """`tfssd-predict --json ... | head -n 1`: the reader leaves after one line. Twenty images
    of ~20 kB of JSON each are more than a pipe holds, so the command meets the closed pipe."""
    process = subprocess.Popen([sys.executable, "-m", "tfssd.cli.predict",
                                f"--model={model['export']}", "--json",
                                *[model["images"][0]] * 20],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        first = process.stdout.readline()
        assert json.loads(first)["prediction"]
        process.stdout.close()
        code = process.wait(timeout=TIMEOUT_S)
        stderr = process.stderr.read().decode()
    finally:
        process.kill()
    assert code == BROKEN_PIPE_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_images_that_would_overwrite_each_others_files_are_refused(shapes_voc, tmp_path):
    image = sorted(glob.glob(os.path.join(shapes_voc, "JPEGImages", "*.jpg")))[0]
    other = tmp_path / "elsewhere" / os.path.basename(image)
    other.parent.mkdir()
    other.write_bytes(open(image, "rb").read())
    # Refused before the model is read: the model named here does not exist.
    result = _predict(f"--model={tmp_path / 'no_model'}", f"--json_dir={tmp_path / 'out'}",
                      image, str(other))
    assert result.returncode == 1
    stem = os.path.splitext(os.path.basename(image))[0]
    assert (f"{image} and {other} would both be written as {stem}.* in --json_dir; rename one"
            in result.stderr), result.stderr[-3000:]
    assert not os.path.exists(tmp_path / "out")
