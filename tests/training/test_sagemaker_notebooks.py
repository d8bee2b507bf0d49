"""The training requests of AWS's own Object Detection notebooks (aws/amazon-sagemaker-examples),
sent unchanged to the image's `train`: each job reaches its training steps.

* birds: RecordIO from im2rec in File mode, ResNet-50 at 512, sgd, lr_scheduler_step "33,67";
* Ground Truth augmented manifest: Pipe mode, `RecordWrapperType: RecordIO`, `AttributeNames`
  [source-ref, the labeling job's name] (no metadata record), rmsprop, one class, a batch of
  one, `epochs=5` with `lr_scheduler_step="3,6"` (a step past the last epoch);
* Ground Truth example: the same with `epochs=30` and `lr_scheduler_step=""`.

Only `num_training_samples` (the size of the data) and `num_classes` (birds) follow the test's
own data; `log_every_steps=1`, `seed` and `width_multiplier` are tfssd's own options: at full
width one job took minutes to trace and step on 2 cores, so the networks are 1/16 wide, and
`use_pretrained_model=1` loads an "ImageNet" file of that width with random values, named by
tfssd's `pretrained_weights` (the image's baked files, found through TFSSD_IMAGENET_WEIGHTS, are
full width: tests/model/test_weights.py checks that lookup; nothing is downloaded).
Each job is stopped with SIGTERM once its first step is logged (it checkpoints, leaves a model
and exits 143, as a stopped SageMaker job does); the three run at once.
"""

import os
import re
import signal
import subprocess
import threading
import time

import h5py
import pytest

from tests import sagemaker_fixtures as sm
from tfssd.model import weights

from .test_sagemaker_job import MANIFEST, RECORDIO, TRAIN_SCRIPT, _environ

GROUND_TRUTH = {"base_network": "resnet-50", "use_pretrained_model": "1", "num_classes": "1",
                "mini_batch_size": "1", "epochs": "5", "learning_rate": "0.001",
                "lr_scheduler_step": "3,6", "lr_scheduler_factor": "0.1", "optimizer": "rmsprop",
                "momentum": "0.9", "weight_decay": "0.0005", "overlap_threshold": "0.5",
                "nms_threshold": "0.45", "image_shape": "300", "label_width": "350"}
NOTEBOOKS = {
    "birds": {"base_network": "resnet-50", "use_pretrained_model": "1", "num_classes": "3",
              "mini_batch_size": "16", "epochs": "100", "learning_rate": "0.001",
              "lr_scheduler_step": "33,67", "lr_scheduler_factor": "0.1", "optimizer": "sgd",
              "momentum": "0.9", "weight_decay": "0.0005", "overlap_threshold": "0.5",
              "nms_threshold": "0.45", "image_shape": "512", "label_width": "350"},
    "ground_truth_manifest": GROUND_TRUTH,
    "ground_truth_example": {**GROUND_TRUTH, "epochs": "30", "lr_scheduler_step": ""},
}
LABELING_JOB = "boxes-labeling-job"  # the notebooks' second attribute: the labeling job's name
WIDTH = 0.0625  # tfssd's width_multiplier: full-width ResNet-50 steps take minutes on 2 cores


def _narrow_resnet50(folder):
    """A ResNet-50 "notop" file as keras.applications' (random values, the layers of tfssd's
    ResNet-50 at WIDTH, written by Keras' own legacy-h5 writer)."""
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    import keras

    from tfssd.model.ssd import ssd_network

    model = ssd_network("resnet-50", 1, 300, width_multiplier=WIDTH).model
    backbone = keras.Model(model.input, model.get_layer("conv5_block3_out").output)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, weights.IMAGENET_WEIGHTS["resnet-50"].filename)
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, backbone)
    return path


def _job(name, root, pictures, imagenet):
    hyperparameters = {**NOTEBOOKS[name], "num_training_samples": len(pictures["train"]),
                       "log_every_steps": 1, "seed": 1, "width_multiplier": WIDTH,
                       "pretrained_weights": imagenet}
    channels = {"train": RECORDIO, "validation": RECORDIO} if name == "birds" else {
        "train": MANIFEST, "validation": MANIFEST}
    sm.make_job(str(root), hyperparameters, channels)
    if name == "birds":
        for channel, split in (("train", "train"), ("validation", "validation")):
            os.makedirs(root / "input/data" / channel)
            (root / "input/data" / channel / f"birds_ssd_{split}.rec").write_bytes(
                sm.im2rec_bytes(pictures[split]))
        writers = []
    else:  # one class, as the notebooks' labeling job has
        one_class = {split: [(p, w, h, [(0, *box[1:]) for box in boxes])
                             for p, w, h, boxes in pictures[split]]
                     for split in ("train", "validation")}
        writers = [sm.PipeWriter(str(root / f"input/data/{channel}_0"),
                                 sm.manifest_pipe_bytes(one_class[channel], LABELING_JOB,
                                                        metadata=False))
                   for channel in ("train", "validation")]
    return writers


@pytest.fixture(scope="module")
def notebook_jobs(shapes_voc, tmp_path_factory):
    """name -> (exit code, log) of each notebook's job, stopped after its first step."""
    pictures = {"train": sm.voc_pictures(shapes_voc, "train"),
                "validation": sm.voc_pictures(shapes_voc, "val")}
    imagenet = _narrow_resnet50(str(tmp_path_factory.mktemp("imagenet")))
    jobs, results = {}, {}
    for name in NOTEBOOKS:
        root = tmp_path_factory.mktemp(name) / "opt" / "ml"
        writers = _job(name, root, pictures, imagenet)
        process = subprocess.Popen(["sh", TRAIN_SCRIPT], env=_environ(root), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, cwd=str(root))
        jobs[name] = (process, writers, root)

    def follow(name):
        process, _, _ = jobs[name]
        seen, deadline = "", time.time() + 600
        for line in process.stdout:
            seen += line
            if re.search(r"epoch 1/\d+ step 1/", line):
                process.send_signal(signal.SIGTERM)
            if time.time() > deadline:
                process.kill()
        results[name] = (process.wait(timeout=120), seen)

    threads = [threading.Thread(target=follow, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=800)
    yield {name: (*results[name], jobs[name][2]) for name in jobs}
    for process, _, _ in jobs.values():
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_each_notebooks_job_reaches_its_training_steps(notebook_jobs, name):
    code, log, root = notebook_jobs[name]
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert not (root / "output" / "failure").exists(), log[-3000:]
    assert re.search(r"epoch 1/\d+ step 1/", log), log[-3000:]
    assert re.search(r"SIGTERM: checkpoint saved at step \d+", log), log[-3000:]
    # use_pretrained_model=1 took the "ImageNet" file, and the log says which.
    assert re.search("Backbone initialised from ImageNet weights .*imagenet.*"
                     + re.escape(weights.IMAGENET_WEIGHTS["resnet-50"].filename), log)
    if name == "ground_truth_manifest":
        assert ("lr_scheduler_step 6 at or past epochs=5: that reduction never fires" in log)
        assert "augmented_manifest, Pipe mode" in log
    if name != "birds":  # validation streamed: validation_0 alone (the ground-truth count),
        # as the job stops before any epoch's validation; so one writer per channel suffices
        assert re.search(r"Channel validation: \d+ images \(augmented_manifest, Pipe mode\) of "
                         r"pass 0 \(\S+validation_0\)", log), log[-3000:]
        assert "validation_1" not in log
    if name == "birds":
        assert "recordio, File mode" in log
