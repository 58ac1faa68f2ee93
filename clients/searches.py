"""The orchestrator's sweeps and ablations: created from an interpreted proposal, run to
their end, and answered with feedback an agent can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arc.scheduler.v1 import scheduler_pb2, sweep_pb2
from arc_common.errors import ArcError
from clients import ablation
from clients.arc_client import ArcClient
from clients.sweeps import SweepReport, report, sweep_message

if TYPE_CHECKING:  # the orchestrator's, which calls this module
    from clients.orchestrator import Interpretation


async def sweep(
    client: ArcClient,
    interpretation: Interpretation,
    base: dict[str, Any],
    parameters: dict[str, Any],
    *,
    request_id: str = "",
    **fields: Any,
) -> SweepReport:
    spec = interpretation.spec
    if spec is None:
        return SweepReport(None, interpretation.feedback())
    data = {**fields, "base": base, "parameters": parameters}
    try:
        made = await client.sweeps.create(
            sweep_message(data, lambda _: spec), request_id=request_id
        )
        final = made
        async for update in client.sweeps.watch(made.sweep_id):
            final = update.sweep
    except ArcError as exc:
        return SweepReport(None, f"The sweep was refused ({exc.status}): {exc}")
    failures = {}
    for trial in final.trials:
        if trial.state == sweep_pb2.TRIAL_STATE_FAILED and trial.job_id:
            job = await client.job(trial.job_id)
            failures[trial.number] = job.failure.summary if job.failure else job.error_message
    return report(final, failures)


async def ablate(
    client: ArcClient,
    interpretation: Interpretation,
    base: dict[str, Any],
    arms: dict[str, dict[str, Any]],
    *,
    seeds: list[int] | None = None,
    request_id: str = "",
    **fields: Any,
) -> SweepReport:
    spec = interpretation.spec
    if spec is None:
        return SweepReport(None, interpretation.feedback())
    data = {**fields, "base": base, "arms": arms, "seeds": seeds or []}
    try:
        message = ablation.ablation_message(data, lambda _: spec)
        final, rows = await ablation.run(client, message, request_id=request_id)
    except ArcError as exc:
        return SweepReport(None, f"The ablation was refused ({exc.status}): {exc}")
    return SweepReport(final, ablation.feedback(final, rows), rows)


async def history(
    client: ArcClient, interpretation: Interpretation, *, limit: int = 5, metric: str = "val_auc"
) -> str:
    """What already ran nearest a proposal, as one message for the agent."""
    spec = interpretation.spec
    if spec is None:
        return interpretation.feedback()
    known = await client.history(spec, limit=limit, metric=metric)

    def value(job: scheduler_pb2.Job) -> str:
        found = job.result.best_metrics.get(metric)
        return f"{metric} {found:.4f}" if found is not None else f"no {metric}"

    lines = []
    if known.HasField("identical"):
        lines.append(
            f"This proposal already ran: job {known.identical.job_id} "
            f"({value(known.identical)}); resubmit only to repeat it."
        )
    if not known.nearest:
        lines.append("Nothing has been trained on this data yet.")
    for prior in known.nearest:
        changes = "; ".join(prior.differences) or "the same"
        lines.append(f"- {prior.job.experiment_id} ({value(prior.job)}), differs: {changes}")
    if known.best_per_family:
        best = ", ".join(f"{j.experiment_id} ({value(j)})" for j in known.best_per_family)
        lines.append(f"Best per architecture family: {best}.")
    return "\n".join(lines)
