"""A failed run's ``Failure``: its class, a summary an agent can act on, and the end of
its stderr with secrets taken out. The trainer may name a class for what it caught; the
executor bounds what it says and decides the classes only it can know (a lost lease, a
timeout, a shutdown), so no trainer earns itself an uncounted retry."""

from __future__ import annotations

import re

from arc_common.models import Failure, FailureClass, JobState, RunEndCause
from services.executor.live import Ending

STDERR_TAIL_BYTES = 4096

# What a trainer may say about itself; anything else reads as an infrastructure failure.
TRAINER_CLASSES = frozenset(
    {
        FailureClass.SPEC_INVALID,
        FailureClass.DATA_ERROR,
        FailureClass.CODE_ERROR,
        FailureClass.OUT_OF_MEMORY,
        FailureClass.DIVERGED,
        FailureClass.INFRASTRUCTURE,
    }
)
BY_CAUSE = {
    RunEndCause.TIMED_OUT: FailureClass.TIMED_OUT,
    RunEndCause.LOST_LEASE: FailureClass.LEASE_LOST,
    RunEndCause.EXECUTOR_SHUTDOWN: FailureClass.INFRASTRUCTURE,
    RunEndCause.CRASHED: FailureClass.INFRASTRUCTURE,
    RunEndCause.OOM: FailureClass.OUT_OF_MEMORY,
    RunEndCause.CANCELLED: FailureClass.CANCELLED,
    RunEndCause.PRUNED: FailureClass.PRUNED,
    RunEndCause.FAILED: FailureClass.INFRASTRUCTURE,
}
ADVICE = {
    FailureClass.SPEC_INVALID: "The spec cannot run as written; change the field named and "
    "submit again (a retry would fail the same way).",
    FailureClass.DATA_ERROR: "The dataset is at fault (a missing or corrupt image, an empty "
    "class); fix or remove the file named, or choose another dataset.",
    FailureClass.CODE_ERROR: "The repository's code raised; fix it at the file and line "
    "given, commit a patch, and submit the new revision.",
    FailureClass.OUT_OF_MEMORY: "Memory ran out; lower hyperparameters.batch_size, use a "
    "smaller model, or ask for a GPU with more memory.",
    FailureClass.DIVERGED: "The loss became non-finite or grew past the divergence rule; "
    "lower the learning rate or add warm-up.",
    FailureClass.TIMED_OUT: "The run took longer than its timeout; raise "
    "max_training_time_seconds or train fewer epochs.",
    FailureClass.LEASE_LOST: "Its GPUs' lease was lost (not the spec's fault); the engine "
    "runs the attempt again.",
    FailureClass.INFRASTRUCTURE: "The trainer process or its machine failed without a cause "
    "of its own; the engine retries within max_retries.",
    FailureClass.CANCELLED: "It was cancelled.",
    FailureClass.PRUNED: "It was stopped early: its validation curve fell behind.",
}
_SECRET = re.compile(
    r"(?i)(bearer\s+|authorization[=:]\s*|(?:token|password|secret|api_key)\s*[=:]\s*)\S+"
)
_LONG_HEX = re.compile(r"\b[0-9a-f]{32,}\b")


def redact(text: str) -> str:
    """Credentials a log line may carry; git commits (40 hex) are kept."""
    text = _SECRET.sub(lambda m: f"{m.group(1)}[redacted]", text)
    return _LONG_HEX.sub(lambda m: m.group(0) if len(m.group(0)) == 40 else "[redacted]", text)


def stderr_tail(lines: list[str]) -> str:
    data = "\n".join(lines).encode()[-STDERR_TAIL_BYTES:]
    return redact(data.decode(errors="replace"))


def from_trainer(said: Failure | None) -> Failure | None:
    """What the trainer said, bounded; a class it may not claim becomes INFRASTRUCTURE."""
    if said is None:
        return None
    kind = said.failure_class
    return Failure(
        failure_class=kind if kind in TRAINER_CLASSES else FailureClass.INFRASTRUCTURE,
        summary=said.summary[:2000],
        exception_type=said.exception_type[:200],
        message=redact(said.message[:2000]),
        file=said.file[:500],
        line=max(0, min(said.line, 10_000_000)),
    )


def failure_of(end: Ending, tail: list[str]) -> Failure | None:
    """The run's failure as it ends (None when it completed, or was cancelled or pruned
    by request without a failure of its own)."""
    if end.state is JobState.COMPLETED:
        return None
    said = end.failure
    if said is None and end.state in (JobState.CANCELLED, JobState.PRUNED):
        return None
    kind = said.failure_class if said is not None else None
    if kind is None or end.cause in (RunEndCause.TIMED_OUT, RunEndCause.LOST_LEASE):
        kind = BY_CAUSE.get(end.cause, FailureClass.INFRASTRUCTURE)
    base = said or Failure()
    where = f" at {base.file}:{base.line}" if base.file else ""
    what = f"{base.exception_type}: {base.message}" if base.exception_type else end.reason
    first = what.splitlines()[0][:500] if what else ""
    summary = f"{kind.value.upper()}{where}: {first}. {ADVICE[kind]}"
    return base.model_copy(
        update={"failure_class": kind, "summary": summary, "stderr_tail": stderr_tail(tail)}
    )
