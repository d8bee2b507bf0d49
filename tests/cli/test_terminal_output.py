"""What tfssd-train shows: a live bar and a summary per epoch on a terminal, plain lines through
a pipe, SageMaker's metric lines where asked, and usage errors that say first what is wrong.

One tiny run per output (a pseudo-terminal of 100x30, a pipe, a pipe with --metric_lines),
the three at once."""

import concurrent.futures
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from tfssd.training.sagemaker_metrics import METRIC_REGEXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLUMNS, ROWS = 100, 30
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} ")  # I1204 12:44:33.375412 140545435442048 file.py:55]
SUMMARY = re.compile(r"^epoch 1/1 \(\d+:\d\d:\d\d\): loss (\d+\.\d{4}), lr 0\.001, "
                     r"\d+\.\d\d images/s, validation mAP (\d\.\d{4})$", re.M)
PROGRESS = re.compile(r"^epoch 1/1 step (\d)/2 loss \d+\.\d{4} \(cross_entropy \d+\.\d{4}, "
                      r"smooth_l1 \d+\.\d{4}\) lr 0\.001 \d+\.\d\d images/s ETA \d:\d\d:\d\d$",
                      re.M)
WARNING = ("warning: num_training_samples=8 but the training files hold 24 records; epochs (and "
           "lr_scheduler_step) count num_training_samples images.")
METRIC_MARKS = ("#quality_metric", "#throughput_metric", "#progress_metric")


def _environ() -> dict[str, str]:
    """This environment outside any SageMaker container, whatever the test runner's."""
    return {**{k: v for k, v in os.environ.items()
               if not k.startswith(("SM_", "TFSSD_SAGEMAKER"))}, "PYTHONUNBUFFERED": "1"}


def _train_flags(data: dict, model_dir) -> list[str]:
    """One epoch of two steps on 8 of the 24 images (so the run warns), validated once."""
    return ["-m", "tfssd.cli.train", "--num_classes=3", "--num_training_samples=8",
            "--mini_batch_size=4", "--epochs=1", "--use_pretrained_model=0",
            "--width_multiplier=0.0625", "--precision=float32", "--seed=1",
            "--log_every_steps=1", f"--train={data['dir']}/train-*",
            f"--validation={data['dir']}/validation-*",
            f"--class_map={data['dir']}/class_map.json", f"--model_dir={model_dir}"]


