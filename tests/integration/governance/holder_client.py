"""A transaction holder that dies: begins a transaction, half-changes a file, then waits
to be killed (used by the integration tests)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel


async def main(port: int, home: Path, rel: str) -> None:
    token = TokenStore.load(home).token_for(Role.SERVICE)
    async with create_channel(f"127.0.0.1:{port}", token=token) as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        reply = await stub.BeginTransaction(
            governance_pb2.BeginTransactionRequest(
                tool=governance_pb2.TOOL_MANAGE_CHECKPOINTS, paths=[rel], timeout_seconds=2
            )
        )
        (home / rel / "a.txt").write_text("half-written by a dying holder")
        (home / rel / "new.txt").write_text("created by a dying holder")
        print(reply.transaction.transaction_id, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
