"""The ceiling of measures 1 and 2: the scheduler service as it is (same process, same
guard, same request parsing and reply), except that SubmitJob does none of the engine's
work: it submits the first request it gets and answers every later one with that first
reply. What gRPC, the guard and the messages cost is all that is left, so its ratio to the
echo server is as high as measure 1 can ever go on the machine it runs on. Never a way to
run the scheduler: only the benchmark starts it. ``python -m bench.ceiling_scheduler``
takes the service's flags."""

from __future__ import annotations

from typing import Any

from arc.scheduler.v1 import scheduler_pb2
from services.scheduler import servicer


class CannedSubmit(servicer.SchedulerServicer):
    _canned: scheduler_pb2.SubmitJobResponse | None = None

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: Any
    ) -> scheduler_pb2.SubmitJobResponse:
        if self._canned is None:
            self._canned = await super().SubmitJob(request, context)
        return self._canned


def main() -> None:
    # The one thing this ceiling changes.
    setattr(servicer, "SchedulerServicer", CannedSubmit)  # noqa: B010
    from services.scheduler.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