def _run_in_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """``python ARGV`` with a pseudo-terminal of COLUMNS x ROWS as its stdin, stdout and
    stderr: (exit code, everything it wrote there, as the terminal received it)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen([sys.executable, *argv], stdin=slave, stdout=slave, stderr=slave,
                               cwd=ROOT, env={**_environ(), "TERM": "xterm"},
                               start_new_session=True)
    os.close(slave)
    received, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal's last other end
                break
            if not chunk:
                break
            received += chunk
        else:
            process.kill()
            pytest.fail(f"still running after {timeout} s: {received[-3000:]!r}")
        return process.wait(timeout=60), received.decode("utf-8", "replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


def _run_through_pipe(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=_environ(), timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def runs(shapes_tfrecords, tmp_path_factory):
    """The same tiny training three ways, at once: {"terminal": (code, text), "pipe": result,
    "metric_lines": result}."""
    work = tmp_path_factory.mktemp("terminal_output")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        terminal = pool.submit(_run_in_terminal, _train_flags(shapes_tfrecords, work / "tty"))
        pipe = pool.submit(_run_through_pipe, _train_flags(shapes_tfrecords, work / "pipe"))
        metric_lines = pool.submit(_run_through_pipe, [
            *_train_flags(shapes_tfrecords, work / "metrics"), "--metric_lines"])
        return {"terminal": terminal.result(), "pipe": pipe.result(),
                "metric_lines": metric_lines.result()}


@pytest.mark.slow
def test_a_terminal_shows_a_live_bar_then_the_epochs_summary_and_no_metric_lines(runs):
    code, text = runs["terminal"]
    assert code == 0, text[-3000:]
    # What each redraw and each line put on the screen (the terminal ends lines with \r\n).
    pieces = [piece for piece in re.split(r"[\r\n]+", text) if piece.strip()]
    bars = [piece for piece in pieces if piece.startswith("epoch 1/1 ") and "steps" in piece]
    # The bar is redrawn in place (carriage returns, no new lines): the steps counted, then the
    # loss, rate and ETA of each report, then validation.
    assert re.search(r"\repoch 1/1 +50%\|.*\| 1/2 steps", text), text[-3000:]
    assert any(re.search(r"\| 2/2 steps, loss \d+\.\d{4}, lr 0\.001, \d+\.\d\d images/s, "
                         r"ETA \d:\d\d:\d\d$", bar) for bar in bars), bars
    assert any(bar.endswith(", validating") for bar in bars), bars
    assert all(len(piece.rstrip()) <= COLUMNS for piece in bars), bars  # the terminal's width
    screen = "\n".join(pieces)
    assert not PROGRESS.search(screen)  # the bar shows those instead
    summary = SUMMARY.search(screen)
    assert summary, screen[-3000:]
    # The AP table under it, one line per class.
    after = screen[summary.end():].lstrip("\n").splitlines()
    for line, name in zip(after, ("circle", "square", "triangle")):
        assert re.fullmatch(rf" +\d {name} +AP \d\.\d{{4}}  \(\d+ objects, \d+ detections\)",
                            line), after[:3]
    assert WARNING in screen
    assert "Done: 1 epochs (2 steps)" in screen
    assert not [piece for piece in pieces if ABSL_PREFIX.match(piece)]
    assert not any(mark in text for mark in METRIC_MARKS)


@pytest.mark.slow
def test_a_pipe_gets_one_plain_line_per_report_and_no_metric_lines(runs):
    result = runs["pipe"]
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "\r" not in log
    assert [int(step) for step in PROGRESS.findall(log)] == [1, 2]
    assert SUMMARY.search(log) and WARNING in log
    assert not [line for line in log.splitlines() if ABSL_PREFIX.match(line)]
    assert not any(mark in log for mark in METRIC_MARKS)


@pytest.mark.slow
def test_metric_lines_on_request_are_sagemakers_with_the_runs_figures(runs):
    result = runs["metric_lines"]
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    found = {name: [float(v) for v in re.findall(regex, log)]
             for name, regex in METRIC_REGEXES.items()}
    assert found["train:progress"] == [50.0, 100.0]
    for name in ("train:cross_entropy", "train:smooth_l1", "train:throughput"):
        assert len(found[name]) == 2 and all(v > 0 for v in found[name]), (name, found[name])
    # The epoch's, then the exported model's (the same weights here): the summary's mAP.
    people = float(SUMMARY.search(log).group(2))
    assert len(found["validation:mAP"]) == 2, found
    assert all(abs(v - people) < 6e-5 for v in found["validation:mAP"]), (found, people)
    assert "\r" not in log and [int(step) for step in PROGRESS.findall(log)] == [1, 2]


def _usage(*argv: str, command: str = "tfssd.cli.train", environ=None):
    return subprocess.run([sys.executable, "-m", command, *argv], capture_output=True,
                          text=True, cwd=ROOT, env=environ or _environ(), timeout=120,
                          stdin=subprocess.DEVNULL)


def _short_error(result, name: str = "tfssd-train") -> str:
    """The first line of a usage error, checked to be all there is but the pointer to --help."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) < 5 and lines[-1] == f"Run {name} --help for the flags.", result.stderr
    assert "--num_classes:" not in result.stderr and "flags:" not in result.stderr
    assert lines[0].startswith(f"{name}: error: "), lines
    return lines[0]


def test_a_usage_error_says_first_which_flag_and_value_and_is_short(tmp_path, shapes_tfrecords):
    train = f"--train={shapes_tfrecords['dir']}/train-*"
    first = _short_error(_usage("--num_classes=3", "--num_training_samples=8",
                                "--mini_batch_size=0", train))
    assert first == "tfssd-train: error: --mini_batch_size='0': expected a positive integer"
    first = _short_error(_usage("--log_every_steps=often"))
    assert first.startswith("tfssd-train: error: --log_every_steps=often: ")
    assert first.endswith("(expected an integer)")
    first = _short_error(_usage("--epoch=3"))
    assert first == ("tfssd-train: error: Unknown command line flag 'epoch'. Did you mean: "
                     "epochs ?")
    # Every command: a value main refuses, here tfssd-convert's.
    first = _short_error(_usage("--format=coco", f"--output={tmp_path}/x",
                                command="tfssd.cli.convert"), "tfssd-convert")
    assert first == "tfssd-convert: error: --format=coco needs --coco_json and --images_dir"


def test_a_usage_error_in_a_sagemaker_container_leaves_its_reason(tmp_path):
    root = tmp_path / "opt" / "ml"
    (root / "output").mkdir(parents=True)
    result = _usage("--log_every_steps=often",
                    environ={**_environ(), "TFSSD_SAGEMAKER_ROOT": str(root)})
    _short_error(result)
    reason = (root / "output" / "failure").read_text()
    assert reason.startswith("tfssd-train: --log_every_steps=often: "), reason
