"""A training job as SageMaker runs one: the /opt/ml tree under a temporary root, hyperparameters
as strings, channels in the algorithm's formats (RecordIO in Pipe mode through a FIFO, images
with JSON in File mode, an augmented manifest in Pipe mode), the image's `train` and `serve`
scripts as subprocesses, a failure's reason, SIGTERM and the next job resuming."""

import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from tests import sagemaker_fixtures as sm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(ROOT, "docker", "train")
SERVE_SCRIPT = os.path.join(ROOT, "docker", "serve")
HYPERPARAMETERS = {"num_classes": 3, "num_training_samples": 24, "mini_batch_size": 4,
                   "epochs": 1, "use_pretrained_model": 0, "width_multiplier": 0.0625,
                   "log_every_steps": 1, "seed": 5}
RECORDIO = {"ContentType": "application/x-recordio"}
MANIFEST = {"ContentType": "application/x-recordio", "TrainingInputMode": "Pipe",
            "RecordWrapperType": "RecordIO"}
IMAGES = {"ContentType": "image/jpeg"}
JSON = {"ContentType": "application/json"}


def _environ(root):
    """The container's environment: no SM_* variables (only the toolkit sets them)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    return {**environ, "TFSSD_SAGEMAKER_ROOT": str(root),
            "PATH": os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")}


def _train(root, timeout=600):
    return subprocess.run(["sh", TRAIN_SCRIPT], env=_environ(root), capture_output=True,
                          text=True, timeout=timeout, cwd=str(root))


@pytest.fixture(scope="module")
def pictures(shapes_voc):
    return {"train": sm.voc_pictures(shapes_voc, "train"),
            "validation": sm.voc_pictures(shapes_voc, "val")}


@pytest.fixture(scope="module")
def first_job(pictures, tmp_path_factory):
    """RecordIO in Pipe mode to train on, images with JSON in File mode to validate on."""
    root = tmp_path_factory.mktemp("job") / "opt" / "ml"
    sm.make_job(str(root), HYPERPARAMETERS, {
        "train": {**RECORDIO, "TrainingInputMode": "Pipe"}, "validation": IMAGES,
        "validation_annotation": JSON})
    sm.write_image_json(pictures["validation"], str(root / "input/data/validation"),
                        str(root / "input/data/validation_annotation"))
    writer = sm.PipeWriter(str(root / "input/data/train_0"), sm.im2rec_bytes(pictures["train"]))
    job = _train(root)
    writer.join(timeout=10)
    return root, job


@pytest.mark.slow
def test_a_job_from_the_container_files_alone_trains_and_its_model_serves(first_job, pictures):
    root, job = first_job
    assert job.returncode == 0, job.stderr[-3000:]
    log = job.stderr
    assert "Channel train: 24 images (recordio, Pipe mode)" in log
    assert "Channel validation: 8 images (image_json, File mode)" in log
    assert "images: 24 read, 24 written, 0 skipped" in log  # the conversion summary
    assert re.search(r"#quality_metric: host=\S+, epoch=0, validation mAP <score>=\(", log)
    # The model SageMaker packs: the SavedModel versions, and the weights --init_from reads.
    assert (root / "model" / "1" / "saved_model.pb").is_file()
    run_file = json.loads((root / "model" / "checkpoints" / "tfssd_run.json").read_text())
    assert run_file["class_names"] == sm.CLASS_NAMES  # from the validation channel's JSON
    assert not (root / "output" / "failure").exists()
    assert (root / "output" / "data" / "report" / "pr_curves.png").is_file()  # output.tar.gz

    # `docker run IMAGE serve` on that model: SageMaker's /ping and /invocations.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["sh", SERVE_SCRIPT, "--host=127.0.0.1", f"--port={port}"],
                              env=_environ(root), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", "/ping")
                ping = connection.getresponse()
                ping.read()
                if ping.status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        path = pictures["validation"][0][0]
        with open(path, "rb") as f:
            connection.request("POST", "/invocations", f.read(), {"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        assert response.status == 200
        predictions = json.loads(response.read())["prediction"]
        assert predictions and all(len(p) == 6 and 0 <= p[0] < 3 for p in predictions)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_the_next_job_resumes_from_it(first_job, pictures,
                                                                         tmp_path):
    """Managed spot training: images with JSON to train on (File mode), an augmented manifest to
    validate on (Pipe mode), the first job's model.tar.gz in the model channel."""
    first_root, _ = first_job
    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), {**HYPERPARAMETERS, "epochs": 2}, {
        "train": IMAGES, "train_annotation": JSON, "validation": MANIFEST,
        "model": {"ContentType": "application/x-sagemaker-model"}}, checkpoints=True)
    sm.write_image_json(pictures["train"], str(root / "input/data/train"),
                        str(root / "input/data/train_annotation"))
    os.makedirs(root / "input/data/model")
    with tarfile.open(root / "input/data/model/model.tar.gz", "w:gz") as tar:
        tar.add(first_root / "model", arcname=".")
    manifest = sm.manifest_pipe_bytes(pictures["validation"])

    # Each reading of the validation data reads the next pass: offered until the job ends.
    validation = sm.PipePasses(root / "input/data/validation", manifest)
    job = subprocess.Popen(["sh", TRAIN_SCRIPT], env=_environ(root), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=str(root))
    seen = ""
    deadline = time.time() + 600
    for line in job.stdout:
        seen += line
        if "epoch 1/2 step 3/6" in line:
            job.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline
    seen += job.communicate(timeout=120)[0]
    offered = validation.stop()
    assert job.returncode == 128 + signal.SIGTERM, seen[-3000:]
    assert offered == [len(manifest), 0]  # the ground-truth count; stopped before validating
    assert "Initialised the network from" in seen  # the model channel
    stopped = int(re.search(r"SIGTERM: checkpoint saved at step (\d+)", seen).group(1))
    assert 3 <= stopped < 6  # the step reached, mid-epoch (steps in flight may finish)
    assert (root / "checkpoints" / f"ckpt-{stopped}.index").is_file()
    assert not (root / "output" / "failure").exists()

    validation = sm.PipePasses(root / "input/data/validation", manifest)  # a new job: from _0
    resumed = _train(root)
    offered = validation.stop()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The count, 2 epochs, the report (and the export evaluated again): each pass read whole.
    assert len(offered) >= 5 and offered == [len(manifest)] * (len(offered) - 1) + [0], offered
    assert f"at step {stopped} (epoch 1, step {stopped + 1} of it)" in resumed.stderr
    assert "Channel validation: 8 images (augmented_manifest, Pipe mode)" in resumed.stderr
    steps = [int(s) for s in re.findall(r"epoch \d/2 step (\d+)/6", resumed.stderr)]
    assert steps[0] == stopped % 6 + 1 and "Done: 2 epochs (12 steps)" in resumed.stderr
    assert (root / "model" / "1" / "saved_model.pb").is_file()
    assert (root / "model" / "checkpoints" / "best").is_dir()  # copied from /opt/ml/checkpoints


