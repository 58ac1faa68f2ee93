"""The scheduler's view of the other services, as domain calls.

``NodeClient`` is one machine (its gpu-manager and executor); ``GovernanceClient`` checks
tool calls. The core sees only these Protocols and domain models: ``remote`` implements
them over gRPC, the unit tests with fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from arc_common.models import (
    ArchitectureSpec,
    CodeSource,
    DatasetSpec,
    Decision,
    EvaluationJob,
    Gpu,
    GpuAllocation,
    Lease,
    Provenance,
    Run,
    RunEvent,
    SplitEvaluation,
    Tool,
    TrainingJobConfig,
)


class NodeClient(Protocol):
    name: str

    async def acquire(
        self, job_id: str, allocation: GpuAllocation, *, ttl_seconds: int, request_id: str
    ) -> Lease: ...
    async def release(self, lease: Lease) -> None: ...
    async def list_gpus(self) -> list[Gpu]: ...
    async def start_run(
        self, config: TrainingJobConfig, lease: Lease, *, request_id: str
    ) -> Run: ...
    async def prepare_run(self, config: TrainingJobConfig, *, request_id: str) -> Run: ...
    async def activate_run(self, run_id: str, lease: Lease, *, request_id: str) -> Run: ...
    async def get_run(self, run_id: str) -> Run: ...
    async def cancel_run(self, run_id: str, reason: str, *, prune: bool = False) -> Run:
        """``prune``: stopped for its metrics, the run ends PRUNED."""
        ...

    def events(self, run_id: str, after: int) -> AsyncIterator[RunEvent]: ...
    async def check_dataset(
        self, dataset: DatasetSpec, sealed: list[str], architecture: ArchitectureSpec
    ) -> None:
        """Raises when the dataset cannot be trained on there (its field named); one that
        would read a ``sealed`` test folder is not looked into (its run refuses it); nor
        when ``architecture`` wants pretrained weights the machine does not have."""
        ...

    async def resolve_source(self, source: CodeSource) -> CodeSource:
        """``source`` with the commit its revision names on this machine, and its tree."""
        ...

    async def evaluate(
        self,
        evaluation: EvaluationJob,
        lease: Lease,
        *,
        request_id: str,
        seconds: float,
        operator_job: bool = False,
    ) -> tuple[SplitEvaluation, Provenance]:
        """The evaluation module's report on the split, and what it measured;
        ``operator_job``: no agent's seal applies."""
        ...


class GovernanceClient(Protocol):
    async def validate(
        self,
        tool: Tool,
        parameters: dict[str, Any],
        *,
        dry_run: bool,
        request_id: str = "",
        on_behalf_of: str = "",
        cycle_id: int = 0,
        invalid_reason: str = "",
    ) -> Decision: ...
