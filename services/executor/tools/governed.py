"""Every tool call: checked by governance, run inside a transaction when it changes files,
committed on success and rolled back on failure. A denied call changes nothing.

The calls are ``arc_common.governance_client``'s; this adds only the executor's rules:
no governance configured refuses every tool, and a SUPERVISED call waits this long for
an operator's approval.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from arc_common.errors import FailedPreconditionError
from arc_common.governance_client import GovernanceClient
from arc_common.models import Decision, Tool


class Governed:
    def __init__(self, client: GovernanceClient | None, *, approval_wait_seconds: int) -> None:
        self._client = client
        self._wait = approval_wait_seconds

    def _require(self) -> GovernanceClient:
        if self._client is None:
            raise FailedPreconditionError(
                "tool calls need governance, and none is configured "
                "(set ARC_EXECUTOR_GOVERNANCE_ADDRESS)"
            )
        return self._client

    async def check(
        self, tool: Tool, parameters: dict[str, Any], *, caller: str, request_id: str
    ) -> Decision:
        """Allowed, or an error: denied, over quota, or still waiting for an operator."""
        return await self._require().check(
            tool,
            parameters,
            caller=caller,
            request_id=request_id,
            wait_for_approval_seconds=self._wait,
        )

    def transaction(
        self, tool: Tool, paths: list[str], *, caller: str, request_id: str
    ) -> AbstractAsyncContextManager[str]:
        """Snapshot ``paths``; commit when the block succeeds, roll back when it raises."""
        return self._require().transaction(tool, paths, caller=caller, request_id=request_id)
