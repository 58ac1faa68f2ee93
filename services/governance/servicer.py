"""GovernanceService: converts requests, calls Governance, converts back. The mutating
RPCs go through the request ledger: a replay of a request_id gets the first answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common import auth
from arc_common.convert import enum_field, enum_to_str, enum_value, struct_to_dict, to_proto
from arc_common.decisions import denial_error
from arc_common.errors import InvalidArgumentError, PermissionDeniedError
from arc_common.models import DecisionOutcome, Mode, Tool
from arc_common.pagination import encode_token, page_bounds
from services.governance.audit import AuditFilter
from services.governance.core import Governance, ToolCall

# The answer of an operator's decision on a pending request.
Decided = TypeVar(
    "Decided", governance_pb2.ApproveRequestResponse, governance_pb2.RejectRequestResponse
)

MAX_WAIT_FOR_APPROVAL_SECONDS = 300
MAX_REQUEST_ID_CHARS = 512
# A tool call's parameters: nesting and number of values (the message size bounds the rest).
MAX_PARAMETER_DEPTH = 16
MAX_PARAMETER_VALUES = 100_000
# Audit filter times: 1970-01-01 up to the end of year 9999.
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def check_parameters(value: Any) -> None:
    """Bound the shape of a tool call's parameters before any of it is evaluated."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_PARAMETER_DEPTH:
            raise InvalidArgumentError(
                f"parameters nest deeper than {MAX_PARAMETER_DEPTH} levels", field="parameters"
            )
        if count > MAX_PARAMETER_VALUES:
            raise InvalidArgumentError(
                f"parameters hold more than {MAX_PARAMETER_VALUES} values", field="parameters"
            )
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgumentError(
            f"request_id may have at most {MAX_REQUEST_ID_CHARS} characters "
            f"(got {len(request_id)})",
            field="request_id",
        )


