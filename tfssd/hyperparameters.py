"""SageMaker Object Detection hyperparameters as absl flags, validated as the algorithm does.

Every hyperparameter of SageMaker's table is a string flag: SageMaker hands all values over as
strings ("32", "True", "10, 20"), so the command line and ``hyperparameters.json`` go through one
parser, and every bad value is reported in one error before any TensorFlow work starts.
Command-line flags win over ``hyperparameters.json``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags

from tfssd import config as config_lib

SAGEMAKER_CONFIG_DIR = "/opt/ml/input/config"
SAGEMAKER_DATA_DIR = "/opt/ml/input/data"
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"
_UNSET_WORDS = ("", "none", "false")  # what SageMaker's console sends for an unset string


class HyperparameterError(ValueError):
    """One or more hyperparameters are invalid; ``errors`` lists each as 'name=value: expected'."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__(
            "Invalid hyperparameters:\n" + "\n".join(f"  --{e}" for e in self.errors))


# Parsers: take SageMaker's string, return the typed value, or raise ValueError(what is allowed).

def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("a number") from None
    if value != value:  # NaN
        raise ValueError("a number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = _integer(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError("a positive integer")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = _integer(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise ValueError(f"an integer >= {low}")
        return value
    return parse


def _float_in(low: float, high: float, low_open: bool, high_open: bool) -> Callable[[str], float]:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = _number(text)
        except ValueError:
            value = None
        if (value is None or value < low or value > high
                or (low_open and value == low) or (high_open and value == high)):
            raise ValueError(f"a float in {interval}")
        return value
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return text
    return parse


def _zero_or_one(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError("0 or 1")
    return text.strip() == "1"


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError("True or False")
    return lowered == "true"


def _optional_choice(*choices: str) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        if text.strip().lower() in _UNSET_WORDS:
            return None
        if text.strip() not in choices:
            raise ValueError("one of " + ", ".join(choices) + ", or unset")
        return text.strip()
    return parse


def _epoch_list(text: str) -> tuple[int, ...]:
    """'10, 20' or '10,20' -> (10, 20); steps must be positive and strictly increasing."""
    if text.strip().lower() in _UNSET_WORDS:
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError('comma-separated positive integer epochs such as "10, 20"')
    steps = tuple(int(p) for p in parts)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("strictly increasing epochs")
    return steps


def _regex(text: str) -> str | None:
    if text.strip().lower() in _UNSET_WORDS:
        return None
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"a valid regular expression ({e})") from None
    return text


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One row of SageMaker's hyperparameter table."""

    name: str
    default: str | None  # as SageMaker documents it; None: required, or no default
    parse: Callable[[str], Any]
    help: str
    required: bool = False


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("base_network", "vgg-16", _choice(*config_lib.BASE_NETWORKS),
                   "Backbone: vgg-16 or resnet-50."),
    Hyperparameter("use_pretrained_model", "1", _zero_or_one,
                   "1: start the backbone from ImageNet weights; 0: train from scratch."),
    Hyperparameter("num_classes", None, _positive_int,
                   "Number of object classes, background not counted (required).", required=True),
    Hyperparameter("epochs", "30", _positive_int, "Training epochs (positive integer)."),
    Hyperparameter("learning_rate", "0.001", _float_in(0, 1, True, False),
                   "Initial learning rate, in (0, 1]."),
    Hyperparameter("lr_scheduler_factor", "0.1", _float_in(0, 1, True, True),
                   "lr_new = lr_old * factor at each step epoch, in (0, 1)."),
    Hyperparameter("lr_scheduler_step", None, _epoch_list,
                   'Epochs at which the learning rate is reduced, e.g. "10, 20".'),
    Hyperparameter("optimizer", "sgd", _choice(*config_lib.OPTIMIZERS),
                   "sgd, adam, rmsprop or adadelta."),
    Hyperparameter("momentum", "0.9", _float_in(0, 1, True, False),
                   "Momentum for sgd, in (0, 1]; ignored by the other optimizers."),
    Hyperparameter("weight_decay", "0.0005", _float_in(0, 1, True, True),
                   "Coupled L2 weight decay (grad += wd * w) for sgd and rmsprop, in (0, 1); "
                   "ignored by the other optimizers."),
    Hyperparameter("mini_batch_size", "32", _positive_int,
                   "Batch size per machine; split over the GPUs of a machine; with dist_sync the "
                   "global batch is mini_batch_size * machines."),
    Hyperparameter("image_shape", "300", _int_at_least(300),
                   "Side of the square network input, an integer >= 300 (300 and 512 "
                   "recommended)."),
    Hyperparameter("label_width", "350", _positive_int,
                   "Labels are padded to this many floats: 2 header values plus 5 per object."),
    Hyperparameter("num_training_samples", None, _positive_int,
                   "Number of training images; turns epochs into steps for the schedule "
                   "(required).", required=True),
    Hyperparameter("nms_threshold", "0.45", _float_in(0, 1, True, False),
                   "Non-maximum suppression IoU threshold, in (0, 1]."),
    Hyperparameter("overlap_threshold", "0.5", _float_in(0, 1, True, False),
                   "IoU at which a detection matches a ground truth for mAP, in (0, 1]."),
    Hyperparameter("freeze_layer_pattern", None, _regex,
                   "Regex; layers whose name matches (re.match) are frozen, "
                   "e.g. '^(conv1_|conv2_).*'."),
    Hyperparameter("kv_store", None, _optional_choice(*config_lib.KV_STORES),
                   "dist_sync or dist_async weight updates across machines; unused on one "
                   "machine."),
    Hyperparameter("early_stopping", "False", _boolean,
                   "True: stop when validation mAP stops improving."),
    Hyperparameter("early_stopping_min_epochs", "10", _positive_int,
                   "Epochs before early stopping may act."),
    Hyperparameter("early_stopping_patience", "5", _positive_int,
                   "Epochs without improvement (by the tolerance) before stopping."),
    Hyperparameter("early_stopping_tolerance", "0.0", _float_in(0, 1, False, True),
                   "Improvement counts when (mAP - best) / best exceeds this, in [0, 1)."),
)
HYPERPARAMETER_NAMES = tuple(h.name for h in HYPERPARAMETERS)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines SageMaker's hyperparameters and tfssd's own flags (never at import time)."""
    for h in HYPERPARAMETERS:
        flags.DEFINE_string(h.name, h.default, h.help, flag_values=flag_values)
    flags.DEFINE_list("train", None, "Training TFRecord files, globs or directories.",
                      flag_values=flag_values)
    flags.DEFINE_list("validation", None,
                      "Validation TFRecord files, globs or directories; mAP after each epoch.",
                      flag_values=flag_values)
    flags.DEFINE_string("class_map", None,
                        "class_map.json ({\"0\": \"name\", ...}); default: the one beside the "
                        "first training file, if any.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "tfssd_model",
                        "Checkpoints and TensorBoard logs; a rerun resumes from here.",
                        flag_values=flag_values)
    flags.DEFINE_string("export_dir", None,
                        "Where the SavedModel goes (as numbered versions for TF Serving); "
                        "default: MODEL_DIR/export.", flag_values=flag_values)
    flags.DEFINE_string("pretrained_weights", None,
                        "Local keras.applications 'notop' .h5 ImageNet weights for the backbone.",
                        flag_values=flag_values)
    flags.DEFINE_float("width_multiplier", 1.0,
                       "Scales every backbone and extra-layer width (0, 1]; below 1 for quick CPU "
                       "trials only: ImageNet weights need 1.", flag_values=flag_values)
    flags.DEFINE_integer("seed", None, "Seed for data order, augmentation and initialisation.",
                         flag_values=flag_values)
    flags.DEFINE_integer("log_every_steps", 20, "Steps between progress and metric log lines.",
                         flag_values=flag_values)
    flags.DEFINE_integer("checkpoint_every_steps", 0,
                         "Also checkpoint every this many steps (0: at the end of each epoch "
                         "only). A restarted run loses at most the steps since the last one.",
                         flag_values=flag_values)
    flags.DEFINE_string("init_from", None,
                        "Start the network from an earlier tfssd run's model directory (its best "
                        "weights): SageMaker's incremental training. Same base_network, "
                        "num_classes, image_shape and width_multiplier required; ignored when "
                        "--model_dir already holds a checkpoint (the run resumes instead).",
                        flag_values=flag_values)
    flags.DEFINE_enum("input_format", "auto", list(config_lib.INPUT_FORMATS),
                      "TFRecord schema: tfssd's, odapi (TF Object Detection API: image/object/"
                      "bbox/*, class labels from 1), or auto (detected).", flag_values=flag_values)
    flags.DEFINE_bool("skip_corrupt_records", False,
                      "Skip records whose image fails to decode (or whose label is invalid) "
                      "instead of stopping with the record named.", flag_values=flag_values)
    flags.DEFINE_enum("ap_method", "11point", list(config_lib.AP_METHODS),
                      "VOC AP interpolation: 11point (VOC2007, the published SSD figures) or "
                      "allpoint (VOC2010+).", flag_values=flag_values)
    flags.DEFINE_string("sagemaker_hyperparameters", None,
                        "A SageMaker hyperparameters.json (all values strings); read "
                        "automatically inside a SageMaker container. Command-line flags win.",
                        flag_values=flag_values)


def _own_flag_names() -> tuple[str, ...]:
    probe = flags.FlagValues()
    define_flags(probe)
    return tuple(n for n in probe if n not in HYPERPARAMETER_NAMES)


def parse_hyperparameters(raw: Mapping[str, str | None]) -> tuple[dict[str, Any], list[str]]:
    """Parses SageMaker's string values; returns the typed values and every error found.

    Args:
      raw: hyperparameter name -> string value, or None where unset.

    Returns:
      (values, errors): values holds each name whose value parsed (None when unset and
      optional); errors holds 'name=value: expected ...' for each bad or missing value,
      including the rules that tie values together.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    for h in HYPERPARAMETERS:
        text = raw.get(h.name, h.default)
        if text is None:
            if h.required:
                errors.append(f"{h.name}: required, {_expected(h)}")
                values[h.name] = None
            else:
                values[h.name] = h.parse("")  # optional parsers map "" to their unset value
            continue
        try:
            values[h.name] = h.parse(str(text))
        except ValueError as e:
            errors.append(f"{h.name}={text!r}: expected {e}")
    steps, epochs = values.get("lr_scheduler_step"), values.get("epochs")
    if steps and epochs and steps[-1] >= epochs:
        errors.append(f"lr_scheduler_step={raw.get('lr_scheduler_step')!r}: expected epochs "
                      f"below epochs={epochs}")
    width = values.get("label_width")
    min_width = config_lib.LABEL_HEADER_WIDTH + config_lib.OBJECT_WIDTH
    if width is not None and width < min_width:
        errors.append(f"label_width={raw.get('label_width')!r}: expected at least {min_width} "
                      f"(a header of {config_lib.LABEL_HEADER_WIDTH} plus one object of "
                      f"{config_lib.OBJECT_WIDTH})")
    return values, errors


