"""Governance: policy decisions, modes, approvals, budgets, transactions, audit. No grpc.

Every decision and every state change lands in the audit log. Decisions on mutating
calls are idempotent per (caller, via, request_id) and bound to the digest of the
parameters they were made for: a retry with the same parameters returns the first decision
(not counted twice against budgets), a retry with others is refused. ``via`` is the
authenticated identity that asked, so a decision an agent asked for itself is never the one
the executor (asking on the agent's behalf) reuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import shutil
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from arc_common import sqlite
from arc_common.digest import params_digest
from arc_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from arc_common.keys import load_key, secrets_dir
from arc_common.models import (
    Decision,
    DecisionOutcome,
    Mode,
    PendingRequest,
    PendingRequestState,
    Tool,
    Transaction,
    TransactionState,
    Violation,
    ViolationKind,
)
from arc_common.paths import resolve_in_root
from arc_common.sqlite import GroupCommit
from services.governance.audit import AuditLog
from services.governance.policy import DEFAULT_POLICY_PATH, Policy, PolicyError
from services.governance.snapshots import has_manifest, restore_snapshot, take_snapshot

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bound_decisions (
    caller TEXT NOT NULL, via TEXT NOT NULL, request_id TEXT NOT NULL, tool TEXT NOT NULL,
    params_digest TEXT NOT NULL, decision TEXT NOT NULL,
    PRIMARY KEY (caller, via, request_id)
);
CREATE TABLE IF NOT EXISTS usage (
    caller TEXT NOT NULL, cycle_id INTEGER NOT NULL, gpu_hours REAL NOT NULL,
    PRIMARY KEY (caller, cycle_id)
);
CREATE TABLE IF NOT EXISTS pending (
    pending_request_id TEXT PRIMARY KEY, caller TEXT NOT NULL, request_id TEXT NOT NULL,
    tool TEXT NOT NULL, parameters TEXT NOT NULL, state TEXT NOT NULL,
    create_time REAL NOT NULL, expire_time REAL NOT NULL, decided_by TEXT NOT NULL,
    reason TEXT NOT NULL, cycle_id INTEGER NOT NULL, gpu_hours REAL NOT NULL,
    params_digest TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pending_state ON pending(state);
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, tool TEXT NOT NULL,
    paths TEXT NOT NULL, state TEXT NOT NULL, caller TEXT NOT NULL,
    create_time REAL NOT NULL, expire_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_state ON transactions(state);
CREATE TABLE IF NOT EXISTS quarantine (
    kind TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, reason TEXT NOT NULL,
    time REAL NOT NULL
);
"""


MAX_TRANSACTION_PATHS = 10_000
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class ToolCall:
    caller: str
    tool: Tool
    parameters: dict[str, Any]
    request_id: str = ""
    dry_run: bool = False
    cycle_id: int = 0
    invalid_reason: str = ""
    # The authenticated identity that asked (a service acting for ``caller``); empty: caller.
    via: str = ""

    @property
    def asked_by(self) -> str:
        return self.via or self.caller


@dataclass(frozen=True)
class GovernanceConfig:
    pending_ttl_seconds: float = 3600.0
    transaction_timeout_seconds: float = 3600.0
    max_transaction_timeout_seconds: float = 86400.0
    max_snapshot_bytes: int = 2 * 1024**3


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# What the budget arithmetic accepts: more is malformed, not merely over budget.
MAX_GPUS = 4096
MAX_TRAINING_SECONDS = 10 * 365 * 86400


class MalformedParameterError(ValueError):
    """A value the budget cannot be computed from (a MALFORMED violation)."""

    def __init__(self, field: str, constraint: str, actual: Any, suggested: str = "") -> None:
        super().__init__(f"{field} {constraint}")
        self.violation = Violation(
            field=field,
            constraint=constraint,
            actual=repr(actual)[:200],
            suggested=suggested,
            kind=ViolationKind.MALFORMED,
        )


def _positive(value: Any, *, field: str, default: float, maximum: float) -> float:
    if value is None or value in (0, ""):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedParameterError(field, "must be a number", value)
    if not math.isfinite(value):
        raise MalformedParameterError(field, "must be finite", value)
    if not 0 < value <= maximum:
        raise MalformedParameterError(field, "must be within bounds", value, f"{maximum:g}")
    return float(value)


