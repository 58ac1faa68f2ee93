"""A sweep's trials, kept by Optuna in a journal file of the workspace: one study per
sweep. A trial is asked for, its job's request id written to it, and only then is its
job submitted; so after a crash every trial the sweep promised is found again (still
RUNNING, with the request id that makes its submission idempotent) and none is asked
for twice. Optuna is synchronous: every method blocks, call it off the event loop.

Parallel trials are suggested with TPE's constant liar; a suggestion equal to a trial
already made is also refused here (Optuna's samplers can repeat a point of a discrete
space), so no two trials of a sweep train the same parameters."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from arc_common.errors import NotFoundError, ResourceExhaustedError
from services.scheduler.sweeps.plan import MAX_ENUMERATED, Direction, Plan, Sampler, axes_of
from services.scheduler.sweeps.pruners import should_prune
from services.scheduler.sweeps.space import distributions

REQUEST_ID = "request_id"
DUPLICATE = "duplicate_of"
DEFINITION = "definition"
MAX_REDRAWS = 10
STATE = "state"
CREATED = "created"
GPU_SECONDS = "gpu_seconds"
REASON = "reason"
JOB_ID = "job_id"
TAG = "tag"
MIN_FOR_IMPORTANCE = 4
MAX_PRIORS = 1000
PRIOR = "prior"  # a warm start's trial: the job whose result it is

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, Any]
    request_id: str
    state: TrialState
    value: float | None = None
    job_id: str = ""
    last_value: float | None = None
    last_epoch: int = 0
    tag: str = ""


def _sampler(plan: Plan, made: int) -> BaseSampler:
    # Reseeded with how many trials exist: a restarted sweep does not replay its draws.
    seed = plan.seed + made
    if plan.sampler is Sampler.RANDOM:
        return RandomSampler(seed=seed)
    if plan.sampler is Sampler.QMC:
        with warnings.catch_warnings():  # "experimental" at every ask says nothing new
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return QMCSampler(seed=seed)
    if plan.sampler is Sampler.GP:
        return GPSampler(seed=seed, n_startup_trials=8)
    if plan.sampler is Sampler.CMA_ES:  # choices and parallel trials: sampled independently
        return CmaEsSampler(seed=seed, n_startup_trials=8, warn_independent_sampling=False)
    if plan.sampler is Sampler.GRID:  # the points are the ledger's own (``_unseen``)
        return RandomSampler(seed=seed)
    return TPESampler(multivariate=True, constant_liar=True, seed=seed, n_startup_trials=8)


def _unseen(plan: Plan, seen: set[str], *, seed: int) -> dict[str, Any] | None:
    """A point of a finite space that no trial has, or None (none left, or the space is
    continuous or too large to list)."""
    axes = axes_of(plan.parameters)
    if axes is None or math.prod(len(axis) for axis in axes) > MAX_ENUMERATED:
        return None
    paths = [parameter.path for parameter in plan.parameters]
    points = [dict(zip(paths, values, strict=True)) for values in itertools.product(*axes)]
    left = [point for point in points if _key(point) not in seen]
    return random.Random(seed).choice(left) if left else None


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class SweepLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.storage = JournalStorage(JournalFileBackend(str(path)))
        # One ask at a time per sweep: its duplicates are checked against all its trials.
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def create(self, sweep_id: str, plan: Plan) -> None:
        study = optuna.create_study(
            storage=self.storage,
            study_name=sweep_id,
            direction=plan.direction.value,
            load_if_exists=False,
        )
        study.set_user_attr(CREATED, time.time())
        study.set_user_attr(DEFINITION, plan.dump())

    def created(self, sweep_id: str) -> float:
        """When it was created (seconds since the epoch)."""
        return float(self._study(sweep_id).user_attrs.get(CREATED, 0.0))

    def sweep_ids(self) -> list[str]:
        return [study.study_name for study in self.storage.get_all_studies()]

    def state(self, sweep_id: str) -> str:
        return str(self._study(sweep_id).user_attrs.get(STATE, "running"))

    def set_state(self, sweep_id: str, state: str, reason: str = "") -> None:
        study = self._study(sweep_id)
        if reason:  # first: a state is never seen without its reason
            study.set_user_attr(REASON, reason)
        study.set_user_attr(STATE, state)

    def reason(self, sweep_id: str) -> str:
        """Why it was cancelled or failed ("" otherwise)."""
        return str(self._study(sweep_id).user_attrs.get(REASON, ""))

    def attach(self, sweep_id: str, number: int, job_id: str) -> None:
        """The job that trains the trial (for GetSweep; the request id finds it anyway)."""
        self.storage.set_trial_user_attr(self._trial_id(sweep_id, number), JOB_ID, job_id)

    def plan(self, sweep_id: str) -> Plan:
        return Plan.load(self._study(sweep_id).user_attrs[DEFINITION])

    def _study(self, sweep_id: str, sampler: BaseSampler | None = None) -> optuna.Study:
        try:
            return optuna.load_study(storage=self.storage, study_name=sweep_id, sampler=sampler)
        except KeyError:
            raise NotFoundError(f"no sweep {sweep_id!r}", field="sweep_id") from None

    def trials(self, sweep_id: str) -> list[Trial]:
        """The sweep's trials, in the order they were made (redrawn duplicates left out)."""
        out = []
        for frozen in self._study(sweep_id).get_trials(deepcopy=False):
            if REQUEST_ID in frozen.user_attrs:
                out.append(_trial(frozen))
        return out

    def ask(self, sweep_id: str, *, tag: str = "") -> Trial:
        """A new trial, its request id recorded before it is returned; RESOURCE_EXHAUSTED
        when the sweep has made all its trials (or its space has no new point). ``tag``:
        kept with the trial (the SuggestTrials request that asked for it)."""
        with self._guard:
            lock = self._locks.setdefault(sweep_id, threading.Lock())
        with lock:
            plan = self.plan(sweep_id)
            made = self.trials(sweep_id)
            if len(made) >= plan.max_trials:
                raise ResourceExhaustedError(
                    f"sweep {sweep_id} has made its {plan.max_trials} trials", field="max_trials"
                )
            study = self._study(sweep_id, _sampler(plan, len(made)))
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if REQUEST_ID not in frozen.user_attrs:  # asked for, never promised: a crash
                    study.tell(frozen.number, state=TrialState.FAIL)
            seen = {_key(trial.params): trial.number for trial in made}
            space = distributions(plan.parameters)
            # A grid is walked by the ledger, in an order of its seed, each point once.
            for _ in range(0 if plan.sampler is Sampler.GRID else MAX_REDRAWS):
                asked = study.ask(space)
                earlier = seen.get(_key(asked.params))
                if earlier is None:
                    return _promise(asked, sweep_id, tag)
                # Not a trial of the sweep: failed at once, so the sampler moves on.
                asked.set_user_attr(DUPLICATE, earlier)
                study.tell(asked, state=TrialState.FAIL)
            unseen = _unseen(plan, set(seen), seed=plan.seed + len(made))
            if unseen is None:
                raise ResourceExhaustedError(
                    f"sweep {sweep_id}: the search space has no point left that no trial has",
                    field="parameters",
                )
            study.enqueue_trial(unseen)  # a finite space: a point no trial has, as is
            return _promise(study.ask(space), sweep_id, tag)

    def pending(self, sweep_id: str) -> list[Trial]:
        """Trials made and not yet told: after a restart, each job is found again by its
        request id (or submitted with it)."""
        return [t for t in self.trials(sweep_id) if t.state is TrialState.RUNNING]

    def _trial_id(self, sweep_id: str, number: int) -> int:
        try:
            study_id = self.storage.get_study_id_from_name(sweep_id)
            return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        except KeyError:
            raise NotFoundError(
                f"sweep {sweep_id!r} has no trial {number}", field="trial"
            ) from None

    def report(self, sweep_id: str, number: int, epoch: int, value: float) -> str:
        """An intermediate value (the objective at ``epoch``); why the pruner stops the
        trial now, or "". A trial ended already is left as it is."""
        trial_id = self._trial_id(sweep_id, number)
        if self.storage.get_trial(trial_id).state is not TrialState.RUNNING:
            return ""
        self.storage.set_trial_intermediate_value(trial_id, epoch, value)
        plan = self.plan(sweep_id)
        epochs = plan.base.hyperparameters.epochs if plan.base is not None else 0
        study = self._study(sweep_id)
        return should_prune(plan.pruner, study, self.storage.get_trial(trial_id), epochs=epochs)

    def tell(
        self,
        sweep_id: str,
        number: int,
        value: float | None,
        state: TrialState,
        gpu_seconds: float = 0.0,
    ) -> None:
        """The trial's end: COMPLETE with its objective, PRUNED, or FAIL, and the GPU time
        its job took. A trial told already is left as it is (a restart may tell it again)."""
        trial_id = self._trial_id(sweep_id, number)
        if self.storage.get_trial(trial_id).state is not TrialState.RUNNING:
            return
        if gpu_seconds:
            self.storage.set_trial_user_attr(trial_id, GPU_SECONDS, gpu_seconds)
        if state is TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study = self._study(sweep_id)
        study.tell(number, value if state is TrialState.COMPLETE else None, state=state)

    def add_priors(self, sweep_id: str, priors: list[tuple[dict[str, Any], float, str]]) -> int:
        """Earlier results (params, value, job id) as finished trials the sampler learns
        from; not trials of the sweep (no request id: not listed, not counted). Those
        outside the space are left out; how many were added."""
        study = self._study(sweep_id)
        space = distributions(self.plan(sweep_id).parameters)
        added = 0
        for params, value, job_id in priors[:MAX_PRIORS]:
            try:
                frozen = optuna.trial.create_trial(
                    params=params, distributions=space, value=value, user_attrs={PRIOR: job_id}
                )
                study.add_trial(frozen)
            except ValueError:  # a value outside this space's ranges
                continue
            added += 1
        return added

    def gpu_seconds(self, sweep_id: str) -> float:
        """The GPU time of the trials told so far."""
        return sum(
            float(frozen.user_attrs.get(GPU_SECONDS, 0.0))
            for frozen in self._study(sweep_id).get_trials(deepcopy=False)
        )

    def importance(self, sweep_id: str) -> dict[str, float]:
        """How much each parameter explains of the best trials (Optuna's PED-ANOVA,
        summing to 1); empty with fewer than MIN_FOR_IMPORTANCE complete trials."""
        study = self._study(sweep_id)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < MIN_FOR_IMPORTANCE:
            return {}
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator()
            )
        except (ValueError, RuntimeError):  # e.g. every trial at the same value
            return {}
        return {path: float(share) for path, share in found.items()}