def _expected(h: Hyperparameter) -> str:
    try:
        h.parse("")
    except ValueError as e:
        return f"expected {e}"
    return "expected a value"


def read_sagemaker_hyperparameters(path: str) -> dict[str, str]:
    """Reads a SageMaker hyperparameters.json: an object whose values are all strings."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise HyperparameterError(
            [f"sagemaker_hyperparameters={path!r}: cannot read: {e}"]) from None
    if not isinstance(data, dict):
        raise HyperparameterError(
            [f"sagemaker_hyperparameters={path!r}: expected a JSON object of name: value"])
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def expand_files(patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Files, globs or directories -> sorted files; a directory means its '*record*' files."""
    found: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*record*")
        found.extend(sorted(p for p in glob.glob(pattern) if os.path.isfile(p)))
    return tuple(found)


def _sagemaker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Paths SageMaker provides, as values for tfssd's flags (hyperparameters.json included)."""
    found: dict[str, str] = {}
    config_dir = environ.get("SM_INPUT_CONFIG_DIR", SAGEMAKER_CONFIG_DIR)
    if os.path.isfile(os.path.join(config_dir, "hyperparameters.json")):
        found["sagemaker_hyperparameters"] = os.path.join(config_dir, "hyperparameters.json")
    for channel in ("train", "validation"):
        path = environ.get(f"SM_CHANNEL_{channel.upper()}",
                           os.path.join(SAGEMAKER_DATA_DIR, channel))
        if os.path.isdir(path):
            found[channel] = path
    if os.path.isdir(environ.get("SM_CHANNEL_MODEL", "")):  # incremental training's model
        found["init_from"] = environ["SM_CHANNEL_MODEL"]
    if "SM_MODEL_DIR" in environ:
        found["export_dir"] = environ["SM_MODEL_DIR"]
        found["model_dir"] = (SAGEMAKER_CHECKPOINT_DIR if os.path.isdir(SAGEMAKER_CHECKPOINT_DIR)
                              else os.path.join(environ["SM_MODEL_DIR"], "checkpoints"))
    return found


