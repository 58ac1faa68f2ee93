"""What the engine already knows about a proposal (the world model's first part): the
completed trainings nearest to it on the same data, the best per architecture family,
and one with the same content if it ran. No grpc here.

"The same data" is the dataset's content: the content hash the trainer recorded
(``provenance.dataset_hash``) of the latest run on the proposal's data path; runs that
recorded none are matched by data path. Nearness is a distance over the fields a
proposal most often changes, each scaled so that 1 is a large change."""

from __future__ import annotations

import math
from dataclasses import dataclass

from arc_common.models import ExperimentSpec, JobState
from services.scheduler.jobs import content_hash
from services.scheduler.store import JobRecord

MAX_LIMIT = 100


@dataclass(frozen=True)
class Neighbour:
    job: JobRecord
    distance: float
    differences: list[str]  # the fields that differ, "path: theirs -> the proposal's"


@dataclass(frozen=True)
class History:
    dataset_hash: str
    nearest: list[Neighbour]
    best_per_family: list[JobRecord]
    identical: JobRecord | None


def _log_gap(a: float, b: float, decade: float) -> float:
    if a <= 0 or b <= 0:
        return 0.0 if a == b else 1.0
    return abs(math.log10(a) - math.log10(b)) / decade


def distance(a: ExperimentSpec, b: ExperimentSpec) -> tuple[float, list[str]]:
    """How far ``b`` is from ``a``, and what differs."""
    parts: list[tuple[str, object, object, float]] = []
    ha, hb = a.hyperparameters, b.hyperparameters
    oa, ob = ha.optimizer, hb.optimizer

    def add(path: str, x: object, y: object, gap: float) -> None:
        if x != y:
            parts.append((path, x, y, gap))

    add("architecture.family", a.architecture.family, b.architecture.family, 1.0)
    add("architecture.variant", a.architecture.variant, b.architecture.variant, 0.5)
    add("architecture.pretrained", a.architecture.pretrained, b.architecture.pretrained, 0.5)
    add("hyperparameters.optimizer.type", oa.type, ob.type, 0.5)
    add(
        "hyperparameters.optimizer.learning_rate",
        oa.learning_rate,
        ob.learning_rate,
        _log_gap(oa.learning_rate, ob.learning_rate, 2.0),
    )
    add(
        "hyperparameters.optimizer.weight_decay",
        oa.weight_decay,
        ob.weight_decay,
        min(1.0, abs(oa.weight_decay - ob.weight_decay) * 10),
    )
    add(
        "hyperparameters.batch_size",
        ha.batch_size,
        hb.batch_size,
        abs(math.log2(ha.batch_size) - math.log2(hb.batch_size)) / 3,
    )
    add(
        "hyperparameters.epochs",
        ha.epochs,
        hb.epochs,
        abs(ha.epochs - hb.epochs) / max(ha.epochs, hb.epochs),
    )
    add(
        "dataset.image_size",
        a.dataset.image_size,
        b.dataset.image_size,
        abs(math.log2(a.dataset.image_size) - math.log2(b.dataset.image_size)),
    )
    total = math.sqrt(sum(gap * gap for *_, gap in parts))
    return total, [f"{path}: {x} -> {y}" for path, x, y, _ in parts]


def _dataset_hash(job: JobRecord) -> str:
    provenance = job.result.provenance if job.result else None
    return provenance.dataset_hash if provenance else ""


def _score(job: JobRecord, metric: str) -> float:
    value = job.result.best_metrics.get(metric) if job.result else None
    return value if value is not None and math.isfinite(value) else -math.inf


def history(proposal: ExperimentSpec, jobs: list[JobRecord], *, limit: int, metric: str) -> History:
    """``jobs``: every job the scheduler has; ``metric``: what "best" means."""
    done = [
        job
        for job in jobs
        if job.kind == "training" and job.state is JobState.COMPLETED and job.result is not None
    ]
    on_path = [job for job in done if job.spec.dataset.data_path == proposal.dataset.data_path]
    latest = max(on_path, key=lambda job: job.seq, default=None)
    digest = _dataset_hash(latest) if latest else ""
    same = [
        job
        for job in done
        if (digest and _dataset_hash(job) == digest) or (not _dataset_hash(job) and job in on_path)
    ]
    ranked = sorted(
        (Neighbour(job, *distance(job.spec, proposal)) for job in same),
        key=lambda n: (n.distance, -_score(n.job, metric)),
    )
    best: dict[str, JobRecord] = {}
    for job in same:
        family = job.spec.architecture.family.value
        if family not in best or _score(job, metric) > _score(best[family], metric):
            best[family] = job
    wanted = content_hash(proposal)
    identical = max(
        (job for job in same if content_hash(job.spec) == wanted),
        key=lambda job: job.seq,
        default=None,
    )
    return History(
        dataset_hash=digest,
        nearest=ranked[:limit],
        best_per_family=sorted(best.values(), key=lambda job: -_score(job, metric)),
        identical=identical,
    )
