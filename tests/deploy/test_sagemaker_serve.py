"""An endpoint whose model data is a model.tar.gz of SageMaker's algorithm, as SageMaker unpacks
it into /opt/ml/model: docker/serve imports it at start (no MXNet) and answers with MXNet's
detections.

The model is the narrow ResNet-50 fixture that MXNet 1.9.1 made (tests/fixtures/sagemaker/); the
/opt/ml tree lies under a temporary root (TFSSD_SAGEMAKER_ROOT).
"""

import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from tfssd.cli import load_test as load
from tfssd.cli import serve

from .test_sagemaker_import import ARTIFACT_FILES, FIXTURE, make_tar
from .test_server import SERVE_SCRIPT, call


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_sagemaker_artifacts_are_recognised(tmp_path):
    assert not serve.is_sagemaker_artifact(str(tmp_path))
    for name in ARTIFACT_FILES:
        shutil.copy(os.path.join(FIXTURE, name), tmp_path)
    assert serve.is_sagemaker_artifact(str(tmp_path))
    assert serve.is_sagemaker_artifact(make_tar(tmp_path / "model.tar.gz"))
    assert not serve.is_sagemaker_artifact(os.path.join(FIXTURE, "hyperparams.json"))


@pytest.mark.slow
def test_serve_answers_with_mxnets_detections_from_the_algorithms_model(tmp_path):
    model_dir = tmp_path / "opt_ml" / "model"
    model_dir.mkdir(parents=True)
    for name in ARTIFACT_FILES:
        shutil.copy(os.path.join(FIXTURE, name), model_dir)
    port = load.free_port()
    server = load.ServerProcess(
        [], port, env={**os.environ, "TFSSD_SAGEMAKER_ROOT": str(tmp_path / "opt_ml"),
                       "SAGEMAKER_BIND_TO_PORT": str(port),
                       "PATH": os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", "")},
        log_path=str(tmp_path / "serve.log"), command=["sh", SERVE_SCRIPT])
    try:
        server.wait_ready()
        images = np.load(os.path.join(FIXTURE, "images.npy"))
        mxnet = np.load(os.path.join(FIXTURE, "outputs.npz"))["detections"]
        for image, theirs in zip(images, mxnet):
            status, _, body = call(server.url + "/invocations", "POST", _png(image), "image/png")
            assert status == 200, body
            ours = np.array(json.loads(body)["prediction"])  # class, score, xmin, ymin, xmax, ymax
            theirs = theirs[theirs[:, 0] >= 0][:100]
            matched = [np.abs(ours - d).max(axis=1).min() < 1e-4 for d in theirs]
            assert np.mean(matched) >= 0.9 and all(matched[:10]), np.mean(matched)
        assert "holds a model of SageMaker's Object Detection algorithm" in server.log()
        assert not list(model_dir.glob("tfssd*"))  # /opt/ml/model is only read
    finally:
        server.stop()
