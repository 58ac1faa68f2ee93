"""Governance: policy decisions, modes, approvals, budgets, transactions, audit. No grpc.

Every decision and every state change lands in the audit log. ``Governance`` composes the
parts, each in its own module: the store, the budgets, the mode, the approvals, the
transactions and the validator, over one lock (decisions, approvals and transactions are
serialised against each other) and the audit log it is given.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from arc_common.errors import InvalidArgumentError
from arc_common.ledger import RequestLedger
from arc_common.models import Decision, Mode, PendingRequest, Tool, Transaction
from services.governance.approvals import Approvals
from services.governance.audit import AuditLog
from services.governance.budgets import Budgets
from services.governance.mode import AuditBreakHook, Modes
from services.governance.policy import DEFAULT_POLICY_PATH, Policy, PolicyError
from services.governance.store import GovernanceStore
from services.governance.transactions import TransactionLimits, Transactions
from services.governance.validation import ToolCall, Validator

__all__ = ["Governance", "GovernanceConfig", "ToolCall"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class GovernanceConfig:
    pending_ttl_seconds: float = 3600.0
    transactions: TransactionLimits = field(default_factory=TransactionLimits)


class Governance:
    def __init__(
        self,
        home: Path,
        *,
        config: GovernanceConfig | None = None,
        clock: Clock = time.time,
        audit: AuditLog | None = None,
    ) -> None:
        """``audit``: the log every decision lands in; by default the workspace's own."""
        self.home = home
        self.config = config = config or GovernanceConfig()
        self._dir = home / "governance"
        self.policy_path = home / "policy.yaml"
        self.policy: Policy = Policy.load(DEFAULT_POLICY_PATH)
        self.log = log = audit if audit is not None else AuditLog.for_workspace(home)

        async def audit_first() -> None:
            """No await between the check that every record is durable and queueing the
            commit: every row queued before it belongs to a record already on disk."""
            while not log.is_durable():
                await log.durable()

        self.store = GovernanceStore(self._dir / "governance.sqlite3", before_commit=audit_first)
        lock = asyncio.Lock()

        def version() -> str:
            return self.policy.version

        self.budgets = Budgets(self.store, clock)
        self.modes = Modes(self.store, self.log, lock, version)
        self.approvals = Approvals(
            self.store,
            self.log,
            lock,
            self.budgets,
            clock=clock,
            policy_version=version,
            ttl_seconds=config.pending_ttl_seconds,
        )
        self.transactions = Transactions(
            home,
            self._dir,
            self.store,
            self.log,
            lock=lock,
            modes=self.modes,
            clock=clock,
            policy_version=version,
            limits=config.transactions,
        )
        self._validator = Validator(
            self.store,
            self.log,
            lock,
            budgets=self.budgets,
            approvals=self.approvals,
            modes=self.modes,
            policy=lambda: self.policy,
        )
        self._requests: RequestLedger | None = None

    # --- lifecycle ---------------------------------------------------------------------------

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
        await self.store.open()
        # Its commits wait for the audit too: they commit whatever else is on the connection.
        self._requests = RequestLedger(
            self.store.db, table="request_ledger", commit=self.store.commit
        )
        await self._requests.open()
        await self.log.open()
        await self.modes.load()
        recovered = await self.transactions.recover(startup=True)
        logger.info(
            "governance ready: mode %s, policy %s, %d open transactions rolled back",
            self.mode.value,
            self.policy.version,
            recovered,
        )

    async def close(self) -> None:
        try:
            await self.log.close()
        finally:
            await self.store.close()

    # --- what the servicer and the timers see ----------------------------------------------

    @property
    def requests(self) -> RequestLedger:
        """Mutating RPCs by request id (a replay gets the first answer), in the store."""
        if self._requests is None:
            raise RuntimeError("governance is not open")
        return self._requests

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    @property
    def audit_break(self) -> str:
        return self.modes.audit_break

    @property
    def on_audit_break(self) -> list[AuditBreakHook]:
        return self.modes.on_audit_break

    async def validate(self, call: ToolCall, *, wait_seconds: float = 0.0) -> Decision:
        return await self._validator.validate(call, wait_seconds=wait_seconds)

    async def set_mode(self, mode: Mode, *, caller: str, reason: str = "") -> Mode:
        return await self.modes.set(mode, caller=caller, reason=reason)

    async def check_audit(self) -> None:
        await self.modes.check_audit()

    async def get_pending(self, pending_request_id: str) -> PendingRequest:
        return await self.approvals.get(pending_request_id)

    async def list_pending(self, *, offset: int, limit: int) -> tuple[list[PendingRequest], bool]:
        return await self.approvals.list(offset=offset, limit=limit)

    async def decide_pending(
        self, pending_request_id: str, *, approve: bool, caller: str, reason: str
    ) -> PendingRequest:
        return await self.approvals.decide(
            pending_request_id, approve=approve, caller=caller, reason=reason
        )

    async def expire_pending(self) -> int:
        return await self.approvals.expire()

    async def get_transaction(self, transaction_id: str) -> Transaction:
        return await self.transactions.get(transaction_id)

    async def begin(
        self,
        *,
        caller: str,
        tool: Tool,
        paths: list[str],
        request_id: str = "",
        timeout_seconds: float = 0.0,
    ) -> Transaction:
        return await self.transactions.begin(
            caller=caller,
            tool=tool,
            paths=paths,
            request_id=request_id,
            timeout_seconds=timeout_seconds,
        )

    async def commit(self, transaction_id: str, *, caller: str, outcome: str = "") -> Transaction:
        return await self.transactions.commit(transaction_id, caller=caller, outcome=outcome)

    async def rollback(
        self, transaction_id: str, *, caller: str, reason: str = ""
    ) -> tuple[Transaction, int, int]:
        return await self.transactions.rollback(transaction_id, caller=caller, reason=reason)

    async def recover_transactions(self, *, startup: bool = False) -> int:
        return await self.transactions.recover(startup=startup)

    # --- policy ------------------------------------------------------------------------------

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
