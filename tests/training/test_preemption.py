"""A SageMaker job's end and its interruptions: checkpointconfig.json, SageMaker's host name in
metric lines, several hosts without kv_store, the final validation:mAP line of the exported
model, SIGTERM during validation and on every worker of a dist_sync cluster, then resuming."""

import json
import os

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
    _, environ = _job(tmp_path, hosts=("algo-1", "algo-2"), current="algo-2")
    with pytest.raises(distribution.ClusterConfigError,
                       match="kv_store is not set but the job runs on 2 hosts") as refused:
        distribution.resolve_cluster(None, environ)
    assert "kv_store=dist_sync" in str(refused.value)
    assert distribution.resolve_cluster("dist_sync", environ)[0].num_workers == 2
