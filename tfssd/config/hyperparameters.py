"""SageMaker Object Detection's hyperparameter table and its validation, as the algorithm does it.

Every value arrives as a string, as SageMaker hands them over ("32", "True", "10, 20"): the
command line and ``hyperparameters.json`` go through the same parsers, and every bad value is
reported in one error. No absl and no TensorFlow here: validation runs before either is needed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from tfssd.config import run_config as config_lib

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
                   "Backbone: vgg-16 or resnet-50 (tfssd's, with keras.applications' "
                   "ImageNet weights); sagemaker-vgg-16 or sagemaker-resnet-50 (SageMaker's "
                   "MXNet networks layer for layer, as tfssd-import-sagemaker makes them)."),
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
                   'Epochs at which the learning rate is reduced, e.g. "10, 20"; a step at or '
                   "past epochs never fires."),
    Hyperparameter("optimizer", "sgd", _choice(*config_lib.OPTIMIZERS),
                   "sgd, adam, rmsprop or adadelta."),
    # momentum and weight_decay take 0: SageMaker's documented tuning ranges start there.
    Hyperparameter("momentum", "0.9", _float_in(0, 1, False, False),
                   "Momentum for sgd, in [0, 1]; ignored by the other optimizers."),
    Hyperparameter("weight_decay", "0.0005", _float_in(0, 1, False, True),
                   "Coupled L2 weight decay (grad += wd * w) for sgd and rmsprop, in [0, 1); "
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
    Hyperparameter("early_stopping_tolerance", "0.0", _float_in(0, 1, False, False),
                   "Improvement counts when (mAP - best) / best exceeds this, in [0, 1]."),
)
HYPERPARAMETER_NAMES = tuple(h.name for h in HYPERPARAMETERS)


def parse_hyperparameters(raw: Mapping[str, str | None]) -> tuple[dict[str, Any], list[str]]:
    """Parses SageMaker's string values; returns the typed values and every error found.

    Args:
      raw: hyperparameter name -> string value, or None where unset. An empty string is unset
        too (SageMaker's console and AWS's examples send ``""``): the default applies.

    Returns:
      (values, errors): values holds each name whose value parsed (None when unset and
      optional); errors holds 'name=value: expected ...' for each bad or missing value,
      including the rules that tie values together.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    for h in HYPERPARAMETERS:
        text = raw.get(h.name, h.default)
        if isinstance(text, str) and not text.strip():
            text = h.default
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
    width = values.get("label_width")
    min_width = config_lib.LABEL_HEADER_WIDTH + config_lib.OBJECT_WIDTH
    if width is not None and width < min_width:
        errors.append(f"label_width={raw.get('label_width')!r}: expected at least {min_width} "
                      f"(a header of {config_lib.LABEL_HEADER_WIDTH} plus one object of "
                      f"{config_lib.OBJECT_WIDTH})")
    return values, errors


def schedule_notes(values: Mapping[str, Any]) -> list[str]:
    """What the run should say about valid but surprising values (SageMaker's algorithm takes
    them silently): lr_scheduler_step epochs at or past ``epochs``, which never fire."""
    steps, epochs = values.get("lr_scheduler_step") or (), values.get("epochs")
    late = [step for step in steps if epochs and step >= epochs]
    if not late:
        return []
    return [f"lr_scheduler_step {', '.join(map(str, late))} at or past epochs={epochs}: "
            f"{'that reduction never fires' if len(late) == 1 else 'those reductions never fire'}"
            " (as in SageMaker's algorithm)."]


def _expected(h: Hyperparameter) -> str:
    try:
        h.parse("")
    except ValueError as e:
        return f"expected {e}"
    return "expected a value"
