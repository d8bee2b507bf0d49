"""Test processes: several commands at once (each test of a command's usage errors spends most
of its time importing TensorFlow in one Python thread, so two cores take two such processes
together), and an exported model run in a process of its own."""

import concurrent.futures
import os
import subprocess
import sys


def run_python_concurrently(*argvs: list[str], cwd: str, timeout: float = 300
                            ) -> list[subprocess.CompletedProcess]:
    """``python ARGV...`` for each argv, all started together; their results in the same order."""
    with concurrent.futures.ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda argv: subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd),
            argvs))


def run_model_alone(script: str, model: str, images, tmp_path) -> tuple[dict, dict]:
    """Runs ``python -c SCRIPT MODEL INPUTS.npz OUTPUTS.npz`` on ``images`` in a fresh process
    without tfssd on its path; returns the outputs it saved and the JSON of its last line."""
    import json

    import numpy as np

    np.savez(tmp_path / "inputs.npz", images=images)
    result = subprocess.run(
        [sys.executable, "-c", script, model, str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")], capture_output=True, text=True, timeout=120,
        cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(tmp_path / "outputs.npz")), json.loads(result.stdout.splitlines()[-1])
