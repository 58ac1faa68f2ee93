"""Metrics in bulk: a batch stays one serialized ``arc.common.v1.MetricBatch``
(``PackedMetrics``) from the trainer that writes it to the WatchJob client that reads it.

A training can log a metric every step; looking at each one as a Python object in every
service it crosses (the executor, the scheduler) cost more than the rest of the path. The
services keep the bytes as they are and open a batch only where they need what is inside:
the executor's per-epoch result, the scheduler's early-stopping check, a watcher that asked
for one event per metric.
"""

from __future__ import annotations

from collections.abc import Iterable

from arc.common.v1 import common_pb2
from arc_common.convert import fill_metric, metric_to_dict
from arc_common.models import MetricResult, PackedMetrics


def pack(metrics: Iterable[MetricResult]) -> PackedMetrics:
    packer = Packer()
    packer.extend(metrics)
    return packer.take() or PackedMetrics()


def open_batch(packed: PackedMetrics) -> common_pb2.MetricBatch:
    """The batch's messages (protobuf parses them in C; iterating them is the cost)."""
    return common_pb2.MetricBatch.FromString(packed.data)


def unpack(packed: PackedMetrics, *, skip: str = "") -> list[MetricResult]:
    """The batch as models, leaving out the metrics named ``skip``."""
    return models(open_batch(packed), skip=skip)


def models(batch: common_pb2.MetricBatch, *, skip: str = "") -> list[MetricResult]:
    return [MetricResult.model_validate(metric_to_dict(m)) for m in batch.metrics if m.name != skip]


def from_message(batch: common_pb2.MetricBatch) -> PackedMetrics:
    return PackedMetrics(count=len(batch.metrics), data=batch.SerializeToString())


class Packer:
    """The batch being built, one metric at a time (a trainer's step losses)."""

    def __init__(self) -> None:
        self._batch = common_pb2.MetricBatch()

    def __len__(self) -> int:
        return len(self._batch.metrics)

    def add(
        self,
        name: str,
        value: float,
        *,
        step: int = 0,
        epoch: int = 0,
        split: str = "",
        time_ns: int | None = None,
    ) -> None:
        """One metric; ``time_ns`` is nanoseconds since the epoch (``time.time_ns()``)."""
        metric = self._batch.metrics.add(name=name, value=value, step=step, epoch=epoch)
        if split:
            metric.split = split
        if time_ns is not None:
            stamp = metric.time
            stamp.seconds, stamp.nanos = divmod(time_ns, 1_000_000_000)

    def extend(self, metrics: Iterable[MetricResult]) -> None:
        for metric in metrics:
            fill_metric(self._batch.metrics.add(), metric)

    def take(self) -> PackedMetrics | None:
        """The batch so far (None when empty); the packer starts a new one."""
        if not self._batch.metrics:
            return None
        packed = from_message(self._batch)
        self._batch = common_pb2.MetricBatch()
        return packed
