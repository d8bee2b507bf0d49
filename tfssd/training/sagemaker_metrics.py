"""Log lines in the format from which SageMaker's metric definitions read their values.

SageMaker's Object Detection algorithm defines its metrics (train:progress, train:cross_entropy,
train:smooth_l1, train:throughput, validation:mAP) by the regular expressions in METRIC_REGEXES;
each function here writes the line one of them reads. reporting.py decides where they go: into
the log of a SageMaker job, or where tfssd-train's --metric_lines asks for them.
"""

METRIC_REGEXES = {
    "train:progress": r"#progress_metric: host=\S+, completed (\S+) %",
    "train:cross_entropy":
        r"#quality_metric: host=\S+, epoch=\S+, batch=\S+ train cross_entropy <loss>=(\S+)",
    "train:smooth_l1":
        r"#quality_metric: host=\S+, epoch=\S+, batch=\S+ train smooth_l1 <loss>=(\S+)",
    "train:throughput": r"#throughput_metric: host=\S+, train throughput=(\S+) records/second",
    "validation:mAP": r"#quality_metric: host=\S+, epoch=\S+, validation mAP <score>=\((\S+)\)",
}


def progress(host: str, percent: float) -> str:
    return f"#progress_metric: host={host}, completed {percent:.1f} %"


def train_loss(host: str, epoch: int, batch: int, name: str, value: float) -> str:
    """``name`` is cross_entropy or smooth_l1."""
    return (f"#quality_metric: host={host}, epoch={epoch}, batch={batch} "
            f"train {name} <loss>={value:.6f}")


def throughput(host: str, records_per_second: float) -> str:
    return (f"#throughput_metric: host={host}, "
            f"train throughput={records_per_second:.3f} records/second")


def validation_map(host: str, epoch: int, mean_ap: float) -> str:
    return f"#quality_metric: host={host}, epoch={epoch}, validation mAP <score>=({mean_ap:.6f})"
