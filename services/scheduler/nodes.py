"""The machines: which are up, their last GPU listing, and the probe that watches them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from arc_common.errors import ArcError
from arc_common.models import Gpu
from services.scheduler.ports import NodeClient

logger = logging.getLogger(__name__)
Clock = Callable[[], float]


@dataclass
class NodeState:
    client: NodeClient
    up: bool = True
    down_since: float = 0.0
    gpus: list[Gpu] = field(default_factory=list)
    gpus_time: float = 0.0

    @property
    def name(self) -> str:
        return self.client.name


def _free(gpu: Gpu) -> bool:
    return not gpu.reserved and not gpu.lease_holder


class Nodes:
    def __init__(self, clients: list[NodeClient], clock: Clock) -> None:
        self._nodes = {client.name: NodeState(client) for client in clients}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self._nodes.values())

    def get(self, name: str) -> NodeState | None:
        return self._nodes.get(name)

    def up(self) -> list[NodeState]:
        return [node for node in self._nodes.values() if node.up]

    def down(self) -> list[str]:
        return [name for name, node in self._nodes.items() if not node.up]

    def failed(self, node: NodeState, exc: Exception) -> None:
        if node.up:
            node.up = False
            node.down_since = self._clock()
            logger.warning("machine %s marked down: %s", node.name, exc)

    def down_longer_than(self, node: NodeState, seconds: float) -> bool:
        return not node.up and self._clock() - node.down_since > seconds

    async def gpus(self, *, max_age: float = 1.0) -> list[Gpu]:
        out: list[Gpu] = []
        for node in self._nodes.values():
            if node.up and self._clock() - node.gpus_time > max_age:
                try:
                    node.gpus = await node.client.list_gpus()
                    node.gpus_time = self._clock()
                except ArcError as exc:  # down until the probe sees it answer again
                    self.failed(node, exc)
            out.extend(node.gpus if node.up else [])
        return out

    def available_gpus(self) -> int:
        """From the last listing (the probe refreshes it every few seconds): answering a
        submission never waits on a machine."""
        return sum(1 for node in self._nodes.values() if node.up for g in node.gpus if _free(g))

    @staticmethod
    def free(gpus: list[Gpu]) -> int:
        return sum(1 for g in gpus if _free(g))

    async def probe(self, interval: float, wake: asyncio.Event) -> None:
        """Forever: list every machine's GPUs; one that answers again is up again."""
        while True:
            await asyncio.sleep(interval)
            for node in self._nodes.values():
                try:
                    node.gpus = await node.client.list_gpus()
                    node.gpus_time = self._clock()
                except ArcError as exc:
                    self.failed(node, exc)
                    continue
                if not node.up:
                    node.up = True
                    logger.info("machine %s is back", node.name)
            wake.set()
