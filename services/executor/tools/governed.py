"""Every tool call: checked by governance, run inside a transaction when it changes files,
committed on success and rolled back on failure. A denied call changes nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.convert import to_model
from arc_common.decisions import denial_error
from arc_common.errors import FailedPreconditionError
from arc_common.models import Decision, DecisionOutcome, Tool
from arc_common.rpc import unary

logger = logging.getLogger(__name__)


def _tool(tool: Tool) -> governance_pb2.Tool.ValueType:
    return governance_pb2.Tool.Value(f"TOOL_{tool.value.upper()}")


class Governed:
    def __init__(self, channel: aio.Channel | None, *, approval_wait_seconds: int) -> None:
        self._stub = governance_pb2_grpc.GovernanceServiceStub(channel) if channel else None
        self._wait = approval_wait_seconds

    def _require(self) -> governance_pb2_grpc.GovernanceServiceStub:
        if self._stub is None:
            raise FailedPreconditionError(
                "tool calls need governance, and none is configured "
                "(set ARC_EXECUTOR_GOVERNANCE_ADDRESS)"
            )
        return self._stub

    async def check(
        self, tool: Tool, parameters: dict[str, Any], *, caller: str, request_id: str
    ) -> Decision:
        """Allowed, or an error: denied, over quota, or still waiting for an operator."""
        struct = Struct()
        struct.update(parameters)
        reply = await unary(
            self._require().ValidateToolRequest(
                governance_pb2.ValidateToolRequestRequest(
                    request_id=f"{tool.value}:{request_id}" if request_id else "",
                    tool=_tool(tool),
                    parameters=struct,
                    on_behalf_of=caller,
                    wait_for_approval_seconds=self._wait,
                ),
                timeout=self._wait + 30,
            )
        )
        decision = to_model(reply.decision, Decision)
        if decision.outcome is DecisionOutcome.DENIED:
            raise denial_error(tool, decision)
        if decision.outcome is DecisionOutcome.PENDING_APPROVAL:
            raise FailedPreconditionError(
                f"{tool.value} waits for an operator's approval (governance pending request "
                f"{decision.pending_request_id}); retry with the same request_id once approved"
            )
        return decision

    @asynccontextmanager
    async def transaction(
        self, tool: Tool, paths: list[str], *, caller: str, request_id: str
    ) -> AsyncIterator[str]:
        """Snapshot ``paths``; commit when the block succeeds, roll back when it raises."""
        stub = self._require()
        reply = await unary(
            stub.BeginTransaction(
                governance_pb2.BeginTransactionRequest(
                    request_id=f"txn:{tool.value}:{request_id}" if request_id else "",
                    tool=_tool(tool),
                    paths=paths,
                    on_behalf_of=caller,
                ),
                timeout=120,
            )
        )
        transaction_id = reply.transaction.transaction_id
        if not transaction_id or reply.transaction.state != governance_pb2.TRANSACTION_STATE_OPEN:
            # Never run a tool outside an open transaction: nothing would restore its writes.
            raise FailedPreconditionError(
                f"governance answered transaction {transaction_id!r} that is not open; "
                "retry with a new request_id",
                field="request_id",
            )
        try:
            yield transaction_id
        except BaseException as exc:
            await self._rollback(stub, transaction_id, f"{type(exc).__name__}: {exc}")
            raise
        try:
            await unary(
                stub.CommitTransaction(
                    governance_pb2.CommitTransactionRequest(
                        transaction_id=transaction_id, outcome="succeeded"
                    ),
                    timeout=60,
                )
            )
        except BaseException as exc:
            # Not committed (or its reply lost: then the rollback is refused and the commit
            # stands): restore, so that the caller's error means "nothing changed".
            await self._rollback(stub, transaction_id, f"commit failed: {exc}")
            raise

    async def _rollback(
        self, stub: governance_pb2_grpc.GovernanceServiceStub, transaction_id: str, reason: str
    ) -> None:
        try:
            await unary(
                stub.RollbackTransaction(
                    governance_pb2.RollbackTransactionRequest(
                        transaction_id=transaction_id, reason=reason[:2000]
                    ),
                    timeout=120,
                )
            )
        except Exception:  # governance rolls it back by timeout or on restart
            logger.exception("rollback of %s failed", transaction_id)
