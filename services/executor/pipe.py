"""The executor's reading of its trainer's pipe: each line checked before it counts.

Every line must be a ``protocol.TrainerMessage``; a metric batch must parse and hold as
many metrics as it says (checked once here, its bytes then go on as they are); a failure
cause must be one the trainer may report. What fails a check is logged and skipped: the
pipe is the trainer's, and the trainer runs code the executor did not write.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from arc_common import packed
from arc_common.models import MetricResult, PackedMetrics, RunEndCause
from services.executor.protocol import TrainerMessage, load_message

logger = logging.getLogger(__name__)

STEP_LOSS = "train_step_loss"


async def messages(lines: AsyncIterator[bytes], run_id: str) -> AsyncIterator[TrainerMessage]:
    """The well-formed messages among ``lines``."""
    async for line in lines:
        try:
            yield load_message(line)
        except ValueError:
            logger.warning("run %s: ignoring a malformed trainer message", run_id)


@dataclass(frozen=True)
class CheckedMetrics:
    data: PackedMetrics  # as the trainer sent it, to store and forward
    epoch_metrics: list[MetricResult]  # what the result keeps (no per-step losses)


def check_metrics(metrics: PackedMetrics, run_id: str) -> CheckedMetrics | None:
    """The batch when it is sound and not empty, else None (a bad one is logged)."""
    try:
        batch = packed.open_batch(metrics)
    except DecodeError:
        batch = None
    if batch is None or len(batch.metrics) != metrics.count:
        logger.warning("run %s: ignoring a malformed metric batch", run_id)
        return None
    if not batch.metrics:
        return None
    return CheckedMetrics(metrics, packed.models(batch, skip=STEP_LOSS))


def failure_cause(message: TrainerMessage) -> RunEndCause:
    """Why the trainer says it failed: out of memory, or any other error."""
    return RunEndCause.OOM if message.cause == "oom" else RunEndCause.FAILED
