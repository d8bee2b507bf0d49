"""Input files as users name them: files, globs or directories."""

from __future__ import annotations

import glob
import os


def expand_files(patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Files, globs or directories -> sorted files; a directory means its '*record*' files."""
    found: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*record*")
        found.extend(sorted(p for p in glob.glob(pattern) if os.path.isfile(p)))
    return tuple(found)