@pytest.mark.slow
def test_a_failed_job_leaves_its_reason_for_sagemaker(tmp_path):
    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), {**HYPERPARAMETERS, "mini_batch_size": "many"}, {"train": RECORDIO})
    job = _train(root, timeout=120)
    assert job.returncode != 0
    reason = (root / "output" / "failure").read_text()
    assert "mini_batch_size='many'" in reason and reason.count("\n") == 1, reason
    assert "mini_batch_size='many'" in job.stderr  # what the user sees at a terminal too


@pytest.mark.parametrize("channels, expected", [
    ({"train": {"ContentType": "text/csv"}},
     "channel 'train' (inputdataconfig.json): ContentType 'text/csv'"),
    ({"train": IMAGES}, "ContentType image/jpeg needs the channel 'train_annotation'"),
    ({"validation": RECORDIO}, "has no 'train' channel"),
])
def test_channels_tfssd_cannot_use_are_refused_before_any_work(channels, expected, tmp_path):
    from tfssd.data.sagemaker_pipes import ChannelError
    from tfssd.training import sagemaker_job

    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), HYPERPARAMETERS, channels)
    with pytest.raises(ChannelError, match=re.escape(expected)):
        sagemaker_job.run({}, {"TFSSD_SAGEMAKER_ROOT": str(root)})


def test_recordio_that_is_really_a_manifest_is_named_as_such(pictures, tmp_path):
    from tfssd.data.sagemaker_pipes import ChannelError
    from tfssd.training import sagemaker_job

    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), HYPERPARAMETERS, {"train": RECORDIO})
    os.makedirs(root / "input/data/train")
    (root / "input/data/train/part-0.rec").write_bytes(
        sm.manifest_pipe_bytes(pictures["train"][:2]))
    with pytest.raises(ChannelError, match="for an augmented manifest set RecordWrapperType"):
        sagemaker_job.run({}, {"TFSSD_SAGEMAKER_ROOT": str(root)})


def _recordio(*parts: tuple[int, bytes]) -> bytes:
    """dmlc RecordIO framing written here by hand, from its specification (not the package's
    writer): per part, uint32 magic 0xced7230a, uint32 (continuation flag << 29 | length), the
    data, zeros to a multiple of 4 bytes."""
    out = b""
    for flag, data in parts:
        out += struct.pack("<II", 0xCED7230A, flag << 29 | len(data)) + data
        out += b"\0" * (-len(data) % 4)
    return out


