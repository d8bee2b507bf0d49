"""What every tfssd command does around its ``main``: quiet start-up, flags, clean failures.

Each command module defines ``define_flags()`` and ``main(argv)``; its ``run()`` (the console
script ``tfssd-<name>``) and ``python -m tfssd.<name>`` both go through ``run_command``, which

* keeps TensorFlow's native start-up log off the screen ("oneDNN custom operations are on",
  "failed call to cuInit" on a machine without a GPU), unless TF_CPP_MIN_LOG_LEVEL is set;
* turns an unexpected exception into one line naming it and the file holding the full
  traceback (``--show_traceback`` prints it instead). Expected failures (bad input, bad flags)
  are the commands' own one-line messages and exit codes;
* answers a usage error (a flag absl cannot parse, an unknown flag, a value ``main`` refuses
  with ``app.UsageError``) with the error first and a pointer to ``--help``, not absl's whole
  usage text (the docstring and every flag) with the error last;
* inside a SageMaker container, leaves the message of a failure (a usage error, ``fail``, an
  unexpected error) in ``/opt/ml/output/failure``, where SageMaker shows it as the job's reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

from absl import app, flags, logging

from tfssd.config.sagemaker_container import write_failure

FLAGS = flags.FLAGS


def fail(message: str, exit_code: int = 1) -> None:
    """Ends the command on an expected failure: the message logged (and left for SageMaker)."""
    logging.error("%s", message)
    write_failure(message)
    sys.exit(exit_code)


@contextlib.contextmanager
def _native_stderr_held():
    """Holds what native code writes to file descriptor 2; replays it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow() -> None:
    """Imports TensorFlow with its native start-up log held back (unless the user asks for it).

    TensorFlow writes its first lines before its log level applies; they are held and dropped.
    Its later native log is limited to fatal errors: what fails reaches Python as an exception.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return  # the user chose what to see
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _native_stderr_held():
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA's initialisation logs here


def _report_unexpected(name: str, error: BaseException) -> str:
    path = os.path.join(tempfile.gettempdir(), f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                               f"{os.getpid()}.log")
    text = "".join(traceback.format_exception(error))
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        where = f"full traceback in {path}, or rerun with --show_traceback"
    except OSError:
        where = "rerun with --show_traceback for the full traceback"
    first = str(error).strip().splitlines()
    line = (f"{name}: unexpected error: {type(error).__name__}: {first[0] if first else ''} "
            f"({where})")
    print(line, file=sys.stderr)
    return line


def usage_error(name: str, message: str, exit_code: int = 1) -> None:
    """Ends the command on a usage error: what is wrong first (the message names the flag and
    its value), then where the flags are described; left for SageMaker too."""
    message = str(message).strip() or "invalid usage"
    write_failure(f"{name}: {message}")
    sys.stdout.flush()
    sys.stderr.write(f"{name}: error: {message}\nRun {name} --help for the flags.\n")
    sys.stderr.flush()
    sys.exit(exit_code)


def _flag_error(error: Exception) -> str:
    """absl's message of a flag it cannot parse (it names the flag and the value), with what
    the flag takes where absl does not say it: ``--epochs=x: invalid literal for int() with
    base 10: 'x' (expected an integer)``."""
    text = str(error).removeprefix("flag ")
    named = re.match(r"--(\w+)=", text)
    if not (isinstance(error, flags.IllegalFlagValueError) and named and named[1] in FLAGS):
        return text
    parser = FLAGS[named[1]].parser
    expected = parser.syntactic_help or ("true or false" if parser.flag_type() == "bool" else "")
    if expected and "should be" not in text and "expected" not in text:
        text += f" (expected {expected})"
    return text


def _help_lists_the_commands_flags(define_flags: Callable, main: Callable) -> None:
    """absl's --help shows the flags and docstring of the main module (``sys.argv[0]``); under
    a console script that is pip's wrapper, so the command's own are registered for it."""
    for module in {define_flags.__module__, main.__module__, __name__}:
        for flag in FLAGS.get_key_flags_for_module(module):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        main_module.__doc__ = sys.modules[main.__module__].__doc__


def run_command(define_flags: Callable[[], None], main: Callable[[list[str]], None],
                tensorflow: bool = True) -> None:
    """Defines the command's flags (never at import time) and runs ``main`` under absl.

    Args:
      define_flags: defines the command's flags.
      main: absl's main; raises ``app.UsageError`` for bad flags, exits non-zero for bad input.
      tensorflow: the command uses TensorFlow (its start-up log is held back first).
    """
    # tfssd-<name> as a console script, .../tfssd/<name>.py under python -m.
    name = "tfssd-" + os.path.splitext(os.path.basename(sys.argv[0]))[0].removeprefix("tfssd-")
    define_flags()
    flags.DEFINE_bool("show_traceback", False,
                      "Print the full traceback of an unexpected error instead of one line.")
    _help_lists_the_commands_flags(define_flags, main)

    def parse_flags(argv: list[str]) -> list[str]:
        try:
            return FLAGS(argv)
        except (flags.Error, ValueError) as e:  # absl's ValueError: --nobool=1
            usage_error(name, _flag_error(e))

    def guarded(argv):
        if tensorflow:
            quiet_tensorflow()
        try:
            return main(argv)
        except app.UsageError as e:
            usage_error(name, str(e), e.exitcode)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # anything no message was written for
            write_failure(f"{name}: unexpected error: {type(e).__name__}: {e}")
            if FLAGS.show_traceback:
                raise
            _report_unexpected(name, e)
            sys.exit(1)

    app.run(guarded, flags_parser=parse_flags)
