"""The scheduler's in-memory indexes of jobs and experiments, each kept by one class."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from datetime import datetime

from arc_common.models import TERMINAL_STATES, ExperimentSpec, JobState
from services.scheduler.store import JobRecord

# (caller, request id, index in a SubmitJobs batch or -1): a caller's own id and the ids
# derived for a batch's items live apart, and another caller's id is another key.
RequestKey = tuple[str, str, int]
ACTIVE_STATES = (JobState.STARTING, JobState.RUNNING)


def content_hash(spec: ExperimentSpec) -> str:
    """What decides the outcome of training, without names, priorities or placement."""
    content = spec.model_dump(
        mode="json",
        include={"architecture", "hyperparameters", "dataset", "preprocessing", "early_stopping"},
    )
    if spec.source is not None:  # the code at its commit, not the name it was asked by
        content["source"] = spec.source.model_dump(mode="json", exclude={"revision"})
    if spec.init_from:  # other starting weights, another experiment
        content["init_from"] = spec.init_from
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobIndex:
    """Every job by id, by request key and by experiment, the active set and an event per
    job set once it ends. ``add`` indexes a job; ``track`` follows each change of state."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._by_request: dict[RequestKey, str] = {}
        self._by_experiment: dict[str, list[str]] = defaultdict(list)
        self._active: set[str] = set()
        self._finished: dict[str, asyncio.Event] = {}
        self.seq = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def __getitem__(self, job_id: str) -> JobRecord:
        return self._jobs[job_id]

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def values(self) -> list[JobRecord]:
        return list(self._jobs.values())

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def add(self, job: JobRecord) -> None:
        self._jobs[job.job_id] = job
        self.seq = max(self.seq, job.seq)
        if job.request_id:
            self._by_request[(job.caller, job.request_id, job.batch_index)] = job.job_id
        self._by_experiment[job.experiment_id].append(job.job_id)
        self._finished.setdefault(job.job_id, asyncio.Event())
        self.track(job)
        if job.state in TERMINAL_STATES:
            self._finished[job.job_id].set()

    def track(self, job: JobRecord) -> None:
        if job.state in ACTIVE_STATES:
            self._active.add(job.job_id)
        else:
            self._active.discard(job.job_id)

    @property
    def active_count(self) -> int:
        return len(self._active)

    def by_request(self, key: RequestKey) -> JobRecord | None:
        job_id = self._by_request.get(key)
        return self._jobs.get(job_id) if job_id else None

    def of_experiment(self, experiment_id: str) -> list[JobRecord]:
        return [self._jobs[j] for j in self._by_experiment.get(experiment_id, [])]

    def finished(self, job_id: str) -> asyncio.Event:
        """Set once the job's final state change is in the event log's queue (not at the
        change of state: a watcher must not stop short of that event)."""
        return self._finished[job_id]


class Catalog:
    """Experiments by id, and the first experiment of each content hash."""

    def __init__(self) -> None:
        self._experiments: dict[str, tuple[ExperimentSpec, str, datetime]] = {}
        self._by_hash: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._experiments)

    def __contains__(self, experiment_id: str) -> bool:
        return experiment_id in self._experiments

    def get(self, experiment_id: str) -> tuple[ExperimentSpec, str, datetime] | None:
        return self._experiments.get(experiment_id)

    def ids(self) -> list[str]:
        return list(self._experiments)

    def remember(self, spec: ExperimentSpec, digest: str, created: datetime) -> None:
        self._experiments[spec.experiment_id] = (spec, digest, created)
        self._by_hash.setdefault(digest, spec.experiment_id)

    def forget(self, experiment_id: str, digest: str) -> None:
        self._experiments.pop(experiment_id, None)
        if self._by_hash.get(digest) == experiment_id:
            del self._by_hash[digest]

    def first_with(self, digest: str) -> str:
        return self._by_hash.get(digest, "")

    def duplicate_of(self, experiment_id: str) -> str:
        """The earlier experiment with the same content, or ""."""
        _, digest, _ = self._experiments[experiment_id]
        first = self._by_hash.get(digest, "")
        return "" if first == experiment_id else first
