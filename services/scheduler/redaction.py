"""What an agent's answer leaves out of a sealed job (arc_common.sealing), on the
messages the servicer sends; which jobs are sealed is services.scheduler.reveals'."""

from __future__ import annotations

from arc.common.v1 import common_pb2
from arc.scheduler.v1 import scheduler_pb2
from arc_common import sealing
from arc_common.convert import set_timestamp
from services.scheduler.reveals import Reveals


class Redaction:
    def __init__(self, reveals: Reveals) -> None:
        self._reveals = reveals

    # --- what an agent's answer leaves out -------------------------------------------------

    def result(self, result: common_pb2.ExperimentResult) -> None:
        if self._reveals.sealed(result.job_id):
            sealing.seal_result(result)

    def job(self, job: scheduler_pb2.Job) -> None:
        if job.HasField("result") and self._reveals.sealed(job.job_id):
            sealing.seal_result(job.result)

    def experiment(self, experiment: scheduler_pb2.Experiment) -> None:
        for result in experiment.results:
            self.result(result)
        self.mark(experiment)

    def mark(self, experiment: scheduler_pb2.Experiment) -> None:
        """Who released it, for every reader."""
        release = self._reveals.release(experiment.spec.experiment_id)
        if release is not None:
            experiment.test_revealed_by = release.by
            experiment.test_reveal_reason = release.reason
            set_timestamp(experiment.test_reveal_time, release.time)

    def events(
        self, job_id: str, events: list[scheduler_pb2.JobEvent]
    ) -> list[scheduler_pb2.JobEvent]:
        """A watcher's events without the test figures (the numbering keeps its gaps)."""
        if not self._reveals.sealed(job_id):
            return events
        return [event for event in events if sealing.seal_event(event)]