def audit_time(request: Any, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    stamp = getattr(request, name)
    if not (0 <= stamp.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= stamp.nanos < 1_000_000_000):
        raise InvalidArgumentError(
            f"{name} must lie between 1970-01-01 and 9999-12-31 (got {stamp.seconds} s, "
            f"{stamp.nanos} ns)",
            field=name,
        )
    when: datetime = stamp.ToDatetime(tzinfo=UTC)
    return when


def caller_name(on_behalf_of: str = "") -> str:
    """Who the call counts for: the token's name, or the agent a service acts for."""
    identity = auth.current_identity.get()
    if identity is None:  # pragma: no cover - the interceptor always sets one
        raise PermissionDeniedError("no caller identity")
    if not on_behalf_of or on_behalf_of == identity.name:
        return identity.name
    if identity.role is auth.Role.AGENT:
        raise PermissionDeniedError(
            f"an agent may not act on behalf of {on_behalf_of!r}", field="on_behalf_of"
        )
    return on_behalf_of


def authenticated_name() -> str:
    identity = auth.current_identity.get()
    if identity is None:  # pragma: no cover - the interceptor always sets one
        raise PermissionDeniedError("no caller identity")
    return identity.name


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    def __init__(self, governance: Governance) -> None:
        self._gov = governance

    async def ValidateToolRequest(
        self, request: governance_pb2.ValidateToolRequestRequest, context: Any
    ) -> governance_pb2.ValidateToolRequestResponse:
        tool = enum_field(request, "tool", Tool)
        if request.cycle_id < 0:
            raise InvalidArgumentError(
                f"cycle_id must be >= 0 (got {request.cycle_id})", field="cycle_id"
            )
        if not 0 <= request.wait_for_approval_seconds <= MAX_WAIT_FOR_APPROVAL_SECONDS:
            raise InvalidArgumentError(
                f"wait_for_approval_seconds must be between 0 and "
                f"{MAX_WAIT_FOR_APPROVAL_SECONDS} (got {request.wait_for_approval_seconds})",
                field="wait_for_approval_seconds",
            )
        check_request_id(request.request_id)
        parameters = struct_to_dict(request.parameters)
        check_parameters(parameters)
        call = ToolCall(
            caller=caller_name(request.on_behalf_of),
            tool=tool,
            parameters=parameters,
            request_id=request.request_id,
            dry_run=request.dry_run,
            cycle_id=request.cycle_id,
            invalid_reason=request.invalid_reason,
            via=authenticated_name(),
        )
        decision = await self._gov.validate(call, wait_seconds=request.wait_for_approval_seconds)
        if (
            not request.dry_run
            and not request.invalid_reason
            and decision.outcome is DecisionOutcome.DENIED
        ):
            raise denial_error(tool, decision)
        message = to_proto(decision, governance_pb2.Decision)
        # The current policy's, on every answer (a replayed decision too): the services
        # enforce the seal on the paths they resolve.
        message.sealed_test_datasets.extend(self._gov.policy.document.sealed_test)
        return governance_pb2.ValidateToolRequestResponse(decision=message)

    async def BeginTransaction(
        self, request: governance_pb2.BeginTransactionRequest, context: Any
    ) -> governance_pb2.BeginTransactionResponse:
        check_request_id(request.request_id)
        transaction = await self._gov.begin(
            caller=caller_name(request.on_behalf_of),
            tool=enum_field(request, "tool", Tool),
            paths=list(request.paths),
            request_id=request.request_id,
            timeout_seconds=float(request.timeout_seconds),
        )
        return governance_pb2.BeginTransactionResponse(
            transaction=to_proto(transaction, governance_pb2.Transaction)
        )

    async def CommitTransaction(
        self, request: governance_pb2.CommitTransactionRequest, context: Any
    ) -> governance_pb2.CommitTransactionResponse:
        caller = caller_name()

        async def commit() -> governance_pb2.CommitTransactionResponse:
            transaction = await self._gov.commit(
                request.transaction_id, caller=caller, outcome=request.outcome
            )
            return governance_pb2.CommitTransactionResponse(
                transaction=to_proto(transaction, governance_pb2.Transaction)
            )

        return await self._gov.requests.call(
            caller, "CommitTransaction", request, governance_pb2.CommitTransactionResponse, commit
        )

    async def RollbackTransaction(
        self, request: governance_pb2.RollbackTransactionRequest, context: Any
    ) -> governance_pb2.RollbackTransactionResponse:
        caller = caller_name()

        async def rollback() -> governance_pb2.RollbackTransactionResponse:
            transaction, restored, removed = await self._gov.rollback(
                request.transaction_id, caller=caller, reason=request.reason
            )
            return governance_pb2.RollbackTransactionResponse(
                transaction=to_proto(transaction, governance_pb2.Transaction),
                restored_files=restored,
                removed_files=removed,
            )

        return await self._gov.requests.call(
            caller,
            "RollbackTransaction",
            request,
            governance_pb2.RollbackTransactionResponse,
            rollback,
        )

    async def GetMode(
        self, request: governance_pb2.GetModeRequest, context: Any
    ) -> governance_pb2.GetModeResponse:
        return governance_pb2.GetModeResponse(
            mode=enum_value(governance_pb2.Mode, self._gov.mode),
            policy_version=self._gov.policy.version,
            locked_reason=self._gov.audit_break,
        )

    async def SetMode(
        self, request: governance_pb2.SetModeRequest, context: Any
    ) -> governance_pb2.SetModeResponse:
        mode = enum_field(request, "mode", Mode)
        caller = caller_name()

        async def set_mode() -> governance_pb2.SetModeResponse:
            previous = await self._gov.set_mode(mode, caller=caller, reason=request.reason)
            return governance_pb2.SetModeResponse(
                mode=enum_value(governance_pb2.Mode, mode),
                previous_mode=enum_value(governance_pb2.Mode, previous),
            )

        return await self._gov.requests.call(
            caller, "SetMode", request, governance_pb2.SetModeResponse, set_mode
        )

    async def ListPendingRequests(
        self, request: governance_pb2.ListPendingRequestsRequest, context: Any
    ) -> governance_pb2.ListPendingRequestsResponse:
        offset, limit = page_bounds(request.page_size, request.page_token)
        items, more = await self._gov.list_pending(offset=offset, limit=limit)
        return governance_pb2.ListPendingRequestsResponse(
            pending_requests=[to_proto(p, governance_pb2.PendingRequest) for p in items],
            next_page_token=encode_token(offset + limit) if more else "",
        )

    async def ApproveRequest(
        self, request: governance_pb2.ApproveRequestRequest, context: Any
    ) -> governance_pb2.ApproveRequestResponse:
        return await self._decide(request, governance_pb2.ApproveRequestResponse, approve=True)

    async def RejectRequest(
        self, request: governance_pb2.RejectRequestRequest, context: Any
    ) -> governance_pb2.RejectRequestResponse:
        return await self._decide(request, governance_pb2.RejectRequestResponse, approve=False)

    async def _decide(
        self, request: Any, response_type: type[Decided], *, approve: bool
    ) -> Decided:
        if not request.pending_request_id:
            raise InvalidArgumentError("pending_request_id is required", field="pending_request_id")
        caller = caller_name()

        async def decide() -> Decided:
            pending = await self._gov.decide_pending(
                request.pending_request_id, approve=approve, caller=caller, reason=request.reason
            )
            return response_type(pending_request=to_proto(pending, governance_pb2.PendingRequest))

        rpc = "ApproveRequest" if approve else "RejectRequest"
        return await self._gov.requests.call(caller, rpc, request, response_type, decide)

    async def ListAuditRecords(
        self, request: governance_pb2.ListAuditRecordsRequest, context: Any
    ) -> governance_pb2.ListAuditRecordsResponse:
        offset, limit = page_bounds(request.page_size, request.page_token)
        tool = enum_to_str(governance_pb2.Tool.DESCRIPTOR, request.tool) or ""
        decision = enum_to_str(governance_pb2.DecisionOutcome.DESCRIPTOR, request.decision) or ""
        flt = AuditFilter(
            caller=request.caller,
            tool=tool,
            decision=decision,
            start_time=audit_time(request, "start_time"),
            end_time=audit_time(request, "end_time"),
            newest_first=request.newest_first,
        )
        records, more = await self._gov.log.list(flt, offset=offset, limit=limit)
        return governance_pb2.ListAuditRecordsResponse(
            records=[to_proto(r, governance_pb2.AuditRecord) for r in records],
            next_page_token=encode_token(offset + limit) if more else "",
        )

    async def VerifyAuditLog(
        self, request: governance_pb2.VerifyAuditLogRequest, context: Any
    ) -> governance_pb2.VerifyAuditLogResponse:
        result = await self._gov.log.verify()
        return governance_pb2.VerifyAuditLogResponse(
            ok=result.ok,
            records_checked=result.records_checked,
            first_bad_sequence=result.first_bad_sequence,
            reason=result.reason,
            head_hash=result.head_hash,
        )