def _gpus(parameters: dict[str, Any]) -> float:
    allocation = parameters.get("gpu_allocation") or {}
    if not isinstance(allocation, dict):
        raise MalformedParameterError("gpu_allocation", "must be an object", allocation)
    indices = allocation.get("gpu_indices") or []
    if not isinstance(indices, list):
        raise MalformedParameterError("gpu_allocation.gpu_indices", "must be a list", indices)
    if len(indices) > MAX_GPUS:
        raise MalformedParameterError(
            "gpu_allocation.gpu_indices", "must be within bounds", len(indices), str(MAX_GPUS)
        )
    return len(indices) or _positive(
        allocation.get("gpu_count"), field="gpu_allocation.gpu_count", default=1, maximum=MAX_GPUS
    )


def estimated_gpu_hours(tool: Tool, parameters: dict[str, Any]) -> float:
    """What a training job may cost: its GPUs times its time limit. Raises
    MalformedParameterError for values no budget can be computed from."""
    if tool is not Tool.RUN_TRAINING_JOB:
        return 0.0
    seconds = _positive(
        parameters.get("max_training_time_seconds"),
        field="max_training_time_seconds",
        default=3600,
        maximum=MAX_TRAINING_SECONDS,
    )
    return _gpus(parameters) * seconds / 3600.0


