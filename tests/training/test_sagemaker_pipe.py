"""Pipe mode as SageMaker runs it: one FIFO per pass over the training channel
(``train_0``, ``train_1``, ...), each written by its own thread, streamed into training epoch by
epoch, and one per reading of the validation channel (``validation_0``, ...), with nothing staged
on the volume; a channel without ContentType read by its data."""

import os
import re

import numpy as np
import pytest

from tests import sagemaker_fixtures as sm
from tests.data.format_writers import pack_image_record, write_record

HYPERPARAMETERS = {"num_classes": 3, "num_training_samples": 8, "mini_batch_size": 4,
                   "epochs": 3, "use_pretrained_model": 0, "width_multiplier": 0.0625,
                   "log_every_steps": 1, "seed": 5}


def _corrupt_record(image_id):
    """An im2rec record whose JPEG is cut short: the bad-data policy skips it."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "tfssd", "__init__.py"),
              "rb") as f:
        not_an_image = b"\xff\xd8\xff\xe0" + f.read(64)
    record = pack_image_record(np.array([2, 5, 0, 0.1, 0.1, 0.5, 0.5]), image_id, not_an_image)
    import io

    out = io.BytesIO()
    write_record(out, record)
    return out.getvalue()


@pytest.mark.slow
def test_pipe_mode_streams_every_epoch_and_every_validation_from_its_own_pipe_and_stages_nothing(
        shapes_voc, tmp_path, absl_lines):
    from tfssd.training import sagemaker_job

    root = tmp_path / "opt" / "ml"
    # No ContentType: the format is read from the pipe's first bytes (im2rec RecordIO).
    sm.make_job(str(root), HYPERPARAMETERS, {"train": {"TrainingInputMode": "Pipe"},
                                             "validation": {"TrainingInputMode": "Pipe"}})
    pass_bytes = (sm.im2rec_bytes(sm.voc_pictures(shapes_voc, "train")[:8])
                  + _corrupt_record(99))
    validation_bytes = (sm.im2rec_bytes(sm.voc_pictures(shapes_voc, "val")[:4])
                        + _corrupt_record(98))
    data = root / "input" / "data"
    # One pass more than the 3 epochs need: it must stay unopened.
    writers = [sm.PipeWriter(str(data / f"train_{k}"), pass_bytes) for k in range(4)]
    # Validation: as many passes as the job reads its validation data, each offered once the
    # one before has been read whole.
    validation = sm.PipePasses(data / "validation", validation_bytes)
    try:
        result = sagemaker_job.run({}, {"TFSSD_SAGEMAKER_ROOT": str(root)})
    finally:
        os.remove(data / "train_3")  # ends its writer's wait
        offered = validation.stop()
    for writer in writers:
        writer.join(timeout=30)
    assert result.global_step == 6 and result.epochs_completed == 3
    assert [w.written for w in writers] == [len(pass_bytes)] * 3 + [0]
    log = "\n".join(absl_lines)
    assert "Channel train has no ContentType; its data reads as RecordIO records with an " \
           "image header: MXNet im2rec RecordIO" in log
    for k in range(3):
        text = re.search(rf"Channel train: 9 images \(recordio, Pipe mode\) of pass {k} "
                         rf"\(\S+train_{k}\), converted in memory:\n(.*?)\nwrote:", log, re.S)
        assert text, log[-3000:]
        assert "images: 9 read, 8 written, 1 skipped" in text.group(1)
        assert f"train_{k}#99: corrupt or truncated image" in text.group(1)
    # Validation read its passes one after another, each to its end, and opened no other: the
    # ground-truth count, 3 epochs' validation, then the report's images (and the exported
    # weights evaluated again, in the export's precision or when they are not the last epoch's).
    read = len(offered) - 1
    assert 5 <= read <= 6 and offered == [len(validation_bytes)] * read + [0], offered
    for k in range(read):
        text = re.search(rf"Channel validation: 5 images \(recordio, Pipe mode\) of pass {k} "
                         rf"\(\S+validation_{k}\), converted in memory:\n(.*?)\nwrote:", log,
                         re.S)
        assert text, log[-3000:]
        assert "images: 5 read, 4 written, 1 skipped" in text.group(1)
        assert f"validation_{k}#98: corrupt or truncated image" in text.group(1)
    maps = re.findall(r"#quality_metric: host=\S+, epoch=(\d+), validation mAP", log)
    assert maps[:3] == ["0", "1", "2"] and len(maps) == 4, maps  # per epoch, then the export's
    # Nothing staged: the work folder holds the streams' descriptions and the class map.
    staged = {p.relative_to(root / "tfssd-work").as_posix(): p.stat().st_size
              for p in (root / "tfssd-work").rglob("*") if p.is_file()}
    assert set(staged) == {"stream/train/train.pipe.json", "stream/train/class_map.json",
                           "stream/validation/validation.pipe.json"}, staged
    assert sum(staged.values()) < 6144
    assert (root / "model" / "1" / "saved_model.pb").is_file()
    assert (root / "output" / "data" / "report").is_dir()


def test_a_channel_without_content_type_whose_data_is_unknown_is_refused_by_name(tmp_path):
    from tfssd.data.sagemaker_pipes import ChannelError
    from tfssd.training import sagemaker_job

    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), HYPERPARAMETERS, {"train": {}})
    os.makedirs(root / "input" / "data" / "train")
    (root / "input" / "data" / "train" / "labels.csv").write_text("file,class\na.jpg,0\n")
    with pytest.raises(ChannelError, match=r"channel 'train': inputdataconfig.json gives no "
                                           r"ContentType and \S+labels.csv starts with bytes") as e:
        sagemaker_job.run({}, {"TFSSD_SAGEMAKER_ROOT": str(root)})
    assert "Set the channel's ContentType: application/x-recordio" in str(e.value)
    assert not (root / "tfssd-work").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_pass_without_a_usable_image_fails_the_job_naming_the_channel_and_pipe(tmp_path,
                                                                                 absl_lines):
    from tfssd.training import sagemaker_job
    from tfssd.training.errors import TrainingError

    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), {**HYPERPARAMETERS, "epochs": 1}, {
        "train": {"ContentType": "application/x-recordio", "TrainingInputMode": "Pipe"}})
    pipe = root / "input" / "data" / "train_0"
    writer = sm.PipeWriter(str(pipe), b"".join(_corrupt_record(i) for i in range(3)))
    with pytest.raises(TrainingError, match=re.escape(
            f"channel 'train': pass 0 ({pipe}) holds no usable image")):
        sagemaker_job.run({}, {"TFSSD_SAGEMAKER_ROOT": str(root)})
    writer.join(timeout=10)
    assert "train_0#2: corrupt or truncated image" in "\n".join(absl_lines)  # the summary
