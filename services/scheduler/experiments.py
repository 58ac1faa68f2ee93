"""Creating experiments, the request ids of the calls whose answer is not a job, and the
``experiments/<id>/spec.json`` copies for people and tools (the database is the truth)."""

from __future__ import annotations

import os
from pathlib import Path

from arc_common.batch import Batcher
from arc_common.errors import AlreadyExistsError
from arc_common.models import Decision, ExperimentSpec
from services.scheduler.admission import check_length, check_not_a_trial_id, reused
from services.scheduler.checks import GovernanceGate
from services.scheduler.context import Context
from services.scheduler.jobs import content_hash
from services.scheduler.lifecycle import now
from services.scheduler.store import Requests, Write


class RequestBook:
    """(caller, method, request id) -> (body digest, what it made), for CreateExperiment
    and CancelJob; kept in the store's ``requests`` table."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._requests: Requests = {}

    def load(self, requests: Requests) -> None:
        self._requests = requests

    def replayed(self, caller: str, method: str, request_id: str, digest: str) -> str | None:
        """What an earlier request of this caller under ``request_id`` made, or None; the
        id with another body is ALREADY_EXISTS."""
        if not request_id:
            return None
        earlier = self._requests.get((caller, method, request_id))
        if earlier is None:
            return None
        if earlier[0] != digest:
            raise reused("request_id", request_id, f"{method} of {earlier[1]}")
        return earlier[1]

    def record(
        self, caller: str, method: str, request_id: str, digest: str, target: str
    ) -> list[Write]:
        """Reserve the id in memory; the returned writes commit it with the change."""
        if not request_id:
            return []
        self._requests[(caller, method, request_id)] = (digest, target)
        return [self._ctx.store.put_request(caller, method, request_id, digest, target)]

    def forget(self, caller: str, method: str, request_id: str) -> None:
        self._requests.pop((caller, method, request_id), None)


def write_spec_files(home: Path, specs: list[ExperimentSpec]) -> None:
    root = os.path.join(home, "experiments")  # plain os calls: this thread holds the
    for spec in specs:  # GIL the event loop needs for as little as it can
        folder = os.path.join(root, spec.experiment_id)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, ".spec.json.tmp")
        with open(tmp, "wb") as handle:
            handle.write(spec.model_dump_json(indent=2).encode())
        os.replace(tmp, os.path.join(folder, "spec.json"))


class ExperimentMaker:
    def __init__(self, ctx: Context, gate: GovernanceGate, requests: RequestBook) -> None:
        self._ctx = ctx
        self._gate = gate
        self._requests = requests
        home = ctx.settings.home
        self.spec_files: Batcher[ExperimentSpec] = Batcher(
            lambda specs: write_spec_files(home, specs), name="spec-files"
        )

    async def create(
        self, spec: ExperimentSpec, *, caller: str, request_id: str = "", request_digest: str = ""
    ) -> tuple[str, str, Decision | None]:
        """The experiment's id, the id of an earlier one with identical content and
        governance's decision. A retry under the same request id gets the experiment it
        created (and no decision: it was not asked again)."""
        ctx, method = self._ctx, "CreateExperiment"
        check_length(request_id, "request_id")
        check_not_a_trial_id(spec.experiment_id, "spec.experiment_id")
        replayed = self._requests.replayed(caller, method, request_id, request_digest)
        if replayed is not None:
            return replayed, ctx.experiments.duplicate_of(replayed), None
        kind = ctx.kinds.get("training")
        decision = await self._gate.check(kind, spec, {}, caller=caller, dry_run=True)
        digest = content_hash(spec)
        async with ctx.lock:
            replayed = self._requests.replayed(caller, method, request_id, request_digest)
            if replayed is not None:
                return replayed, ctx.experiments.duplicate_of(replayed), None
            known = ctx.experiments.get(spec.experiment_id)
            if known is not None:
                raise AlreadyExistsError(
                    f"experiment {spec.experiment_id!r} already exists"
                    + ("" if known[1] == digest else " with different content"),
                    field="spec.experiment_id",
                )
            duplicate = ctx.experiments.first_with(digest)
            created = now()
            # Reserved before the write, so a concurrent submission cannot claim the id.
            ctx.experiments.remember(spec, digest, created)
            writes = self._requests.record(
                caller, method, request_id, request_digest, spec.experiment_id
            )
            try:
                await ctx.store.write(ctx.store.put_experiment(spec, digest, created), *writes)
            except BaseException:
                ctx.experiments.forget(spec.experiment_id, digest)
                self._requests.forget(caller, method, request_id)
                raise
        await self.spec_files.submit(spec)
        return spec.experiment_id, duplicate, decision
