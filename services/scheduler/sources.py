"""A code-defined spec's source resolved at submit: its revision becomes the commit an
executor's repository has for it, so the job, its result and the audit name that exact
commit, and a ref that moves later does not change what the job trains."""

from __future__ import annotations

import logging

from arc_common.errors import (
    ArcError,
    DeadlineExceededError,
    FailedPreconditionError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.models import ExperimentSpec
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
