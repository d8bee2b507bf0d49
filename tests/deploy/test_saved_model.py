"""Export: the SavedModel reloaded in a fresh process (no tfssd) gives the in-memory results."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfssd.deploy import saved_model as export
from tfssd.model.ssd import ssd_network


def _jpeg(seed: int, width: int, height: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.slow
def test_round_trip_in_a_fresh_process(tmp_path):
    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    path = export.export_saved_model(ssd.model, ssd.anchors, str(tmp_path / "export"),
                                     image_size=128, class_names=["a", "b", "c"],
                                     nms_threshold=0.45, score_threshold=0.0)
    assert path == str(tmp_path / "export" / "1")
    assert export.read_labels(path) == ["a", "b", "c"]
    images = [_jpeg(0, 200, 150), _jpeg(1, 90, 120)]
    module = export.DetectionModule(ssd.model, ssd.anchors, 128, nms_threshold=0.45,
                                    score_threshold=0.0)
    expected = {k: v.numpy().tolist()
                for k, v in module.detect_encoded(tf.constant(images)).items()}
    (tmp_path / "images.json").write_text(json.dumps([i.hex() for i in images]))
    script = (
        "import json, sys\n"
        "import tensorflow as tf\n"
        "images = [bytes.fromhex(h) for h in json.load(open(sys.argv[2]))]\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "out = loaded.signatures['serving_default'](images=tf.constant(images))\n"
        "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n"
        "print('tfssd imported:', 'tfssd' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "images.json")],
                            capture_output=True, text=True, timeout=180,
                            cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "tfssd imported: False"
    reloaded = json.loads(lines[-2])
    assert set(reloaded) == {"detection_boxes", "detection_scores", "detection_classes",
                             "num_detections"}
    assert reloaded["num_detections"] == expected["num_detections"]
    for key in expected:
        np.testing.assert_allclose(reloaded[key], expected[key], atol=1e-5)
    assert np.asarray(reloaded["detection_boxes"]).shape == (2, 200, 4)


@pytest.mark.slow
def test_uint8_signature_and_versions(tmp_path):
    ssd = ssd_network("vgg-16", 2, 128, width_multiplier=0.0625)
    base = str(tmp_path / "export")
    first = export.export_saved_model(ssd.model, ssd.anchors, base, image_size=128,
                                      class_names=["x", "y"], nms_threshold=0.5)
    second = export.export_saved_model(ssd.model, ssd.anchors, base, image_size=128,
                                       class_names=["x", "y"], nms_threshold=0.5)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert export.latest_version(base) == second
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging leftovers
    loaded = tf.saved_model.load(second)
    pixels = np.random.default_rng(0).integers(0, 255, (1, 90, 70, 3), np.uint8)
    out = loaded.signatures["serving_images"](images=tf.constant(pixels))
    assert out["detection_boxes"].shape == (1, 200, 4)
