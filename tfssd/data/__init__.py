"""Data: TFRecord schema, source formats and converters, augmentation, input pipelines."""