def best_of(trials: list[Trial], direction: Direction) -> Trial | None:
    """The best COMPLETE trial in ``direction``."""
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    sign = 1.0 if direction is Direction.MAXIMIZE else -1.0
    return max(done, key=lambda t: sign * (t.value or 0.0), default=None)


def _promise(asked: optuna.Trial, sweep_id: str, tag: str) -> Trial:
    """The trial made the sweep's: its tag, then its request id (the promise) written."""
    if tag:
        asked.set_user_attr(TAG, tag)
    request_id = f"sweep:{sweep_id}:trial-{asked.number}"
    asked.set_user_attr(REQUEST_ID, request_id)
    return Trial(asked.number, asked.params, request_id, TrialState.RUNNING, tag=tag)


def _trial(frozen: FrozenTrial) -> Trial:
    last = frozen.last_step
    return Trial(
        number=frozen.number,
        params=dict(frozen.params),
        request_id=str(frozen.user_attrs[REQUEST_ID]),
        state=frozen.state,
        value=frozen.value if frozen.state is TrialState.COMPLETE else None,
        job_id=str(frozen.user_attrs.get(JOB_ID, "")),
        last_value=frozen.intermediate_values.get(last) if last is not None else None,
        last_epoch=last or 0,
        tag=str(frozen.user_attrs.get(TAG, "")),
    )
