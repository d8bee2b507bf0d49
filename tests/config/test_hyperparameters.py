"""SageMaker hyperparameters: names, defaults, validation, hyperparameters.json, precedence."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from tfssd.cli import hyperparameter_flags as hp
from tfssd.config import factory
from tfssd.config.hyperparameters import (
    HYPERPARAMETERS,
    HyperparameterError,
    parse_hyperparameters,
    schedule_notes,
)

REQUIRED = {"num_classes": "20", "num_training_samples": "16551"}


def parse(**raw):
    return parse_hyperparameters({**REQUIRED, **raw})


def errors_of(**raw):
    return parse(**raw)[1]


def test_defaults_are_sagemakers():
    values, errors = parse()
    assert errors == []
    assert values == {
        "base_network": "vgg-16", "use_pretrained_model": True, "num_classes": 20, "epochs": 30,
        "learning_rate": 0.001, "lr_scheduler_factor": 0.1, "lr_scheduler_step": (),
        "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0005, "mini_batch_size": 32,
        "image_shape": 300, "label_width": 350, "num_training_samples": 16551,
        "nms_threshold": 0.45, "overlap_threshold": 0.5, "freeze_layer_pattern": None,
        "kv_store": None, "early_stopping": False, "early_stopping_min_epochs": 10,
        "early_stopping_patience": 5, "early_stopping_tolerance": 0.0}


@pytest.mark.parametrize("name,good,bad", [
    ("base_network", ["vgg-16", "resnet-50", ""], ["vgg16", "resnet-101"]),
    ("use_pretrained_model", ["0", "1", " "], ["2", "true"]),
    ("num_classes", ["1", "80"], ["0", "-3", "2.5", "x"]),
    ("epochs", ["1", "200"], ["0", "-1", "1.5"]),
    ("learning_rate", ["1", "0.5", "1e-6"], ["0", "1.01", "-0.1", "nan", "x"]),
    ("lr_scheduler_factor", ["0.5", "0.01"], ["0", "1", "1.5"]),
    ("optimizer", ["sgd", "adam", "rmsprop", "adadelta", ""], ["SGD", "adagrad"]),
    ("momentum", ["1", "0.9", "0", "0.0"], ["1.1", "-0.1"]),
    ("weight_decay", ["0.0005", "0.999", "0", "0.0"], ["1", "-0.1"]),
    ("mini_batch_size", ["1", "64"], ["0", "-8", "8.0"]),
    ("image_shape", ["300", "512", "301"], ["299", "0", "300.5"]),
    ("label_width", ["7", "350"], ["0", "6", "-1"]),
    ("num_training_samples", ["1", "16551"], ["0", "-5"]),
    ("nms_threshold", ["1", "0.45"], ["0", "1.2"]),
    ("overlap_threshold", ["1", "0.5"], ["0", "2"]),
    ("freeze_layer_pattern", ["^(conv1_|conv2_).*", "", "false"], ["(unclosed", "*bad"]),
    ("kv_store", ["dist_sync", "dist_async", ""], ["dist", "local"]),
    ("early_stopping", ["True", "False", "true", "false", ""], ["yes", "1"]),
    ("early_stopping_min_epochs", ["1", "10"], ["0", "-2"]),
    ("early_stopping_patience", ["1", "5"], ["0"]),
    ("early_stopping_tolerance", ["0", "0.0", "0.5", "1", "1.0"], ["1.01", "-0.1"]),
])
def test_each_rule(name, good, bad):
    for value in good:
        assert errors_of(**{name: value}) == [], (name, value)
    for value in bad:
        errors = errors_of(**{name: value})
        assert len(errors) == 1 and errors[0].startswith(f"{name}={value!r}: expected"), errors


def test_messages_name_flag_value_and_allowed():
    (message,) = errors_of(learning_rate="2")
    assert message == "learning_rate='2': expected a float in (0, 1]"
    (message,) = errors_of(optimizer="adagrad")
    assert message == "optimizer='adagrad': expected one of sgd, adam, rmsprop, adadelta"


def test_required_values():
    errors = parse_hyperparameters({})[1]
    assert errors == ["num_classes: required, expected a positive integer",
                      "num_training_samples: required, expected a positive integer"]


def test_lr_scheduler_step():
    assert parse(lr_scheduler_step="10, 20")[0]["lr_scheduler_step"] == (10, 20)
    assert parse(lr_scheduler_step="10,20")[0]["lr_scheduler_step"] == (10, 20)
    for bad in ["10, x", "10.5", "20, 10", "10, 10", "0, 5", "-1"]:
        assert len(errors_of(lr_scheduler_step=bad)) == 1, bad
    assert parse(lr_scheduler_step="")[0]["lr_scheduler_step"] == ()


def test_steps_at_or_past_the_last_epoch_are_taken_with_a_note():
    # AWS's Ground Truth notebooks send epochs=5 (and epochs=1) with lr_scheduler_step="3,6".
    values, errors = parse(epochs="5", lr_scheduler_step="3,6")
    assert errors == [] and values["lr_scheduler_step"] == (3, 6)
    assert schedule_notes(values) == [
        "lr_scheduler_step 6 at or past epochs=5: that reduction never fires (as in SageMaker's "
        "algorithm)."]
    values, errors = parse(epochs="1", lr_scheduler_step="3,6")
    assert errors == [] and "3, 6 at or past epochs=1: those reductions" in schedule_notes(
        values)[0]
    assert schedule_notes(parse(epochs="30", lr_scheduler_step="10, 29")[0]) == []


def test_an_empty_string_is_unset():
    values, errors = parse(**{name: "" for name in ["base_network", "optimizer", "momentum",
                                                    "early_stopping", "lr_scheduler_step",
                                                    "kv_store", "freeze_layer_pattern"]})
    assert errors == []
    assert (values["base_network"], values["optimizer"], values["momentum"]) == (
        "vgg-16", "sgd", 0.9)
    assert (values["early_stopping"], values["lr_scheduler_step"], values["kv_store"],
            values["freeze_layer_pattern"]) == (False, (), None, None)
    assert errors_of(num_classes="") == ["num_classes: required, expected a positive integer"]


def test_several_errors_reported_together():
    errors = errors_of(epochs="0", optimizer="adagrad", label_width="3", nms_threshold="2")
    assert [e.split("=")[0] for e in errors] == ["epochs", "optimizer", "nms_threshold",
                                                 "label_width"]


def test_label_width_too_small_for_one_object():
    (message,) = errors_of(label_width="6")
    assert message.startswith("label_width='6': expected at least 7")


# -- resolve(): flags, hyperparameters.json and SageMaker's environment together ------------


@pytest.fixture
def flag_values():
    values = flags.FlagValues()
    hp.define_flags(values)
    return values


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train-00000-of-00001.tfrecord"
    path.write_bytes(b"")
    return str(path)


def resolve(flag_values, argv, environ=None):
    flag_values(["prog", *argv])
    return hp.resolve(flag_values, environ=environ or {})


def test_hyperparameters_json_with_string_values(flag_values, train_file, tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({
        "num_classes": "20", "num_training_samples": "16551", "mini_batch_size": "32",
        "early_stopping": "True", "lr_scheduler_step": "10, 20", "learning_rate": "0.004",
        "_tuning_objective_metric": "validation:mAP"}))
    values, options = resolve(flag_values, [f"--sagemaker_hyperparameters={path}",
                                            f"--train={train_file}", f"--validation={train_file}"])
    assert values["num_classes"] == 20 and values["mini_batch_size"] == 32
    assert values["early_stopping"] is True and values["lr_scheduler_step"] == (10, 20)
    assert values["learning_rate"] == 0.004


def test_command_line_wins_over_json(flag_values, train_file, tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({**REQUIRED, "epochs": "50", "mini_batch_size": "0"}))
    values, _ = resolve(flag_values, [f"--sagemaker_hyperparameters={path}", "--epochs=7",
                                      "--mini_batch_size=4", f"--train={train_file}"])
    assert values["epochs"] == 7 and values["mini_batch_size"] == 4


def test_json_errors_and_unknown_names(flag_values, train_file, tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({**REQUIRED, "epochs": "zero", "bogus": "1"}))
    with pytest.raises(HyperparameterError) as raised:
        resolve(flag_values, [f"--sagemaker_hyperparameters={path}", f"--train={train_file}"])
    assert any(e.startswith("epochs='zero'") for e in raised.value.errors)
    assert any(e.startswith("bogus (from") for e in raised.value.errors)


def test_sagemaker_container_environment(flag_values, tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "hyperparameters.json").write_text(json.dumps(REQUIRED))
    channels = {}
    for channel in ("train", "validation"):
        channels[channel] = tmp_path / channel
        channels[channel].mkdir()
        (channels[channel] / "part-0.tfrecord").write_bytes(b"")
    environ = {"SM_INPUT_CONFIG_DIR": str(config_dir), "SM_CHANNEL_TRAIN": str(channels["train"]),
               "SM_CHANNEL_VALIDATION": str(channels["validation"]),
               "SM_MODEL_DIR": str(tmp_path / "model")}
    values, options = resolve(flag_values, [], environ)
    assert values["num_classes"] == 20
    assert options["train"] == [str(channels["train"])]
    assert options["export_dir"] == str(tmp_path / "model")
    config = factory.build_config(values, options)
    assert config.data.train_files == (str(channels["train"] / "part-0.tfrecord"),)
    assert len(config.data.validation_files) == 1


def test_option_rules(flag_values, train_file):
    with pytest.raises(HyperparameterError) as raised:
        resolve(flag_values, ["--num_classes=3", "--num_training_samples=10",
                              "--width_multiplier=0.5", "--early_stopping=True",
                              "--train=/nonexistent/*.tfrecord"])
    errors = raised.value.errors
    assert any(e.startswith("width_multiplier=0.5: ImageNet weights exist for width 1") for e in
               errors)
    assert "early_stopping='True': expected --validation data to measure mAP on" in errors
    assert "train='/nonexistent/*.tfrecord': no file matches" in errors


def test_config_derived_values(flag_values, train_file):
    values, options = resolve(flag_values, ["--num_classes=3", "--num_training_samples=100",
                                            "--mini_batch_size=8", "--epochs=12",
                                            "--lr_scheduler_step=4,8", f"--train={train_file}"])
    config = factory.build_config(values, options, num_workers=2)
    assert config.train.global_batch_size == 16
    assert config.train.steps_per_epoch == 7  # ceil(100 / 16)
    assert config.train.total_steps == 84
    assert config.train.lr_boundaries == (28, 56)
    assert config.data.max_objects == 69


def _run_train(*argv):
    return subprocess.run([sys.executable, "-m", "tfssd.cli.train", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_helpfull_lists_every_hyperparameter_with_its_default():
    result = _run_train("--helpfull")  # absl exits 1 after printing help
    text = result.stdout
    assert "Trains an SSD detector" in text
    for h in HYPERPARAMETERS:
        assert f"--{h.name}:" in text, h.name
        if h.default is not None:
            assert f"(default: '{h.default}')" in text.split(f"--{h.name}:")[1].split("--")[0]


def test_bad_values_stop_the_command_before_tensorflow():
    result = _run_train("--num_classes=0", "--epochs=-1", "--optimizer=adagrad",
                        "--num_training_samples=10", "--train=/nonexistent")
    assert result.returncode == 1
    for expected in ["--num_classes='0': expected a positive integer",
                     "--epochs='-1': expected a positive integer",
                     "--optimizer='adagrad': expected one of sgd, adam, rmsprop, adadelta",
                     "--train='/nonexistent': no file matches"]:
        assert expected in result.stderr, result.stderr


def test_validation_imports_no_tensorflow():
    code = ("import sys\n"
            "from absl import app\n"
            "from tfssd.cli import hyperparameter_flags, train\n"
            "hyperparameter_flags.define_flags()\n"
            "try:\n"
            "    app.run(train.main, argv=['train', '--num_classes=0'])\n"
            "except SystemExit:\n"
            "    print('tensorflow imported:', 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert "tensorflow imported: False" in result.stdout, result.stdout + result.stderr


def test_a_narrow_network_takes_imagenet_weights_only_from_a_file_of_its_own():
    from tfssd.config.options import OPTIONS, check_options

    values = parse()[0]
    options = {o.name: o.default for o in OPTIONS} | {"train": ["t.tfrecord"],
                                                      "width_multiplier": 0.5}
    assert any("ImageNet weights exist for width 1 only" in e
               for e in check_options(values, options, check_files=False))
    options["pretrained_weights"] = "narrow_resnet50.h5"  # its shapes are checked as it loads
    assert not any("width" in e for e in check_options(values, options, check_files=False))
