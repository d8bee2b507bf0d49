"""Freezing layers whose name matches a regular expression (SageMaker's freeze_layer_pattern)."""

from __future__ import annotations

import re

import keras


class FreezePatternError(ValueError):
    """freeze_layer_pattern matches no layer."""


def freeze_layers(model: keras.Model, pattern: str) -> list[str]:
    """Makes every layer whose name matches ``pattern`` (``re.match``) non-trainable.

    Frozen layers get no gradient updates; a frozen BatchNormalization also runs in inference
    mode (Keras 3 semantics).

    Returns:
      The names of the frozen layers that hold weights.

    Raises:
      FreezePatternError: the pattern matches no layer; the message lists some real names.
    """
    regex = re.compile(pattern)
    matched = [layer for layer in model.layers if regex.match(layer.name)]
    if not matched:
        names = [layer.name for layer in model.layers if layer.weights]
        sample = ", ".join(names[:6] + ["..."] + names[-3:]) if len(names) > 9 else ", ".join(names)
        raise FreezePatternError(
            f"freeze_layer_pattern {pattern!r} matches no layer of {model.name}; layer names "
            f"include: {sample}. Use `tfssd-network` to list them all.")
    for layer in matched:
        layer.trainable = False
    return [layer.name for layer in matched if layer.weights]
