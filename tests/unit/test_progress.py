"""`arc watch`'s progress: the spec's total epochs, steps within an epoch, the time left."""

from __future__ import annotations

from clients.display import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_is_not_full_after_the_first_of_ten_epochs() -> None:
    clock = Clock()
    progress = Progress(10, clock=clock)
    progress.seen("train_step_loss", 1, 1)
    assert progress.fraction == 0.0 and progress.eta() == ""
    clock.now += 30
    progress.seen("train_loss", 20, 1)  # 20 steps make an epoch
    assert progress.fraction == 0.1
    assert progress.eta() == "ETA 4:30"  # 30 s for a tenth: 270 s left
    progress.seen("train_step_loss", 30, 2)  # half of the second epoch
    assert progress.fraction == 0.15


def test_within_an_epoch_never_reads_as_done() -> None:
    progress = Progress(2)
    progress.seen("train_loss", 10, 1)
    progress.seen("train_step_loss", 500, 2)  # more steps than an epoch had
    assert progress.fraction < 1.0
    progress.seen("train_loss", 20, 2)
    assert progress.fraction == 1.0 and progress.eta() == ""
