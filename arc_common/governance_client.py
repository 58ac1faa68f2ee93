"""Governance as domain calls: models in, models out, ``arc_common.errors`` raised.

The one client of ``arc.governance.v1`` that the scheduler, the executor and ``ArcClient``
share: it converts with ``arc_common.convert``, maps gRPC status codes back with the one
error table (``arc_common.rpc.unary``) and sets a deadline on every call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.convert import enum_member, enum_value, to_model
from arc_common.decisions import allowed, tool_request_id
from arc_common.errors import FailedPreconditionError
from arc_common.models import (
    AuditRecord,
    Decision,
    DecisionOutcome,
    Mode,
    PendingRequest,
    Tool,
    Transaction,
    TransactionState,
)
from arc_common.rpc import unary

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
# Snapshotting or restoring a tool's paths copies files: give it longer than a decision.
TRANSACTION_TIMEOUT = 120.0
PAGE_SIZE = 500


@dataclass(frozen=True)
class ModeStatus:
    mode: Mode
    policy_version: str
    locked_reason: str = ""  # why governance locked itself; empty otherwise


@dataclass(frozen=True)
class AuditCheck:
    ok: bool
    records_checked: int
    first_bad_sequence: int
    reason: str


@dataclass(frozen=True)
class Rollback:
    transaction: Transaction
    restored_files: int
    removed_files: int


def _struct(parameters: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(parameters)
    return struct


def _not_open(transaction_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"governance answered transaction {transaction_id!r} that is not open; "
        "retry with a new request_id",
        field="request_id",
    )


class GovernanceClient:
    def __init__(self, channel: aio.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        self._timeout = timeout

    # --- decisions -------------------------------------------------------------------------

    async def validate(
        self,
        tool: Tool,
        parameters: dict[str, Any],
        *,
        dry_run: bool = False,
        request_id: str = "",
        on_behalf_of: str = "",
        cycle_id: int = 0,
        invalid_reason: str = "",
        wait_for_approval_seconds: int = 0,
    ) -> Decision:
        """Governance's decision on a tool call, whatever it is (allowed, denied, pending)."""
        reply = await unary(
            self._stub.ValidateToolRequest(
                governance_pb2.ValidateToolRequestRequest(
                    request_id=request_id,
                    tool=enum_value(governance_pb2.Tool, tool),
                    parameters=_struct(parameters),
                    dry_run=dry_run,
                    cycle_id=cycle_id,
                    on_behalf_of=on_behalf_of,
                    invalid_reason=invalid_reason,
                    wait_for_approval_seconds=wait_for_approval_seconds,
                ),
                timeout=wait_for_approval_seconds + self._timeout,
            )
        )
        return to_model(reply.decision, Decision)

    async def check(
        self,
        tool: Tool,
        parameters: dict[str, Any],
        *,
        caller: str,
        request_id: str,
        wait_for_approval_seconds: int = 0,
    ) -> Decision:
        """An allowed decision for a tool run on ``caller``'s behalf, or the error to
        answer with: denied (``denial_error``), or still waiting for an operator. The
        request id is namespaced by the tool."""
        decision = await self.validate(
            tool,
            parameters,
            request_id=tool_request_id(tool, request_id),
            on_behalf_of=caller,
            wait_for_approval_seconds=wait_for_approval_seconds,
        )
        return allowed(tool, decision)

    # --- transactions ----------------------------------------------------------------------

    async def begin(
        self,
        tool: Tool,
        paths: list[str],
        *,
        request_id: str = "",
        on_behalf_of: str = "",
        timeout_seconds: int = 0,
    ) -> Transaction:
        """Snapshot ``paths`` before ``tool`` changes them."""
        reply = await unary(
            self._stub.BeginTransaction(
                governance_pb2.BeginTransactionRequest(
                    request_id=request_id,
                    tool=enum_value(governance_pb2.Tool, tool),
                    paths=paths,
                    timeout_seconds=timeout_seconds,
                    on_behalf_of=on_behalf_of,
                ),
                timeout=max(self._timeout, TRANSACTION_TIMEOUT),
            )
        )
        if not reply.transaction.transaction_id:
            raise _not_open("")
        return to_model(reply.transaction, Transaction)

    async def commit(
        self, transaction_id: str, *, outcome: str = "succeeded", request_id: str = ""
    ) -> Transaction:
        reply = await unary(
            self._stub.CommitTransaction(
                governance_pb2.CommitTransactionRequest(
                    request_id=request_id, transaction_id=transaction_id, outcome=outcome
                ),
                timeout=max(self._timeout, TRANSACTION_TIMEOUT / 2),
            )
        )
        return to_model(reply.transaction, Transaction)

    async def rollback(
        self, transaction_id: str, *, reason: str = "", request_id: str = ""
    ) -> Rollback:
        """Restore the snapshot; ``reason`` is cut to what the audit record keeps."""
        reply = await unary(
            self._stub.RollbackTransaction(
                governance_pb2.RollbackTransactionRequest(
                    request_id=request_id, transaction_id=transaction_id, reason=reason[:2000]
                ),
                timeout=max(self._timeout, TRANSACTION_TIMEOUT),
            )
        )
        return Rollback(
            to_model(reply.transaction, Transaction), reply.restored_files, reply.removed_files
        )

    @asynccontextmanager
    async def transaction(
        self, tool: Tool, paths: list[str], *, caller: str, request_id: str
    ) -> AsyncIterator[str]:
        """Snapshot ``paths``; commit when the block succeeds, roll back when it raises
        (the caller's error then means "nothing changed")."""
        opened = await self.begin(
            tool,
            paths,
            request_id=f"txn:{tool.value}:{request_id}" if request_id else "",
            on_behalf_of=caller,
        )
        transaction_id = opened.transaction_id
        if opened.state is not TransactionState.OPEN:
            # Never run a tool outside an open transaction: nothing would restore its writes.
            raise _not_open(transaction_id)
        try:
            yield transaction_id
        except BaseException as exc:
            await self._rollback_quietly(transaction_id, f"{type(exc).__name__}: {exc}")
            raise
        try:
            await self.commit(transaction_id)
        except BaseException as exc:
            # Not committed (or its reply lost: then the rollback is refused and the commit
            # stands): restore, so that the caller's error means "nothing changed".
            await self._rollback_quietly(transaction_id, f"commit failed: {exc}")
            raise

    async def _rollback_quietly(self, transaction_id: str, reason: str) -> None:
        try:
            await self.rollback(transaction_id, reason=reason)
        except Exception:  # governance rolls it back by timeout or on restart
            logger.exception("rollback of %s failed", transaction_id)

    # --- mode, approvals, audit ------------------------------------------------------------

    async def mode(self) -> ModeStatus:
        reply = await unary(
            self._stub.GetMode(governance_pb2.GetModeRequest(), timeout=self._timeout)
        )
        return ModeStatus(
            enum_member(governance_pb2.Mode, reply.mode, Mode),
            reply.policy_version,
            reply.locked_reason,
        )

    async def set_mode(self, mode: Mode, *, reason: str = "", request_id: str = "") -> Mode:
        """Set the mode; returns the previous one."""
        reply = await unary(
            self._stub.SetMode(
                governance_pb2.SetModeRequest(
                    request_id=request_id,
                    mode=enum_value(governance_pb2.Mode, mode),
                    reason=reason,
                ),
                timeout=self._timeout,
            )
        )
        return enum_member(governance_pb2.Mode, reply.previous_mode, Mode)

    async def pending(self, *, limit: int = 1000) -> list[PendingRequest]:
        """Requests waiting for an operator, oldest first, at most ``limit``."""
        out: list[PendingRequest] = []
        token = ""
        while len(out) < limit:
            reply = await unary(
                self._stub.ListPendingRequests(
                    governance_pb2.ListPendingRequestsRequest(
                        page_size=min(PAGE_SIZE, limit - len(out)), page_token=token
                    ),
                    timeout=self._timeout,
                )
            )
            out += [to_model(p, PendingRequest) for p in reply.pending_requests]
            token = reply.next_page_token
            if not token:
                break
        return out

    async def decide(
        self, pending_request_id: str, *, approve: bool, reason: str = "", request_id: str = ""
    ) -> PendingRequest:
        """Approve or reject a pending request."""
        if approve:
            approved = await unary(
                self._stub.ApproveRequest(
                    governance_pb2.ApproveRequestRequest(
                        request_id=request_id,
                        pending_request_id=pending_request_id,
                        reason=reason,
                    ),
                    timeout=self._timeout,
                )
            )
            return to_model(approved.pending_request, PendingRequest)
        rejected = await unary(
            self._stub.RejectRequest(
                governance_pb2.RejectRequestRequest(
                    request_id=request_id, pending_request_id=pending_request_id, reason=reason
                ),
                timeout=self._timeout,
            )
        )
        return to_model(rejected.pending_request, PendingRequest)

    async def audit(
        self,
        *,
        caller: str = "",
        tool: Tool | None = None,
        decision: DecisionOutcome | None = None,
        limit: int = 1000,
        newest_first: bool = False,
        page_token: str = "",
    ) -> tuple[list[AuditRecord], str]:
        """Audit records matching the filters given, oldest first unless asked, at most
        ``limit``; and the token of the page after them ("" at the end)."""
        out: list[AuditRecord] = []
        token = page_token
        while len(out) < limit:
            reply = await unary(
                self._stub.ListAuditRecords(
                    governance_pb2.ListAuditRecordsRequest(
                        page_size=min(PAGE_SIZE, limit - len(out)),
                        page_token=token,
                        caller=caller,
                        tool=enum_value(governance_pb2.Tool, tool)
                        if tool
                        else governance_pb2.TOOL_UNSPECIFIED,
                        decision=enum_value(governance_pb2.DecisionOutcome, decision)
                        if decision
                        else governance_pb2.DECISION_OUTCOME_UNSPECIFIED,
                        newest_first=newest_first,
                    ),
                    timeout=self._timeout,
                )
            )
            out += [to_model(r, AuditRecord) for r in reply.records]
            token = reply.next_page_token
            if not token:
                break
        return out, token

    async def verify_audit(self) -> AuditCheck:
        reply = await unary(
            self._stub.VerifyAuditLog(governance_pb2.VerifyAuditLogRequest(), timeout=self._timeout)
        )
        return AuditCheck(reply.ok, reply.records_checked, reply.first_bad_sequence, reply.reason)
