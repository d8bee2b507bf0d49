"""Runs several commands at once: each test of a command's usage errors spends most of its time
importing TensorFlow in one Python thread, so two cores take two such processes together."""

import concurrent.futures
import subprocess
import sys


def run_python_concurrently(*argvs: list[str], cwd: str, timeout: float = 300
                            ) -> list[subprocess.CompletedProcess]:
    """``python ARGV...`` for each argv, all started together; their results in the same order."""
    with concurrent.futures.ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda argv: subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd),
            argvs))
