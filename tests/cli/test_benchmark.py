"""tfssd-benchmark: its figures as a user sees them, and its ratios' direction."""

import re
import subprocess
import sys

import pytest

from tfssd.cli.benchmark import BENCH_MISSING, Member, _ratios

TINY = ["--width_multiplier=0.0625", "--image_shape=300", "--mini_batch_size=2", "--steps=1",
        "--warmup_steps=1", "--inference_steps=1", "--rounds=1", "--precision=float32",
        "--figures=train_step,input,end_to_end,inference"]  # no TFLite, no torchvision
FIGURE = re.compile(r"^(train step|input pipeline|end to end|inference batch \d+) +tfssd .*? "
                    r"([\d.]+) images/s +([\d.]+) ms +peak +(\d+) MiB", re.MULTILINE)


@pytest.mark.slow
def test_every_figure_is_printed_with_consistent_numbers():
    result = subprocess.run([sys.executable, "-m", "tfssd.cli.benchmark", *TINY],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = {figure: numbers for figure, *numbers in FIGURE.findall(result.stdout)}
    assert set(found) == {"train step", "input pipeline", "end to end", "inference batch 1",
                          "inference batch 8"}, result.stdout
    batch = {"inference batch 1": 1, "inference batch 8": 8}  # else --mini_batch_size=2
    for figure, (rate, ms, peak) in found.items():
        images_per_step = float(rate) * float(ms) / 1000  # the two figures must agree
        assert images_per_step == pytest.approx(batch.get(figure, 2), rel=0.05), (
            figure, result.stdout)
        assert 100 < int(peak) < 24 * 1024, (figure, peak)  # a TensorFlow process, in MiB
    assert re.search(r"^CPU: .* \(lscpu\)", result.stdout, re.MULTILINE), result.stdout
    assert "\nprecision: float32 (--precision=float32)" in result.stdout, result.stdout


@pytest.mark.slow
def test_compare_without_torch_is_one_line_naming_the_extra():
    # torch hidden from this process only (sys.modules entries of None make it unimportable).
    hidden = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = None; "
              "sys.argv = ['tfssd-benchmark', '--compare=torchvision']; "
              "from tfssd.cli import benchmark; benchmark.run()")
    result = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"tfssd-benchmark: {BENCH_MISSING}"]
    assert 'pip install -e ".[bench]"' in BENCH_MISSING
    assert result.stdout == ""


def _member(who: str, seconds: list[list[float]], latency: bool = False) -> Member:
    return Member("figure", who, {}, 1, latency, len(seconds[0]), times=seconds,
                  peak={"rss": 1.0})


def test_ratios_are_the_first_named_speed_over_the_second():
    tfssd = _member("tfssd float32", [[2.0, 2.0], [1.0, 1.0]])
    torch = _member("torchvision float32", [[4.0, 4.0], [4.0, 4.0]])
    [line] = _ratios([[tfssd, torch]])
    assert "tfssd float32 / torchvision float32" in line
    assert re.search(r"  2\.67  \(rounds: 2\.00 4\.00\)$", line), line  # mean of steps: 1.5 s
    saved = _member("tfssd SavedModel float32", [[0.010, 0.010, 0.030]], latency=True)
    tflite = _member("tfssd .tflite int8", [[0.005, 0.005, 0.100]], latency=True)
    [line] = _ratios([[saved, tflite]])
    assert "tfssd .tflite int8 / tfssd SavedModel float32" in line
    assert re.search(r"  2\.00  \(rounds: 2\.00\)$", line), line  # median calls: 10 and 5 ms
    assert re.search(r" 0\.67 images/s +1500\.0 ms  peak +1 MiB  \(mean of 4 steps\)$",
                     tfssd.line()), tfssd.line()
