"""A code-defined spec's source resolved at submit: its revision becomes the commit an
executor's repository has for it, so the job, its result and the audit name that exact
commit, and a ref that moves later does not change what the job trains."""

from __future__ import annotations

import logging

from arc_common.errors import (
    ArcError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.models import CheckpointKind, ExperimentSpec, JobState
from services.scheduler.jobs import Catalog, JobIndex
from services.scheduler.nodes import Nodes

logger = logging.getLogger(__name__)


async def resolve(nodes: Nodes, spec: ExperimentSpec, *, prefix: str = "") -> ExperimentSpec:
    """``spec`` with ``source.commit`` and ``source.tree`` set by the first machine that
    answers; what a machine refuses (an unknown repository, revision or module) is
    refused here, with the field named."""
    if spec.source is None:
        return spec
    unreachable: list[str] = []
    for node in nodes.up() or list(nodes):
        try:
            source = await node.client.resolve_source(spec.source)
        except (UnavailableError, DeadlineExceededError) as exc:
            unreachable.append(f"{node.name}: {exc.message}")
            continue
        except ArcError as exc:
            if exc.field and prefix:
                exc.field = f"{prefix}spec.{exc.field}"
            raise
        return spec.model_copy(update={"source": source})
    raise FailedPreconditionError(
        "spec.source cannot be resolved now: no executor answered ("
        + ("; ".join(unreachable) or "no machines configured")
        + "); submit again when one is up",
        field=f"{prefix}spec.source",
    )


def refuse_sealed(spec: ExperimentSpec, *, trusted: bool, prefix: str = "") -> None:
    """Repository code runs inside the trainer, which reads the dataset's test split for
    its own test pass: an agent's code on a sealed dataset could read the sealed images."""
    if spec.source is not None and spec.seal_test and not trusted:
        raise PermissionDeniedError(
            "spec.source: code from a repository may not train on a sealed test split (it "
            "could read the sealed images); use a built-in architecture, or ask an operator",
            field=f"{prefix}spec.source",
        )


def resolve_init(
    jobs: JobIndex, experiments: Catalog, spec: ExperimentSpec, *, prefix: str = ""
) -> ExperimentSpec:
    """``init_from`` as a checkpoint path: an experiment id becomes the best checkpoint of
    its newest completed job (the executor verifies the engine wrote it)."""
    value = spec.init_from
    field = f"{prefix}spec.init_from"
    if not value:
        return spec
    if value.endswith(".pt"):
        parts = value.split("/")
        if parts[0] != "runs" or ".." in parts:  # an absolute path starts with ""
            raise InvalidArgumentError(
                f"init_from {value!r}: a checkpoint the engine wrote, under runs/", field=field
            )
        written = any(
            checkpoint.path == value
            for job in jobs.values()
            for checkpoint in (job.result.checkpoints if job.result else [])
        )
        if not written:
            raise NotFoundError(f"init_from {value!r}: no job wrote that checkpoint", field=field)
        return spec
    if value not in experiments:
        raise NotFoundError(
            f"init_from {value!r} is no experiment, nor a checkpoint path (*.pt)", field=field
        )
    for job in sorted(jobs.of_experiment(value), key=lambda j: j.seq, reverse=True):
        if job.state is not JobState.COMPLETED or job.result is None:
            continue
        for checkpoint in job.result.checkpoints:
            if checkpoint.kind is CheckpointKind.BEST:
                return spec.model_copy(update={"init_from": checkpoint.path})
    raise FailedPreconditionError(
        f"init_from {value!r}: the experiment has no completed job with a best checkpoint",
        field=field,
    )
