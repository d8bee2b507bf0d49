"""tfssd-inspect --coverage: anchor coverage at the input sizes asked for, as a user runs it."""

import re
import subprocess
import sys


def run(*argv):
    return subprocess.run([sys.executable, "-m", "tfssd.cli.inspect_data", *argv],
                          capture_output=True, text=True, timeout=300)


def test_coverage_at_two_input_sizes(shapes_tfrecords):
    result = run(f"--input={shapes_tfrecords['dir']}/validation-*", "--coverage",
                 "--base_network=vgg-16", "--image_shape=300", "--compare_shapes=512")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("anchor coverage of"))
    assert "vgg-16: share of boxes whose best anchor IoU <= 0.5" in lines[title]
    assert lines[title + 1].split()[:4] == ["image_shape", "anchors", "median", "IoU"]
    rows = [line.split() for line in lines[title + 2:]]
    assert [row[:2] for row in rows] == [["300", "8732"], ["512", "24564"]]
    assert all(re.fullmatch(r"\d+\.\d%", row[3]) for row in rows)


def test_bad_compare_shapes_are_named_without_a_traceback(shapes_tfrecords):
    result = run(f"--input={shapes_tfrecords['dir']}/validation-*", "--coverage",
                 "--compare_shapes=512,big")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--compare_shapes: 'big' is not an input side of at least 32" in result.stderr
