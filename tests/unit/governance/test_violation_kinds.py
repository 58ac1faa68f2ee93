"""Every violation governance produces carries its kind, and the kind alone decides the
status a denial gets (never the wording of its constraint)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from arc.governance.v1 import governance_pb2
from arc_common.convert import to_model, to_proto
from arc_common.decisions import denial_error
from arc_common.errors import (
    ArcError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from arc_common.models import Decision, DecisionOutcome, Tool, Violation, ViolationKind
from services.governance.core import Governance
from tests.unit.governance.test_governance_core import FakeClock, call, open_gov, training

POLICY = """
version: k
callers:
  default: {gpu_hours_per_cycle: 3, max_concurrent_jobs: 1, calls_per_minute: 3}
tools:
  run_training_job:
    constraints:
      hyperparameters.optimizer.learning_rate: {min: 1.0e-5, max: 0.01}
  manage_checkpoints: {}
"""


@pytest.fixture
async def gov(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Governance]:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "policy.yaml").write_text(POLICY)
    governance = await open_gov(home, clock)
    yield governance
    await governance.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def kinds(decision: Decision) -> list[ViolationKind | None]:
    return [v.kind for v in decision.violations]


def status(decision: Decision) -> type[ArcError]:
    return type(denial_error(Tool.RUN_TRAINING_JOB, decision))


async def test_a_broken_rule_is_policy_and_permission_denied(gov: Governance) -> None:
    decision = await gov.validate(call(training(lr=0.5), dry_run=True))
    assert kinds(decision) == [ViolationKind.POLICY]
    assert status(decision) is PermissionDeniedError
    unlisted = await gov.validate(call({}, tool=Tool.SYNC_DATASETS, dry_run=True))
    assert kinds(unlisted) == [ViolationKind.POLICY]


@pytest.mark.parametrize(
    "params",
    [
        training(lr=float("nan")),
        training(lr="fast"),  # type: ignore[arg-type]
        {**training(), "gpu_allocation": {"gpu_count": "abc"}},
        {**training(), "max_training_time_seconds": float("inf")},
        {**training(), "gpu_allocation": "x"},
    ],
)
async def test_a_malformed_value_is_malformed_and_invalid_argument(
    gov: Governance, params: dict[str, object]
) -> None:
    decision = await gov.validate(call(params, dry_run=True))
    assert ViolationKind.MALFORMED in kinds(decision)
    assert set(kinds(decision)) <= {ViolationKind.MALFORMED, ViolationKind.POLICY}
    assert status(decision) is InvalidArgumentError


async def test_the_gpu_hour_budget_is_budget_and_resource_exhausted(gov: Governance) -> None:
    decision = await gov.validate(call(training(hours=4), request_id="big"))
    assert kinds(decision) == [ViolationKind.BUDGET]
    assert status(decision) is ResourceExhaustedError


async def test_rate_and_concurrency_are_quota_and_resource_exhausted(gov: Governance) -> None:
    await gov.begin(caller="architect", tool=Tool.RUN_TRAINING_JOB, paths=["runs"])
    busy = await gov.validate(call(training(hours=1), request_id="second"))
    assert [(v.field, v.kind) for v in busy.violations] == [
        ("concurrent_jobs", ViolationKind.QUOTA)
    ]
    assert status(busy) is ResourceExhaustedError
    for n in range(2):
        await gov.validate(call({}, tool=Tool.MANAGE_CHECKPOINTS, request_id=f"r{n}"))
    limited = await gov.validate(call({}, tool=Tool.MANAGE_CHECKPOINTS, request_id="r3"))
    assert [(v.field, v.kind) for v in limited.violations] == [("rate", ViolationKind.QUOTA)]
    assert status(limited) is ResourceExhaustedError


def denied(*violations: Violation) -> Decision:
    return Decision(outcome=DecisionOutcome.DENIED, violations=list(violations))


def violation(kind: ViolationKind | None, constraint: str = "x") -> Violation:
    return Violation(field="f", constraint=constraint, kind=kind)


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (denied(violation(ViolationKind.MALFORMED)), InvalidArgumentError),
        (denied(violation(ViolationKind.QUOTA)), ResourceExhaustedError),
        (denied(violation(ViolationKind.BUDGET)), ResourceExhaustedError),
        (
            denied(violation(ViolationKind.QUOTA), violation(ViolationKind.BUDGET)),
            ResourceExhaustedError,
        ),
        (
            denied(violation(ViolationKind.BUDGET), violation(ViolationKind.POLICY)),
            PermissionDeniedError,
        ),
        (
            denied(violation(ViolationKind.BUDGET), violation(ViolationKind.MALFORMED)),
            InvalidArgumentError,
        ),
        (denied(violation(ViolationKind.POLICY)), PermissionDeniedError),
        (denied(), PermissionDeniedError),
    ],
)
def test_the_status_follows_the_kinds(decision: Decision, expected: type[ArcError]) -> None:
    assert status(decision) is expected


def test_the_wording_of_a_constraint_decides_nothing() -> None:
    """An older governance sends no kind: its violations count as POLICY, whatever they say."""
    for constraint in ("must be finite", "GPU-hour budget of cycle 0: 3 h", "must be a number"):
        assert status(denied(violation(None, constraint))) is PermissionDeniedError
    assert status(denied(Violation(field="rate", constraint="y"))) is PermissionDeniedError


def test_the_kind_survives_the_wire_and_its_absence_reads_as_none() -> None:
    decision = denied(violation(ViolationKind.BUDGET), violation(ViolationKind.MALFORMED))
    wire = to_proto(decision, governance_pb2.Decision)
    assert [v.kind for v in wire.violations] == [
        governance_pb2.VIOLATION_KIND_BUDGET,
        governance_pb2.VIOLATION_KIND_MALFORMED,
    ]
    assert kinds(to_model(wire, Decision)) == [ViolationKind.BUDGET, ViolationKind.MALFORMED]
    old = governance_pb2.Decision(violations=[governance_pb2.Violation(field="f", constraint="c")])
    assert kinds(to_model(old, Decision)) == [None]
