"""The commands (tfssd-*): thin users of the Python API, with their absl flags; imported by
nothing."""
