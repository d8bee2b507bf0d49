"""A dist_async worker or parameter server: ``TF_CONFIG=... python -m tfssd.cluster_server``.

It serves the chief named in TF_CONFIG and exits once the chief has come and gone. (The same
happens when such a process runs ``python -m tfssd.train`` with its TF_CONFIG.)
"""

from absl import app

from tfssd import distribute
from tfssd.command import run_command


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        cluster, _ = distribute.resolve_cluster("dist_async")
    except (distribute.DistributionError, ValueError) as e:
        raise app.UsageError(f"TF_CONFIG: {e}") from None
    if not cluster.is_server:
        raise app.UsageError("TF_CONFIG must name a worker or ps task of a dist_async cluster")
    distribute.serve(cluster)


def run() -> None:
    run_command(lambda: None, main)


if __name__ == "__main__":
    run()