def test_the_images_of_a_piped_manifest_decode(pictures):
    """The package's Pipe-mode reader (RecordIO records -> augmented-manifest items) on a stream
    framed by hand: an image holding the RecordIO magic at an aligned offset (so it travels in
    two parts, the magic dropped at the split, as dmlc's writer splits it), its label JSON and
    class-map metadata, and a second image in one part with its label. The items must carry the
    exact image bytes and the boxes written into the labels."""
    from tfssd.data import mxnet_formats, sagemaker_channels
    from tfssd.ops.image_ops import decode_image

    path, width, height, _ = pictures["train"][0]
    original = open(path, "rb").read()
    assert original[:2] == b"\xff\xd8"
    # A JPEG comment segment (FF FE, big-endian length counting itself) right after the start
    # of image; its payload starts at byte 6, so the magic below sits at aligned byte 8.
    payload = b"ab" + struct.pack("<I", 0xCED7230A) + b"tfssd"
    first = original[:2] + b"\xff\xfe" + struct.pack(">H", 2 + len(payload)) + payload + \
        original[2:]
    assert first[8:12] == struct.pack("<I", 0xCED7230A)
    second = open(pictures["train"][1][0], "rb").read()
    label = {"image_size": [{"width": width, "height": height, "depth": 3}],
             "annotations": [{"class_id": 2, "left": 10, "top": 20, "width": 30, "height": 40},
                             {"class_id": 0, "left": 1.5, "top": 2.5, "width": 3, "height": 4}]}
    metadata = {"class-map": {"0": "circle", "1": "square", "2": "triangle"},
                "type": "groundtruth/object_detection"}
    stream = _recordio((1, first[:8]), (3, first[12:]),
                       (0, json.dumps(label).encode()), (0, json.dumps(metadata).encode()),
                       (0, second), (0, b'{"annotations": []}'))

    records = list(mxnet_formats.read_record_stream(io.BytesIO(stream), "piped"))
    assert records[0] == first and records[1:] == [json.dumps(label).encode(),
                                                   json.dumps(metadata).encode(), second,
                                                   b'{"annotations": []}']
    items, names = sagemaker_channels.manifest_records(records, "train")
    assert names == ["circle", "square", "triangle"]
    assert [item.data for item in items] == [first, second]
    assert [item.error for item in items] == [None, None]
    assert items[0].annotated_size == (width, height) and items[1].objects == []
    assert [(o.label, o.xmin, o.ymin, o.xmax, o.ymax) for o in items[0].objects] == [
        (2, 10.0, 20.0, 40.0, 60.0), (0, 1.5, 2.5, 4.5, 6.5)]
    # The rejoined image decodes to the original's pixels (the comment changes none).
    np.testing.assert_array_equal(decode_image(items[0].data).numpy(),
                                  decode_image(original).numpy())


FIXTURES = os.path.join(ROOT, "tests", "fixtures", "sagemaker")


@pytest.mark.slow
@pytest.mark.parametrize("network, fixture", [("vgg-16", "vgg16_narrow"),
                                              ("resnet-50", "resnet50_narrow")])
def test_a_model_of_sagemakers_algorithm_in_the_model_channel_trains_on(
        pictures, tmp_path, absl_lines, network, fixture):
    """Incremental training across frameworks, as AWS's incremental training notebook sends it:
    SageMaker's MXNet model.tar.gz (a narrow network made by MXNet, tests/fixtures/sagemaker) in
    the model channel, the job's base_network the name it was trained under, imported and then
    trained from (in this process). The ResNet-50 fixture was made at image_shape 128; the job
    trains it at 300, as the algorithm allows."""
    from tfssd.data.sagemaker_pipes import ChannelError
    from tfssd.training import sagemaker_job

    root = tmp_path / "opt" / "ml"
    hyperparameters = {**HYPERPARAMETERS, "num_training_samples": 8, "image_shape": 300,
                       "base_network": network}
    sm.make_job(str(root), hyperparameters, {
        "train": IMAGES, "train_annotation": JSON,
        "model": {"ContentType": "application/x-sagemaker-model"}})
    sm.write_image_json(pictures["train"][:8], str(root / "input/data/train"),
                        str(root / "input/data/train_annotation"))
    os.makedirs(root / "input/data/model")
    with tarfile.open(root / "input/data/model/model.tar.gz", "w:gz") as tar:
        for name in ("model_algo_1-symbol.json", "model_algo_1-0000.params", "hyperparams.json"):
            tar.add(os.path.join(FIXTURES, fixture, name), arcname=name)
    environ = {"TFSSD_SAGEMAKER_ROOT": str(root)}

    other = "resnet-50" if network == "vgg-16" else "vgg-16"
    with pytest.raises(ChannelError, match=f"holds a {network} model of SageMaker's algorithm, "
                                           f"but the job has base_network={other}; set "
                                           f"base_network={network}"):
        sagemaker_job.run({"base_network": other}, environ)
    result = sagemaker_job.run({}, environ)
    assert result.global_step == 2 and result.export_path == str(root / "model" / "1")
    log = "\n".join(absl_lines)
    assert (f"SageMaker's {network} model imported" in log
            and f"as sagemaker-{network} (SageMaker's MXNet network" in log)
    assert "Initialised the network from" in log
    run_file = json.loads((root / "model" / "checkpoints" / "tfssd_run.json").read_text())
    assert (run_file["base_network"], run_file["image_size"]) == (f"sagemaker-{network}", 300)
