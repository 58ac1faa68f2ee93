"""What a spec needs that only the machines can tell, checked at submit so that a spec
that cannot run is refused before it ever leases a GPU: the GPUs it names exist and are
not reserved (from the probe's last listing, no call), and its dataset has at least two
classes of images (asked of an executor, remembered a while per dataset)."""

from __future__ import annotations

import logging

from arc_common.errors import (
    ArcError,
    DeadlineExceededError,
    FailedPreconditionError,
    UnavailableError,
)
from arc_common.models import ExperimentSpec, GpuPreference
from services.scheduler.context import Clock
from services.scheduler.nodes import Nodes

logger = logging.getLogger(__name__)

DATASET_TTL_SECONDS = 30.0


def check_gpus(nodes: Nodes, spec: ExperimentSpec, *, prefix: str = "") -> None:
    """FAILED_PRECONDITION when no machine that has listed its GPUs could ever place the
    allocation; nothing is said while no machine has listed any."""
    listed = [node for node in nodes.up() if node.gpus]
    if not listed:
        return
    allocation = spec.gpu_allocation
    largest = max(len(node.gpus) for node in listed)
    if allocation.count > largest:
        raise FailedPreconditionError(
            f"gpu_allocation asks for {allocation.count} GPUs; the largest machine has {largest}",
            field=f"{prefix}gpu_allocation.gpu_count",
        )
    if allocation.preference is not GpuPreference.SPECIFIC:
        return
    wanted = set(allocation.gpu_indices)
    for node in listed:
        usable = {gpu.index for gpu in node.gpus if not gpu.reserved}
        if wanted <= usable:
            return
    shown = "; ".join(
        f"{node.name}: "
        + ", ".join(f"{g.index}{' (reserved)' if g.reserved else ''}" for g in node.gpus)
        for node in listed
    )
    raise FailedPreconditionError(
        f"gpu_allocation.gpu_indices {sorted(wanted)} are not all usable GPUs of one "
        f"machine ({shown})",
        field=f"{prefix}gpu_allocation.gpu_indices",
    )


class DatasetCheck:
    """Asks the first machine that answers whether a dataset can be trained on; a
    dataset found good is not asked about again for ``DATASET_TTL_SECONDS``."""

    def __init__(self, nodes: Nodes, clock: Clock) -> None:
        self._nodes = nodes
        self._clock = clock
        self._good: dict[tuple[str, str, str], float] = {}

    async def check(self, spec: ExperimentSpec, sealed: list[str], *, prefix: str = "") -> None:
        dataset, architecture = spec.dataset, spec.architecture
        weights = architecture.variant if architecture.pretrained else ""
        key = (dataset.data_path, dataset.dataset_type.value, weights)
        if self._good.get(key, -1.0) > self._clock():
            return
        for node in self._nodes.up():
            try:
                await node.client.check_dataset(dataset, sealed, architecture)
            except (UnavailableError, DeadlineExceededError) as exc:
                self._nodes.failed(node, exc)
                continue
            except ArcError as exc:
                if exc.field:
                    exc.field = f"{prefix}{exc.field}"
                raise
            if len(self._good) > 10_000:
                self._good.clear()
            self._good[key] = self._clock() + DATASET_TTL_SECONDS
            return
        logger.info("no machine answered: %s is checked when its run starts", dataset.data_path)
