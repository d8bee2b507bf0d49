"""A SageMaker job's end and its interruptions: checkpointconfig.json, SageMaker's host name in
metric lines, several hosts without kv_store, the final validation:mAP line of the exported
model, SIGTERM during validation and on every worker of a dist_sync cluster, then resuming."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import sagemaker_fixtures as sm
from tfssd.config import sagemaker_container
from tfssd.training import distribution


def _job(tmp_path, hosts=("algo-1",), current="algo-1"):
    root = tmp_path / "opt" / "ml"
    sm.make_job(str(root), {"num_classes": 3, "num_training_samples": 8}, {"train": {}})
    (root / "input/config/resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": list(hosts), "network_interface_name": "eth0"}))
    return root, {"TFSSD_SAGEMAKER_ROOT": str(root)}


def test_checkpoints_go_to_the_local_path_of_checkpointconfig(tmp_path):
    root, environ = _job(tmp_path)
    # No checkpointing configured: the checkpoints travel in model.tar.gz.
    assert sagemaker_container.environment_options(environ)["model_dir"] == str(
        root / "model" / "checkpoints")
    custom = tmp_path / "spot" / "checkpoints"
    (root / "input/config/checkpointconfig.json").write_text(json.dumps(
        {"LocalPath": str(custom), "S3Uri": "s3://bucket/job/checkpoints"}))
    assert sagemaker_container.environment_options(environ)["model_dir"] == str(custom)
    (root / "input/config/checkpointconfig.json").write_text(json.dumps(
        {"S3Uri": "s3://bucket/job/checkpoints"}))  # LocalPath's default
    assert sagemaker_container.environment_options(environ)["model_dir"] == str(
        root / "checkpoints")
    (root / "input/config/checkpointconfig.json").write_text('{"LocalPath": "relative"}')
    with pytest.raises(sagemaker_container.ContainerError, match="LocalPath 'relative'"):
        sagemaker_container.environment_options(environ)


def test_metric_lines_name_sagemakers_current_host(tmp_path, monkeypatch):
    _, environ = _job(tmp_path, hosts=("algo-1",), current="algo-1")
    monkeypatch.setenv("TFSSD_SAGEMAKER_ROOT", environ["TFSSD_SAGEMAKER_ROOT"])
    assert distribution.Cluster().host == "algo-1"
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")  # the training toolkit's variables win
    assert distribution.Cluster().host == "algo-2"


def test_several_hosts_without_kv_store_are_refused_naming_it(tmp_path):
    from tfssd.training import sagemaker_job

    _, environ = _job(tmp_path, hosts=("algo-1", "algo-2"), current="algo-2")
    expected = "kv_store is not set but the job runs on 2 hosts"
    with pytest.raises(distribution.DistributionError, match=expected) as refused:
        distribution.resolve_cluster(None, environ)
    assert "kv_store=dist_sync" in str(refused.value)
    # A job says so before it reads any channel (this one's 'train' folder does not exist).
    with pytest.raises(distribution.DistributionError, match=expected):
        sagemaker_job.run({}, environ)
    assert distribution.resolve_cluster("dist_sync", environ)[0].num_workers == 2


def test_sigterm_is_a_stop_request_and_interrupts_what_may_be_cut_short():
    from tfssd.training import stop_signal

    previous = signal.getsignal(signal.SIGTERM)
    saved = []
    with stop_signal.LocalStop() as stop:
        stop.after_step(1, saved.append)  # no request: the loop goes on
        started = time.time()
        with pytest.raises(stop_signal.Interrupted):
            with stop.interruptible():  # validation: a real SIGTERM ends it at once
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        assert time.time() - started < 10 and stop.requested
        with pytest.raises(stop_signal.Preempted) as stopped:
            stop.after_step(2, lambda step: saved.append(step) or f"ckpt-{step}")
    assert saved == [2] and stopped.value.checkpoint == "ckpt-2"
    assert signal.getsignal(signal.SIGTERM) is previous


# -- a SageMaker job stopped during validation, then the next job ------------------------------

MAP_LINE = re.compile(r"#quality_metric: host=(\S+), epoch=(\d+), validation mAP <score>=\((\S+)\)")


@pytest.mark.slow
def test_sigterm_during_validation_then_the_next_job_and_its_final_metric_line(
        shapes_voc, tmp_path, monkeypatch, absl_lines):
    """The epoch's checkpoint is written before validation, so a SIGTERM (a real one, sent by
    the process to itself after validation's first batch) stops the job at once with nothing
    lost; the stopped job leaves a SavedModel of its best weights in /opt/ml/model. The next
    job validates that epoch first and trains on; its last validation:mAP line is the exported
    model's (checked by evaluating the export)."""
    from tfssd import api
    from tfssd.evaluation import validation
    from tfssd.training import sagemaker_job, stop_signal

    pictures = {split: sm.voc_pictures(shapes_voc, split) for split in ("train", "val")}
    root, environ = _job(tmp_path)
    monkeypatch.setenv("TFSSD_SAGEMAKER_ROOT", str(root))  # where the metric lines' host is
    for name in ("SM_HOSTS", "SM_CURRENT_HOST"):
        monkeypatch.delenv(name, raising=False)
    sm.make_job(str(root), {"num_classes": 3, "num_training_samples": 8, "mini_batch_size": 4,
                            "epochs": 2, "use_pretrained_model": 0, "width_multiplier": 0.0625,
                            "log_every_steps": 1, "seed": 5},
                {"train": {"ContentType": "image/jpeg"},
                 "train_annotation": {"ContentType": "application/json"},
                 "validation": {"ContentType": "image/jpeg"},
                 "validation_annotation": {"ContentType": "application/json"}})
    for channel, split in (("train", "train"), ("validation", "val")):
        sm.write_image_json(pictures[split][:8], str(root / "input/data" / channel),
                            str(root / "input/data" / f"{channel}_annotation"))
    checkpoints = tmp_path / "spot-checkpoints"  # checkpointconfig.json's LocalPath
    (root / "input/config/checkpointconfig.json").write_text(json.dumps(
        {"LocalPath": str(checkpoints), "S3Uri": "s3://bucket/checkpoints"}))

    draw = validation.Validator._draw  # called once per validation, on its first batch

    def sigterm_at_validation(number):
        calls = []

        def draw_then_sigterm(self, *args):
            calls.append(1)
            if len(calls) == number:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(self, *args)

        monkeypatch.setattr(validation.Validator, "_draw", draw_then_sigterm)

    def job():
        absl_lines.clear()
        try:
            return sagemaker_job.run({}, environ)
        finally:
            job.log = "\n".join(absl_lines)

    sigterm_at_validation(1)
    with pytest.raises(stop_signal.Preempted) as stopped:
        job()
    assert "SIGTERM during the validation of epoch 1: its checkpoint (step 2)" in job.log
    assert stopped.value.step == 2 and (checkpoints / "ckpt-2.index").is_file()
    assert not MAP_LINE.search(job.log)  # the validation did not finish
    assert stopped.value.export_path == str(root / "model" / "1")
    assert (root / "model" / "1" / "saved_model.pb").is_file()  # a stopped job's model
    assert (root / "model" / "checkpoints" / "tfssd_run.json").is_file()
    assert "so that the stopped job leaves a deployable model" in job.log

    # The next job validates epoch 1 first, trains epoch 2, and is stopped in its validation:
    # it exports epoch 1's weights, the best, and says so in a last metric line.
    sigterm_at_validation(2)
    with pytest.raises(stop_signal.Preempted) as stopped:
        job()
    assert "The checkpoint of epoch 1 was written before its validation" in job.log
    lines = MAP_LINE.findall(job.log)
    assert [epoch for _, epoch, _ in lines] == ["0", "0"] and lines[0] == lines[1]
    assert {host for host, _, _ in lines} == {"algo-1"}  # resourceconfig.json's current_host
    assert stopped.value.step == 4 and stopped.value.export_path == str(root / "model" / "2")
    assert "exported the best validation mAP" in job.log

    monkeypatch.setattr(validation.Validator, "_draw", draw)
    result = job()
    assert "The checkpoint of epoch 2 was written before its validation" in job.log
    lines = MAP_LINE.findall(job.log)
    assert [epoch for _, epoch, _ in lines[:1]] == ["1"] and len(lines) == 2
    host, epoch, final = lines[-1]
    assert int(epoch) == result.best_epoch - 1
    # A new export if epoch 2 was the better, else the stopped job's export of epoch 1 stays.
    assert result.export_path == str(root / "model" / ("3" if result.best_epoch == 2 else "2"))
    # The last line is the exported model's mAP: evaluated here as a deployment sees it.
    records = sorted(str(p) for p in (root / "tfssd-work").rglob("validation*.tfrecord"))
    exported = api.evaluate(result.export_path, records, batch_size=8).voc.mean_ap
    assert float(final) == pytest.approx(exported, abs=1e-4), job.log


