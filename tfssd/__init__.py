"""tfssd: SSD object detection on TensorFlow 2 / Keras 3, driven by SageMaker's hyperparameters."""

__version__ = "0.1.0"
