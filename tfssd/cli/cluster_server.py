"""A dist_async worker or parameter server: ``TF_CONFIG=... tfssd-cluster-server``.

It serves the chief named in TF_CONFIG and exits once the chief has come and gone. (The same
happens when such a process runs ``tfssd-train`` with its TF_CONFIG.)
"""

from absl import app

from tfssd.cli.command_runner import run_command


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tfssd.training import distribution

    try:
        distribution.serve_from_environment()
    except distribution.ClusterConfigError as e:
        raise app.UsageError(str(e)) from None


def run() -> None:
    run_command(lambda: None, main)


if __name__ == "__main__":
    run()
