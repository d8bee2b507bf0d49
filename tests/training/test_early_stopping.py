"""SageMaker's early stopping on scripted mAP sequences."""

from tfssd.training.early_stopping import EarlyStopping


def run(scores, min_epochs=1, patience=2, tolerance=0.0):
    rule = EarlyStopping(min_epochs, patience, tolerance)
    for epoch, score in enumerate(scores, start=1):
        if rule.update(epoch, score):
            return epoch, rule
    return None, rule


def test_patience():
    assert run([0.1, 0.2, 0.2, 0.19])[0] == 4  # no gain in epochs 3 and 4
    assert run([0.1, 0.2, 0.2, 0.3, 0.3])[0] is None


def test_min_epochs_delays_the_stop():
    assert run([0.5, 0.4, 0.4, 0.4, 0.4], min_epochs=4)[0] == 4
    assert run([0.5, 0.4, 0.4, 0.4], min_epochs=5)[0] is None


def test_tolerance_is_relative_to_the_best():
    # 0.50 -> 0.54 is +8%: an improvement under tolerance 0.05, not under 0.1.
    assert run([0.5, 0.54, 0.54], tolerance=0.05)[0] is None
    assert run([0.5, 0.54, 0.55], tolerance=0.1)[0] == 3


def test_best_is_tracked():
    _, rule = run([0.1, 0.3, 0.25, 0.28], patience=5)
    assert rule.best == 0.3 and rule.best_epoch == 2 and rule.epochs_without_improvement == 2


def test_zero_best_counts_any_increase():
    assert run([0.0, 0.0, 0.01, 0.01], patience=2)[0] is None
    assert run([0.0, 0.0, 0.0], patience=2)[0] == 3
