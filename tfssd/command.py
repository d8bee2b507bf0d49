"""What every tfssd command does before its ``main``: quiet start-up, flags, absl's runner.

Each command module defines ``define_flags()`` and ``main(argv)``; its ``run()`` (the console
script ``tfssd-<name>``) and ``python -m tfssd.<name>`` both go through ``run_command``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from absl import app


def run_command(define_flags: Callable[[], None], main: Callable[[list[str]], None]) -> None:
    """Defines the command's flags (never at import time) and runs ``main`` under absl."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
    define_flags()
    app.run(main)
