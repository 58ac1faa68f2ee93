"""Packed metric batches: what the trainer writes is what the executor reads back."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from arc_common import packed
from arc_common.models import MetricResult, PackedMetrics
from services.executor.protocol import load_message
from services.executor.trainer.__main__ import FLUSH_ITEMS, Channel


def test_the_packer_keeps_every_field_and_starts_over_after_take() -> None:
    packer = packed.Packer()
    assert packer.take() is None
    when = datetime(2026, 11, 29, 12, 30, 1, 999999, tzinfo=UTC)
    stamp = int(when.timestamp()) * 1_000_000_000 + 999_999_123
    packer.add("val_auc", 0.625, step=40, epoch=2, split="val", time_ns=stamp)
    packer.add("lr", 0.001, step=40, epoch=2)
    batch = packer.take()
    assert batch is not None and batch.count == 2 and packer.take() is None
    assert packed.unpack(batch) == [
        MetricResult(name="val_auc", value=0.625, step=40, epoch=2, split="val", time=when),
        MetricResult(name="lr", value=0.001, step=40, epoch=2),
    ]
    assert [m.name for m in packed.unpack(batch, skip="lr")] == ["val_auc"]
    assert packed.pack([]) == PackedMetrics()


def test_the_trainer_channel_sends_full_batches_as_one_line_each() -> None:
    stream = io.StringIO()
    channel = Channel(stream)
    count = FLUSH_ITEMS * 2 + 5
    for step in range(1, count + 1):
        channel.metric("train_step_loss", 1 / step, step=step, epoch=1, split="train")
    channel.flush()
    messages = [load_message(line) for line in stream.getvalue().splitlines()]
    assert [m.metrics.count for m in messages if m.metrics] == [FLUSH_ITEMS, FLUSH_ITEMS, 5]
    steps = [metric.step for m in messages if m.metrics for metric in packed.unpack(m.metrics)]
    assert steps == list(range(1, count + 1))
