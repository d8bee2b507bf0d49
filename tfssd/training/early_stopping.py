"""SageMaker's early stopping rule on validation mAP.

An epoch improves when it is the first, or when ``(mAP - best) / best`` exceeds the tolerance
(any increase, when the best so far is 0). Epochs without improvement are counted from the
start; training stops after an epoch when at least ``min_epochs`` epochs have run and the last
``patience`` epochs brought no improvement. ``best`` is the highest mAP seen.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EarlyStopping:
    min_epochs: int
    patience: int
    tolerance: float
    best: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def improves(self, score: float) -> bool:
        if self.best is None:
            return True
        if self.best <= 0:
            return score > self.best
        return (score - self.best) / self.best > self.tolerance

    def update(self, epoch: int, score: float) -> bool:
        """Records the mAP of ``epoch`` (counted from 1); returns True when training should stop."""
        if self.improves(score):
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, epoch
        return self.says_stop(epoch)

    def says_stop(self, epochs_run: int) -> bool:
        """Whether the record after ``epochs_run`` epochs stops training (a rerun asks this)."""
        return (self.best is not None and epochs_run >= self.min_epochs
                and self.epochs_without_improvement >= self.patience)