def resolve(flag_values: flags.FlagValues = flags.FLAGS,
            environ: Mapping[str, str] = os.environ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merges command line, hyperparameters.json and SageMaker's environment, then validates.

    Precedence: flags given on the command line, then hyperparameters.json, then SageMaker's
    environment (channels, model directory), then defaults.

    Returns:
      (hyperparameters, options): SageMaker's hyperparameters typed, and tfssd's own flags.

    Raises:
      HyperparameterError: listing every invalid value.
    """
    own_names = _own_flag_names()
    raw = {name: flag_values[name].value for name in HYPERPARAMETER_NAMES}
    options = {name: flag_values[name].value for name in own_names}
    present = {name for name in (*HYPERPARAMETER_NAMES, *own_names) if flag_values[name].present}
    errors: list[str] = []

    sagemaker = _sagemaker_environment(environ)
    for name, value in sagemaker.items():
        if name not in present and name != "sagemaker_hyperparameters":
            options[name] = [value] if name in ("train", "validation") else value

    json_path = options["sagemaker_hyperparameters"] or sagemaker.get("sagemaker_hyperparameters")
    if json_path:
        for name, text in read_sagemaker_hyperparameters(json_path).items():
            if name in present or name.startswith(("_", "sagemaker_")):
                continue  # the command line wins; SageMaker adds its own '_tuning...' keys
            if name in HYPERPARAMETER_NAMES:
                raw[name] = text
            elif name in own_names:
                try:
                    options[name] = flag_values[name].parser.parse(text)
                except (ValueError, flags.Error) as e:
                    errors.append(f"{name}={text!r}: {e}")
            else:
                errors.append(f"{name} (from {json_path}): not a hyperparameter; known: "
                              + ", ".join(HYPERPARAMETER_NAMES))

    values, value_errors = parse_hyperparameters(raw)
    errors.extend(value_errors)
    errors.extend(_check_options(values, options))
    if errors:
        raise HyperparameterError(errors)
    return values, options


def _check_options(values: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    errors = []
    width = options["width_multiplier"]
    if not 0 < width <= 1:
        errors.append(f"width_multiplier={width}: expected a float in (0, 1]")
    elif width != 1 and values.get("use_pretrained_model"):
        errors.append(f"width_multiplier={width}: ImageNet weights exist for width 1 only; "
                      "use --use_pretrained_model=0 with a narrower network")
    if not options["train"]:
        errors.append("train: required, expected TFRecord files, globs or a directory")
    else:
        errors.extend(f"train={p!r}: no file matches" for p in options["train"]
                      if not expand_files([p]))
    for p in options["validation"] or ():
        if not expand_files([p]):
            errors.append(f"validation={p!r}: no file matches")
    if values.get("early_stopping") and not options["validation"]:
        errors.append("early_stopping='True': expected --validation data to measure mAP on")
    if options["log_every_steps"] <= 0:
        errors.append(f"log_every_steps={options['log_every_steps']}: expected a positive integer")
    if options["checkpoint_every_steps"] < 0:
        errors.append(f"checkpoint_every_steps={options['checkpoint_every_steps']}: expected 0 "
                      "or a positive integer")
    if options["init_from"] and not os.path.isdir(options["init_from"]):
        errors.append(f"init_from={options['init_from']!r}: no such directory")
    return errors


def build_config(values: Mapping[str, Any], options: Mapping[str, Any],
                 num_workers: int = 1) -> config_lib.Config:
    """Typed hyperparameters and tfssd options -> the frozen Config of a run."""
    train_files = expand_files(options["train"])
    class_map = options["class_map"]
    if class_map is None and train_files:
        beside = os.path.join(os.path.dirname(train_files[0]), "class_map.json")
        class_map = beside if os.path.isfile(beside) else None
    return config_lib.Config(
        model=config_lib.ModelConfig(
            num_classes=values["num_classes"],
            base_network=values["base_network"],
            image_size=values["image_shape"],
            width_multiplier=options["width_multiplier"],
            use_pretrained_model=values["use_pretrained_model"],
            pretrained_weights=options["pretrained_weights"],
            freeze_layer_pattern=values["freeze_layer_pattern"],
            nms_threshold=values["nms_threshold"]),
        data=config_lib.DataConfig(
            train_files=train_files,
            validation_files=expand_files(options["validation"] or ()),
            image_size=values["image_shape"],
            label_width=values["label_width"],
            input_format=options["input_format"],
            skip_corrupt_records=options["skip_corrupt_records"],
            class_map_file=class_map),
        train=config_lib.TrainConfig(
            num_training_samples=values["num_training_samples"],
            epochs=values["epochs"],
            learning_rate=values["learning_rate"],
            lr_scheduler_factor=values["lr_scheduler_factor"],
            lr_scheduler_step=values["lr_scheduler_step"],
            optimizer=values["optimizer"],
            momentum=values["momentum"],
            weight_decay=values["weight_decay"],
            mini_batch_size=values["mini_batch_size"],
            num_workers=num_workers,
            kv_store=values["kv_store"],
            model_dir=options["model_dir"],
            export_dir=options["export_dir"],
            init_from=options["init_from"],
            seed=options["seed"],
            log_every_steps=options["log_every_steps"],
            checkpoint_every_steps=options["checkpoint_every_steps"]),
        eval=config_lib.EvalConfig(
            overlap_threshold=values["overlap_threshold"],
            ap_method=options["ap_method"]),
        early_stopping=config_lib.EarlyStoppingConfig(
            enabled=values["early_stopping"],
            min_epochs=values["early_stopping_min_epochs"],
            patience=values["early_stopping_patience"],
            tolerance=values["early_stopping_tolerance"]))
