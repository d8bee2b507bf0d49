"""The default path: whatever precision a run trained in, its export computes in float32 and
every deployment path takes it (SavedModel, TFLite float32/float16/int8, evaluate, predict).

Once, a run trained under ``--precision=auto`` (bfloat16 on AMX, Zen 4, A100/H100) exported a
bfloat16 serving graph that TFLite refused ('tf.ReverseV2' is neither a custom op nor a flex op).
"""

import collections
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.training.test_training import tiny_config
from tfssd import api, training
from tfssd.cli.export_tflite import calibration_images
from tfssd.config.run_config import TFLITE_QUANTIZATIONS
from tfssd.deploy import saved_model as export
from tfssd.deploy import tflite, trained_ssd
from tfssd.model.ssd import ssd_network
from tfssd.training.distribution import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REDUCED = ("bfloat16", "half")


def graph_dtypes(saved_model: str, signature: str = "serving_images") -> collections.Counter:
    """How many operations of the signature's graph (functions included) output each dtype."""
    graph = tf.saved_model.load(saved_model).signatures[signature].graph.as_graph_def()
    counts = collections.Counter()
    for nodes in [graph.node] + [f.node_def for f in graph.library.function]:
        for node in nodes:
            for key in ("T", "dtype", "DstT"):
                if key in node.attr and node.attr[key].type:
                    counts[tf.dtypes.as_dtype(node.attr[key].type).name] += 1
    return counts


def test_the_dtype_count_sees_a_reduced_precision_graph(tmp_path):
    ssd = ssd_network("vgg-16", 3, 128, width_multiplier=0.0625)
    settings = dict(image_size=128, class_names=["a", "b", "c"], nms_threshold=0.45)
    full = export.export_saved_model(ssd.model, ssd.anchors, str(tmp_path / "f32"), **settings)
    half = export.export_saved_model(ssd.in_precision("mixed_bfloat16").model, ssd.anchors,
                                     str(tmp_path / "bf16"), **settings)
    assert not any(graph_dtypes(full)[d] for d in REDUCED)
    assert graph_dtypes(half)["bfloat16"] > 10


@pytest.fixture(scope="module", params=["float32", "mixed_bfloat16", "mixed_float16"])
def trained_run(request, shapes_tfrecords, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp(request.param) / "run"
    config = tiny_config(shapes_tfrecords, model_dir, epochs=1, precision=request.param)
    result = training.train(config, tf.distribute.get_strategy(), Cluster())
    return request.param, result


@pytest.mark.slow
def test_the_export_is_float32_and_every_path_takes_it(trained_run, shapes_tfrecords, shapes_voc,
                                                       tmp_path):
    precision, result = trained_run
    dtypes = graph_dtypes(result.export_path)
    assert dtypes["float32"] > 0 and not any(dtypes[d] for d in REDUCED), (precision, dtypes)
    assert not any(graph_dtypes(result.export_path, "serving_default")[d] for d in REDUCED)

    image = sorted(glob.glob(os.path.join(shapes_voc, "JPEGImages", "*.jpg")))[-1]
    saved_model = api.load(result.export_path)
    (expected,) = saved_model.detect(image)
    trained = trained_ssd.load_trained_ssd(result.export_path)
    maps = {"saved_model": api.evaluate(result.export_path, shapes_tfrecords["validation"])
            .voc.mean_ap}
    assert maps["saved_model"] == pytest.approx(result.best_map, abs=1e-4)
    for quantize in TFLITE_QUANTIZATIONS:
        path = str(tmp_path / f"{quantize}.tflite")
        tflite.export_tflite(trained, path, quantize, calibration_images(
            shapes_tfrecords["train"], trained.image_size, 8) if quantize == "int8" else None)
        maps[quantize] = api.evaluate(path, shapes_tfrecords["validation"]).voc.mean_ap
        if quantize == "none":
            (found,) = api.load(path).detect(image)
            top = min(5, len(expected.scores))
            np.testing.assert_array_equal(found.classes[:top], expected.classes[:top])
            np.testing.assert_allclose(found.boxes[:top], expected.boxes[:top], atol=1e-3)
    assert all(0 <= m <= 1 for m in maps.values()), maps
    assert maps["none"] == pytest.approx(maps["saved_model"], abs=1e-3), maps


@pytest.mark.slow
@pytest.mark.parametrize("trained_run", ["mixed_bfloat16"], indirect=True)
def test_the_commands_take_a_bfloat16_runs_export(trained_run, tmp_path, shapes_voc):
    precision, result = trained_run
    assert precision == "mixed_bfloat16"
    env = {**os.environ, "PYTHONPATH": ROOT}
    export_dir = os.path.dirname(result.export_path)  # RUN/export, as a user names it
    converted = subprocess.run(
        [sys.executable, "-m", "tfssd.cli.export_tflite", f"--model={export_dir}",
         f"--output={tmp_path}/m.tflite"], capture_output=True, text=True, timeout=300, env=env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    image = sorted(glob.glob(os.path.join(shapes_voc, "JPEGImages", "*.jpg")))[-1]
    for model in (export_dir, f"{tmp_path}/m.tflite"):
        predicted = subprocess.run(
            [sys.executable, "-m", "tfssd.cli.predict", f"--model={model}", "--json",
             f"--output_dir={tmp_path}/pred", image], capture_output=True, text=True,
            timeout=300, env=env)
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        assert '{"prediction": [[' in predicted.stdout