# -- SIGTERM on every worker of a dist_sync cluster --------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGEST = re.compile(r"Worker (\d) final weights digest (\w+)")


def _cluster(flags, sigterm_at=None, timeout=300):
    """tfssd-cluster with two dist_sync workers on 127.0.0.1; with ``sigterm_at``, SIGTERM to
    both workers (as SageMaker sends it to every host) once that line is seen."""
    command = [sys.executable, "-m", "tfssd.cli.local_cluster", "--kv_store=dist_sync",
               "--workers=2", "--", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output, pids, deadline = "", [], time.time() + timeout
    try:
        for line in process.stdout:
            output += line
            found = re.search(r"\[launcher\] worker \d at \S+: pid (\d+)", line)
            if found:
                pids.append(int(found.group(1)))
            if sigterm_at and sigterm_at in line:
                for pid in pids:
                    os.kill(pid, signal.SIGTERM)
                sigterm_at = None
            assert time.time() < deadline, output[-3000:]
        output += process.communicate(timeout=max(deadline - time.time(), 1))[0]
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output


@pytest.mark.slow
def test_sigterm_on_every_dist_sync_worker_leaves_a_checkpoint_and_the_cluster_resumes(
        shapes_tfrecords, tmp_path):
    flags = ["--num_classes=3", "--use_pretrained_model=0", "--width_multiplier=0.0625",
             f"--train={shapes_tfrecords['dir']}/train-*", f"--model_dir={tmp_path / 'run'}",
             "--log_every_steps=1", "--seed=3", "--precision=float32",
             "--num_training_samples=16", "--epochs=20", "--mini_batch_size=2"]
    # TF polls for the signal once a second and the workers stop a step later: the run must
    # outlast that by far even on an idle machine (a step takes ~0.1 s there), so 80 steps.
    code, output = _cluster(flags, sigterm_at="epoch 1/20 step 2/4")
    assert code == 128 + signal.SIGTERM, output[-3000:]
    saved = {int(s) for s in re.findall(r"SIGTERM: checkpoint saved at step (\d+)", output)}
    assert len(saved) == 1, output[-3000:]  # one step, agreed by both workers
    step = saved.pop()
    assert 2 <= step < 80 and (tmp_path / "run" / f"ckpt-{step}.index").is_file()

    code, output = _cluster(flags)
    assert code == 0, output[-3000:]
    assert f"Resumed from {tmp_path / 'run'}/ckpt-{step} at step {step}" in output
    digests = dict(DIGEST.findall(output))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert "Done: 20 epochs (80 steps)" in output
