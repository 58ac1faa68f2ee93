"""Sealed test figures and their release: which jobs' figures agent tokens may not read
yet, and the operator's RevealTestMetrics that lets them (the messages are redacted at
the edge, in services.scheduler.redaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from arc_common.errors import InvalidArgumentError, NotFoundError
from services.scheduler.admission import MAX_REASON_LENGTH, check_length
from services.scheduler.context import Context
from services.scheduler.lifecycle import now


@dataclass(frozen=True)
class Reveal:
    by: str
    time: datetime
    reason: str


class Reveals:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._released: dict[str, Reveal] = {}

    def load(self, rows: list[tuple[str, str, datetime, str]]) -> None:
        self._released = {e: Reveal(by, time, reason) for e, by, time, reason in rows}

    async def reveal(self, experiment_id: str, *, by: str, reason: str) -> Reveal:
        """Release an experiment's sealed test figures; the first release stands."""
        check_length(experiment_id, "experiment_id")
        check_length(reason, "reason", MAX_REASON_LENGTH)
        if not experiment_id:
            raise InvalidArgumentError("experiment_id is required", field="experiment_id")
        if experiment_id not in self._ctx.experiments:
            raise NotFoundError(f"no experiment {experiment_id!r}", field="experiment_id")
        earlier = self._released.get(experiment_id)
        if earlier is not None:
            return earlier
        release = Reveal(by, now(), reason)
        await self._ctx.store.write(
            self._ctx.store.put_reveal(experiment_id, by, release.time, reason)
        )
        return self._released.setdefault(experiment_id, release)

    def sealed(self, job_id: str) -> bool:
        """Whether the job's test figures are still kept from agent tokens."""
        job = self._ctx.jobs.get(job_id)
        return job is not None and job.test_sealed and job.experiment_id not in self._released

    def release(self, experiment_id: str) -> Reveal | None:
        return self._released.get(experiment_id)