class Governance:
    def __init__(
        self,
        home: Path,
        *,
        config: GovernanceConfig | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.home = home
        self.config = config or GovernanceConfig()
        self._clock = clock
        self._dir = home / "governance"
        self.policy_path = home / "policy.yaml"
        self._db: aiosqlite.Connection | None = None
        self.audit: AuditLog | None = None
        self.policy: Policy = Policy.load(DEFAULT_POLICY_PATH)
        self.mode = Mode.AUTONOMOUS
        self._lock = asyncio.Lock()
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self._decided = asyncio.Condition()
        self._committed = GroupCommit(self._commit)
        # Why governance locked itself (the audit chain broke); empty when it did not.
        self.audit_break = ""
        # Called with the break's reason when it begins, with "" when an operator clears it.
        self.on_audit_break: list[Callable[[str], Awaitable[None]]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("governance is not open")
        return self._db

    @property
    def log(self) -> AuditLog:
        if self.audit is None:
            raise RuntimeError("governance is not open")
        return self.audit

    async def open(self) -> None:
        try:
            await self._open()
        except BaseException:
            await self.close()  # no thread left behind to keep a failed process alive
            raise

    async def _open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / "snapshots").mkdir(exist_ok=True)
        if not self.policy_path.exists():
            shutil.copyfile(DEFAULT_POLICY_PATH, self.policy_path)
            logger.info("wrote the default policy to %s", self.policy_path)
        self.policy = Policy.load(self.policy_path)  # a broken file at startup is fatal
        self._db = await sqlite.connect(self._dir / "governance.sqlite3")
        await self._db.executescript(SCHEMA)
        await self._migrate()
        await self._db.commit()
        self.audit = AuditLog(
            self._dir / "audit.sqlite3",
            self._dir / "audit_anchor.json",
            key=load_key(self.home, "audit"),
            second_anchor=secrets_dir(self.home) / "audit_anchor.json",
            legacy=self._dir / "governance.sqlite3",
        )
        await self.audit.open()
        async with self._db.execute("SELECT value FROM state WHERE key = 'mode'") as cursor:
            row = await cursor.fetchone()
        stored = str(row[0]) if row else Mode.AUTONOMOUS.value
        try:
            self.mode = Mode(stored)
        except ValueError:
            logger.error("stored mode %r is not a mode: governance starts LOCKED", stored)
            await self._store_mode(Mode.LOCKED, caller="governance", reason=f"bad mode {stored!r}")
        async with self._db.execute("SELECT value FROM state WHERE key = 'audit_break'") as cursor:
            row = await cursor.fetchone()
        self.audit_break = str(row[0]) if row else ""  # not yet acknowledged by an operator
        if self.audit.break_reason:
            await self._enter_audit_break(self.audit.break_reason)
        await self.check_audit()
        recovered = await self.recover_transactions(startup=True)
        logger.info(
            "governance ready: mode %s, policy %s, %d open transactions rolled back",
            self.mode.value,
            self.policy.version,
            recovered,
        )

    async def _migrate(self) -> None:
        """Databases made before approvals were bound to their parameters' digest. Their
        unbound decisions (table ``decisions``) are kept but never replayed."""
        async with self.db.execute("PRAGMA table_info(pending)") as cursor:
            columns = [str(row[1]) async for row in cursor]
        if "params_digest" not in columns:
            await self.db.execute(
                "ALTER TABLE pending ADD COLUMN params_digest TEXT NOT NULL DEFAULT ''"
            )

    async def close(self) -> None:
        try:
            if self.audit is not None:
                await self.audit.close()
                self.audit = None
        finally:
            if self._db is not None:
                await self._db.close()
                self._db = None

    # --- policy --------------------------------------------------------------------------

    async def reload_policy(self, *, caller: str = "operator") -> Policy:
        """Load the policy file again; a broken file is refused and the old policy stays."""
        try:
            policy = Policy.load(self.policy_path)
        except (PolicyError, OSError) as exc:
            await self.log.append(
                caller=caller,
                action="reload_policy",
                outcome="refused",
                policy_version=self.policy.version,
                detail=str(exc),
            )
            logger.error("policy reload refused, keeping %s: %s", self.policy.version, exc)
            raise InvalidArgumentError(f"policy refused: {exc}", field="policy") from exc
        previous = self.policy.version
        self.policy = policy
        await self.log.append(
            caller=caller,
            action="reload_policy",
            outcome="reloaded",
            policy_version=policy.version,
            detail=f"previous {previous}",
        )
        logger.info("policy reloaded: %s (was %s)", policy.version, previous)
        return policy

    # --- decisions -------------------------------------------------------------------------

    async def validate(self, call: ToolCall, *, wait_seconds: float = 0.0) -> Decision:
        if call.invalid_reason:
            return await self._record_invalid(call)
        digest = params_digest(call.parameters)
        # LOCKED refuses even a replay of an earlier ALLOWED decision.
        if not call.dry_run and call.request_id and self.mode is not Mode.LOCKED:
            earlier = await self._earlier_decision(call, digest)
            if earlier is not None:
                return await self._maybe_wait(call, earlier, digest, wait_seconds)
        if call.dry_run:  # counts nothing: no lock, and its audit shares group commits
            with self.log.expecting():
                decision = await self._decide(call, digest)
            await self.log.durable()
            return decision
        with self.log.expecting():
            async with self._lock:
                if call.request_id and self.mode is not Mode.LOCKED:
                    earlier = await self._earlier_decision(call, digest)
                    if earlier is not None:
                        return earlier
                decision = await self._decide(call, digest)
        # Outside the lock: the next decision may go ahead (it sees this one's uncommitted
        # rows on the same connection) while this one waits for its group's commit.
        await self._committed.wait()
        return await self._maybe_wait(call, decision, digest, wait_seconds)

    async def _record_invalid(self, call: ToolCall) -> Decision:
        """A call another service refused as malformed: audited as a denial."""
        reason = call.invalid_reason[:2000]
        record = await self.log.append(
            caller=call.caller,
            action="invalid_request",
            tool=call.tool,
            parameters=call.parameters,
            decision=DecisionOutcome.DENIED,
            outcome=f"invalid: {reason}",
            policy_version=self.policy.version,
            detail=f"request_id={call.request_id}",
        )
        return Decision(
            outcome=DecisionOutcome.DENIED,
            allowed=False,
            policy_version=self.policy.version,
            reason=f"invalid request: {reason}",
            audit_sequence=record.sequence,
        )

    async def _earlier_decision(self, call: ToolCall, digest: str) -> Decision | None:
        """The decision taken earlier under this id for these very parameters (a replay,
        audited with their digest), None if there is none; refused (audited) if it was
        taken for other parameters or another tool."""
        async with self.db.execute(
            "SELECT tool, params_digest, decision FROM bound_decisions "
            "WHERE caller = ? AND via = ? AND request_id = ?",
            (call.caller, call.asked_by, call.request_id),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        tool, bound_digest, raw = str(row[0]), str(row[1]), str(row[2])
        decision = Decision.model_validate_json(raw)
        if tool != call.tool.value or not hmac.compare_digest(bound_digest, digest):
            await self.log.append(
                caller=call.caller,
                action="validate_refused",
                tool=call.tool,
                parameters=call.parameters,
                decision=DecisionOutcome.DENIED,
                outcome="request_id reused with other parameters",
                policy_version=self.policy.version,
                detail=f"request_id={call.request_id}; via={call.asked_by}; decided for "
                f"{tool} {bound_digest} at audit record {decision.audit_sequence}",
            )
            raise FailedPreconditionError(
                f"request_id {call.request_id!r} was already decided for other parameters "
                f"(audit record {decision.audit_sequence}); a new call needs a new request_id",
                field="request_id",
            )
        if decision.pending_request_id:
            decision = await self._decision_for_pending(decision, digest)
        # The replay is on record; the answer stays the first one (same audit_sequence).
        await self.log.append(
            caller=call.caller,
            action="validate_replay",
            tool=call.tool,
            parameters=call.parameters,
            decision=decision.outcome,
            outcome=decision.reason[:2000],
            policy_version=self.policy.version,
            detail=f"request_id={call.request_id}; via={call.asked_by}; first decided at "
            f"audit record {decision.audit_sequence}",
        )
        return decision

    async def _decision_for_pending(self, decision: Decision, digest: str) -> Decision:
        row = await self._pending_row(decision.pending_request_id)
        pending = self._pending_from_row(row)
        if not hmac.compare_digest(str(row[12]), digest):
            # Defence in depth: an approval covers only the parameters it was shown.
            return decision.model_copy(
                update={
                    "outcome": DecisionOutcome.DENIED,
                    "allowed": False,
                    "reason": "the approval was given for other parameters",
                }
            )
        if pending.state is PendingRequestState.PENDING:
            return decision
        allowed = pending.state is PendingRequestState.APPROVED
        return decision.model_copy(
            update={
                "outcome": DecisionOutcome.ALLOWED if allowed else DecisionOutcome.DENIED,
                "allowed": allowed,
                "reason": f"{pending.state.value if pending.state else ''} by "
                f"{pending.decided_by or 'expiry'}: {pending.reason}".strip(),
            }
        )

    async def _maybe_wait(
        self, call: ToolCall, decision: Decision, digest: str, wait_seconds: float
    ) -> Decision:
        if decision.outcome is not DecisionOutcome.PENDING_APPROVAL or wait_seconds <= 0:
            return decision
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            current = await self._decision_for_pending(decision, digest)
            if current.outcome is not DecisionOutcome.PENDING_APPROVAL:
                return current
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return current
            async with self._decided:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._decided.wait(), timeout=min(remaining, 1.0))

    def _rate_ok(self, caller: str, limit: int, *, count: bool) -> bool:
        window = self._calls[caller]
        now = self._clock()
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            return False
        if count:
            window.append(now)
        return True

    async def _used_gpu_hours(self, caller: str, cycle_id: int) -> float:
        async with self.db.execute(
            "SELECT gpu_hours FROM usage WHERE caller = ? AND cycle_id = ?", (caller, cycle_id)
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row else 0.0

    async def _open_jobs(self, caller: str) -> int:
        async with self.db.execute(
            "SELECT COUNT(*) FROM transactions WHERE caller = ? AND tool = ? AND state = ?",
            (caller, Tool.RUN_TRAINING_JOB.value, TransactionState.OPEN.value),
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _decide(self, call: ToolCall, digest: str) -> Decision:
        policy = self.policy
        limits = policy.limits(call.caller)
        violations = [
            Violation(
                field=v.field,
                constraint=v.constraint,
                actual=v.actual,
                suggested=v.suggested,
                kind=v.kind,
            )
            for v in policy.evaluate(call.tool, call.parameters)
        ]
        try:
            hours = estimated_gpu_hours(call.tool, call.parameters)
        except MalformedParameterError as exc:
            hours = 0.0
            if all(v.field != exc.violation.field for v in violations):
                violations.append(exc.violation)
        if hours:
            used = await self._used_gpu_hours(call.caller, call.cycle_id)
            if used + hours > limits.gpu_hours_per_cycle + 1e-9:
                left = max(0.0, limits.gpu_hours_per_cycle - used)
                seconds_left = int(left * 3600 / _gpus(call.parameters))
                violations.append(
                    Violation(
                        field="max_training_time_seconds",
                        constraint=f"GPU-hour budget of cycle {call.cycle_id}: "
                        f"{limits.gpu_hours_per_cycle:g} h for {call.caller}, "
                        f"{used:.2f} h used",
                        actual=f"{hours:.2f} GPU-hours",
                        suggested=str(seconds_left) if seconds_left >= 1 else "",
                        kind=ViolationKind.BUDGET,
                    )
                )
            running = await self._open_jobs(call.caller)
            if running >= limits.max_concurrent_jobs:
                violations.append(
                    Violation(
                        field="concurrent_jobs",
                        constraint=f"at most {limits.max_concurrent_jobs} running jobs",
                        actual=str(running),
                        suggested="wait for a running job to finish",
                        kind=ViolationKind.QUOTA,
                    )
                )
        if not self._rate_ok(call.caller, limits.calls_per_minute, count=not call.dry_run):
            violations.append(
                Violation(
                    field="rate",
                    constraint=f"at most {limits.calls_per_minute} calls per minute",
                    actual=f"{limits.calls_per_minute}+ calls in the last minute",
                    suggested="retry in a minute",
                    kind=ViolationKind.QUOTA,
                )
            )
        locked = self.mode is Mode.LOCKED
        if violations or locked:
            reason = (
                "governance is LOCKED: every mutating call is denied"
                if locked
                else f"{len(violations)} policy violation(s)"
            )
            decision = Decision(
                outcome=DecisionOutcome.DENIED,
                allowed=False,
                violations=violations,
                policy_version=policy.version,
                reason=reason,
            )
        elif self.mode is Mode.SUPERVISED:
            decision = Decision(
                outcome=DecisionOutcome.PENDING_APPROVAL,
                allowed=False,
                requires_approval=True,
                policy_version=policy.version,
                reason="SUPERVISED mode: waiting for an operator to approve",
            )
        else:
            decision = Decision(
                outcome=DecisionOutcome.ALLOWED,
                allowed=True,
                policy_version=policy.version,
                reason="allowed by policy",
            )
        if call.dry_run:  # the caller waits for its record to be durable
            record = self.log.append_nowait(
                caller=call.caller,
                action="validate_dry_run",
                tool=call.tool,
                parameters=call.parameters,
                decision=decision.outcome,
                outcome="checked",
                policy_version=policy.version,
                detail=decision.reason,
            )
            return decision.model_copy(update={"audit_sequence": record.sequence})
        if decision.outcome is DecisionOutcome.PENDING_APPROVAL:
            pending_id = uuid.uuid4().hex
            now = self._clock()
            await self.db.execute(
                "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, ?, ?)",
                (
                    pending_id,
                    call.caller,
                    call.request_id,
                    call.tool.value,
                    json.dumps(call.parameters, default=str),
                    PendingRequestState.PENDING.value,
                    now,
                    now + self.config.pending_ttl_seconds,
                    call.cycle_id,
                    hours,
                    digest,
                ),
            )
            decision = decision.model_copy(update={"pending_request_id": pending_id})
        elif decision.allowed and hours:
            await self._charge(call.caller, call.cycle_id, hours)
        record = self.log.append_nowait(  # committed with the decision, out of the lock
            caller=call.caller,
            action="validate",
            tool=call.tool,
            parameters=call.parameters,
            decision=decision.outcome,
            outcome="; ".join(f"{v.field}: {v.constraint}" for v in violations)[:2000]
            or decision.reason,
            policy_version=policy.version,
            detail=f"request_id={call.request_id}; via={call.asked_by}",
        )
        decision = decision.model_copy(update={"audit_sequence": record.sequence})
        # A LOCKED denial is not bound to the id: once unlocked, the call is decided afresh.
        if call.request_id and not locked:
            await self.db.execute(
                "INSERT OR REPLACE INTO bound_decisions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    call.caller,
                    call.asked_by,
                    call.request_id,
                    call.tool.value,
                    digest,
                    decision.model_dump_json(),
                ),
            )
        return decision

    async def _commit(self) -> None:
        """Audit first, then the decisions, budgets and approvals that rest on it: a
        decision never reaches the disk without its record: no await between the check that
        every record is durable and queueing the commit, so every row it commits was
        written after its record was on disk."""
        while not self.log.is_durable():
            await self.log.durable()
        await self.db.commit()

    async def _charge(self, caller: str, cycle_id: int, hours: float) -> None:
        await self.db.execute(
            "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT(caller, cycle_id) "
            "DO UPDATE SET gpu_hours = gpu_hours + excluded.gpu_hours",
            (caller, cycle_id, hours),
        )

    # --- the audit chain ---------------------------------------------------------------------

    async def check_audit(self) -> None:
        """Verify the records added since the last check (at start and on a timer); a
        break locks governance until an operator acts."""
        result = await self.log.verify_new()
        if not result.ok:
            await self._enter_audit_break(f"record {result.first_bad_sequence}: {result.reason}")

    async def _enter_audit_break(self, reason: str) -> None:
        if self.audit_break:
            return  # already locked for a break nobody acknowledged yet
        logger.error("audit chain broken, governance LOCKED: %s", reason)
        async with self._lock:
            self.audit_break = reason[:2000]
            await self.db.execute(
                "INSERT OR REPLACE INTO state VALUES ('audit_break', ?)", (self.audit_break,)
            )
            await self._store_mode(Mode.LOCKED, caller="governance", reason=f"audit: {reason}")
            await self.log.append(
                caller="governance",
                action="audit_break",
                outcome="locked",
                policy_version=self.policy.version,
                detail=self.audit_break,
            )
        for hook in self.on_audit_break:
            await hook(self.audit_break)

    # --- modes and approvals -----------------------------------------------------------------

    async def _store_mode(self, mode: Mode, *, caller: str, reason: str) -> Mode:
        previous = self.mode
        await self.db.execute("INSERT OR REPLACE INTO state VALUES ('mode', ?)", (mode.value,))
        await self.db.commit()
        self.mode = mode
        await self.log.append(
            caller=caller,
            action="set_mode",
            outcome=f"{previous.value} -> {mode.value}",
            policy_version=self.policy.version,
            detail=reason,
        )
        logger.warning("governance mode %s -> %s by %s", previous.value, mode.value, caller)
        return previous

    async def set_mode(self, mode: Mode, *, caller: str, reason: str = "") -> Mode:
        """An operator's choice; it also acknowledges an audit break (recorded), after
        which verification goes on from the current head."""
        async with self._lock:
            previous = await self._store_mode(mode, caller=caller, reason=reason)
            cleared = self.audit_break
            if cleared:
                await self.db.execute("DELETE FROM state WHERE key = 'audit_break'")
                await self.db.commit()
                self.audit_break = ""
                await self.log.append(
                    caller=caller,
                    action="audit_break_cleared",
                    outcome=f"acknowledged; mode {mode.value}",
                    policy_version=self.policy.version,
                    detail=f"{cleared}; {reason}",
                )
                await self.log.accept_head()
        if cleared:
            for hook in self.on_audit_break:
                await hook("")
        return previous

    def _pending_from_row(self, row: Any) -> PendingRequest:
        return PendingRequest(
            pending_request_id=row[0],
            caller=row[1],
            tool=Tool(row[3]),
            parameters=json.loads(row[4]),
            state=PendingRequestState(row[5]),
            create_time=_when(row[6]),
            expire_time=_when(row[7]),
            decided_by=row[8],
            reason=row[9],
        )

    async def _pending_row(self, pending_request_id: str) -> Any:
        """The stored row (with the cycle and GPU-hours an approval charges)."""
        async with self.db.execute(
            "SELECT * FROM pending WHERE pending_request_id = ?", (pending_request_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(
                f"no pending request {pending_request_id!r}", field="pending_request_id"
            )
        return row

    async def get_pending(self, pending_request_id: str) -> PendingRequest:
        return self._pending_from_row(await self._pending_row(pending_request_id))

    async def list_pending(self, *, offset: int, limit: int) -> tuple[list[PendingRequest], bool]:
        await self.expire_pending()
        async with self.db.execute(
            "SELECT * FROM pending WHERE state = ? ORDER BY create_time LIMIT ? OFFSET ?",
            (PendingRequestState.PENDING.value, limit + 1, offset),
        ) as cursor:
            rows = [self._pending_from_row(r) async for r in cursor]
        return rows[:limit], len(rows) > limit

    async def decide_pending(
        self, pending_request_id: str, *, approve: bool, caller: str, reason: str
    ) -> PendingRequest:
        await self.expire_pending()
        async with self._lock:
            row = await self._pending_row(pending_request_id)
            pending = self._pending_from_row(row)
            state = PendingRequestState.APPROVED if approve else PendingRequestState.REJECTED
            if pending.state is state:
                return pending  # a retried approval is not an error
            if pending.state is not PendingRequestState.PENDING:
                raise FailedPreconditionError(
                    f"pending request {pending_request_id} is already "
                    f"{pending.state.value if pending.state else 'decided'}",
                    field="pending_request_id",
                )
            if approve and row[11]:
                await self._charge(pending.caller, int(row[10]), float(row[11]))
            await self.db.execute(
                "UPDATE pending SET state = ?, decided_by = ?, reason = ? "
                "WHERE pending_request_id = ?",
                (state.value, caller, reason, pending_request_id),
            )
            await self.db.commit()
            await self.log.append(
                caller=caller,
                action="approve" if approve else "reject",
                tool=pending.tool,
                parameters=pending.parameters,
                decision=DecisionOutcome.ALLOWED if approve else DecisionOutcome.DENIED,
                outcome=state.value,
                policy_version=self.policy.version,
                detail=f"pending {pending_request_id} of {pending.caller}: {reason}",
            )
        async with self._decided:
            self._decided.notify_all()
        return await self.get_pending(pending_request_id)

    async def expire_pending(self) -> int:
        now = self._clock()
        async with self._lock:
            async with self.db.execute(
                "SELECT * FROM pending WHERE state = ? AND expire_time <= ?",
                (PendingRequestState.PENDING.value, now),
            ) as cursor:
                rows = [self._pending_from_row(r) async for r in cursor]
            for pending in rows:
                await self.db.execute(
                    "UPDATE pending SET state = ?, reason = ? WHERE pending_request_id = ?",
                    (
                        PendingRequestState.EXPIRED.value,
                        "no operator decision in time",
                        pending.pending_request_id,
                    ),
                )
                await self.log.append(
                    caller="governance",
                    action="expire_pending",
                    tool=pending.tool,
                    parameters=pending.parameters,
                    decision=DecisionOutcome.DENIED,
                    outcome="expired",
                    policy_version=self.policy.version,
                    detail=f"pending {pending.pending_request_id} of {pending.caller}",
                )
            await self.db.commit()
        if rows:
            async with self._decided:
                self._decided.notify_all()
        return len(rows)

    # --- transactions ----------------------------------------------------------------------

    def _snapshot_dir(self, transaction_id: str) -> Path:
        return self._dir / "snapshots" / transaction_id

    def _txn_from_row(self, row: Any) -> Transaction:
        return Transaction(
            transaction_id=row[0],
            tool=Tool(row[2]),
            paths=json.loads(row[3]),
            state=TransactionState(row[4]),
            caller=row[5],
            create_time=_when(row[6]),
            expire_time=_when(row[7]),
        )

    async def get_transaction(self, transaction_id: str) -> Transaction:
        async with self.db.execute(
            "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise NotFoundError(f"no transaction {transaction_id!r}", field="transaction_id")
        return self._txn_from_row(row)

    async def begin(
        self,
        *,
        caller: str,
        tool: Tool,
        paths: list[str],
        request_id: str = "",
        timeout_seconds: float = 0.0,
    ) -> Transaction:
        if self.mode is Mode.LOCKED:
            raise PermissionDeniedError("governance is LOCKED: no transaction may begin")
        if not paths:
            raise InvalidArgumentError("paths must name at least one path", field="paths")
        longest = self.config.max_transaction_timeout_seconds
        if not 0 <= timeout_seconds <= longest:
            raise InvalidArgumentError(
                f"timeout_seconds must be between 0 and {longest:g} (got {timeout_seconds:g})",
                field="timeout_seconds",
            )
        if len(paths) > MAX_TRANSACTION_PATHS:
            raise InvalidArgumentError(
                f"paths may name at most {MAX_TRANSACTION_PATHS} paths (got {len(paths)})",
                field="paths",
            )
        checked: list[str] = []
        for index, rel in enumerate(paths):
            resolved = resolve_in_root(self.home, rel, field=f"paths[{index}]")
            if resolved.is_relative_to(self._dir.resolve()) or resolved == self.home.resolve():
                raise InvalidArgumentError(
                    f"paths[{index}] may not cover governance's own state: {rel!r}",
                    field=f"paths[{index}]",
                )
            checked.append(str(resolved.relative_to(self.home.resolve())))
        if request_id:
            # A retry whose reply was lost gets the open transaction back; one that
            # finished is never handed out again (a tool would write outside it): the
            # retry gets a new transaction with a new snapshot.
            async with self.db.execute(
                "SELECT * FROM transactions WHERE request_id = ? AND caller = ? AND state = ?",
                (request_id, caller, TransactionState.OPEN.value),
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                return self._txn_from_row(row)
        transaction_id = uuid.uuid4().hex
        snapshot_dir = self._snapshot_dir(transaction_id)
        await asyncio.to_thread(
            take_snapshot,
            self.home.resolve(),
            checked,
            snapshot_dir,
            max_bytes=self.config.max_snapshot_bytes,
        )
        now = self._clock()
        timeout = timeout_seconds or self.config.transaction_timeout_seconds
        await self.db.execute(
            "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                transaction_id,
                request_id,
                tool.value,
                json.dumps(checked),
                TransactionState.OPEN.value,
                caller,
                now,
                now + timeout,
            ),
        )
        await self.db.commit()
        await self.log.append(
            caller=caller,
            action="begin_transaction",
            tool=tool,
            parameters={"paths": checked},
            outcome="open",
            policy_version=self.policy.version,
            detail=f"transaction {transaction_id}",
        )
        return await self.get_transaction(transaction_id)

    async def _finish(
        self, transaction_id: str, state: TransactionState, *, caller: str, detail: str
    ) -> tuple[Transaction, int, int]:
        transaction = await self.get_transaction(transaction_id)
        if transaction.state is state:
            return transaction, 0, 0  # retried: same answer
        if transaction.state is not TransactionState.OPEN:
            raise FailedPreconditionError(
                f"transaction {transaction_id} is already "
                f"{transaction.state.value if transaction.state else 'closed'}",
                field="transaction_id",
            )
        restored = removed = 0
        snapshot_dir = self._snapshot_dir(transaction_id)
        if state is TransactionState.ROLLED_BACK and has_manifest(snapshot_dir):
            counts = await asyncio.to_thread(restore_snapshot, self.home.resolve(), snapshot_dir)
            restored, removed = counts.restored, counts.removed
        await self.db.execute(
            "UPDATE transactions SET state = ? WHERE transaction_id = ?",
            (state.value, transaction_id),
        )
        await self.db.commit()
        await asyncio.to_thread(shutil.rmtree, snapshot_dir, True)
        await self.log.append(
            caller=caller,
            action="commit_transaction"
            if state is TransactionState.COMMITTED
            else "rollback_transaction",
            tool=transaction.tool,
            parameters={"paths": transaction.paths},
            outcome=state.value,
            policy_version=self.policy.version,
            detail=f"transaction {transaction_id}; restored {restored}, removed {removed}; "
            f"{detail}",
        )
        return await self.get_transaction(transaction_id), restored, removed

    async def commit(self, transaction_id: str, *, caller: str, outcome: str = "") -> Transaction:
        async with self._lock:
            transaction, _, _ = await self._finish(
                transaction_id, TransactionState.COMMITTED, caller=caller, detail=outcome
            )
        return transaction

    async def rollback(
        self, transaction_id: str, *, caller: str, reason: str = ""
    ) -> tuple[Transaction, int, int]:
        async with self._lock:
            return await self._finish(
                transaction_id, TransactionState.ROLLED_BACK, caller=caller, detail=reason
            )

    async def _quarantine_transaction(self, transaction_id: str, exc: Exception) -> None:
        """Move a transaction that cannot be rolled back out of the way: its row to the
        quarantine table, its snapshot to governance/quarantine/ for an operator."""
        async with self.db.execute(
            "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
        ) as cursor:
            row = await cursor.fetchone()
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        await self.db.execute(
            "INSERT INTO quarantine VALUES ('transaction', ?, ?, ?, ?)",
            (transaction_id, json.dumps(list(row or ()), default=str), reason, self._clock()),
        )
        await self.db.execute(
            "DELETE FROM transactions WHERE transaction_id = ?", (transaction_id,)
        )
        await self.db.commit()
        snapshot = self._snapshot_dir(transaction_id)
        kept = self._dir / QUARANTINE_DIR / transaction_id
        if snapshot.exists():
            kept.parent.mkdir(exist_ok=True)
            await asyncio.to_thread(shutil.move, snapshot, kept)
        await self.log.append(
            caller="governance",
            action="quarantine_transaction",
            outcome="quarantined",
            policy_version=self.policy.version,
            detail=f"transaction {transaction_id}: {reason}; snapshot kept in {kept}",
        )
        logger.error(
            "transaction %s quarantined (%s); snapshot in %s", transaction_id, reason, kept
        )

    async def recover_transactions(self, *, startup: bool = False) -> int:
        """Roll back transactions whose holder died: all open ones at startup, else expired."""
        now = self._clock()
        query = "SELECT transaction_id FROM transactions WHERE state = ?"
        args: tuple[Any, ...] = (TransactionState.OPEN.value,)
        if not startup:
            query += " AND expire_time <= ?"
            args = (*args, now)
        async with self.db.execute(query, args) as cursor:
            ids = [row[0] async for row in cursor]
        for transaction_id in ids:
            reason = "governance restarted" if startup else "holder timed out"
            try:
                await self.rollback(transaction_id, caller="governance", reason=reason)
            except Exception as exc:  # a bad row must not stop the service or the others
                await self._quarantine_transaction(transaction_id, exc)
                continue
            logger.warning("transaction %s rolled back: %s", transaction_id, reason)
        if startup:
            # Nothing is open now: what is left are snapshots of transactions that never got
            # recorded (crash mid-begin) or were closed just before a crash.
            for path in (self._dir / "snapshots").iterdir():
                shutil.rmtree(path, ignore_errors=True)
        return len(ids)
