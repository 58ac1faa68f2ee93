"""The orchestrator adapter: experiment proposals as agents write them -> specs -> results.

Agents write proposals loosely: ``{"model": "resnet50", "lr": 3e-4, "batch": 32}``, with
fields missing or out of range. ``interpret`` turns a proposal into an ``ExperimentSpec``
plus feedback an LLM can act on: every problem, each with a concrete suggestion, and the
defaults that were filled in. ``Orchestrator`` submits single proposals or batches and waits
for ``ExperimentResult``s.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from arc_common.errors import ArcError
from arc_common.models import (
    ArchitectureFamily,
    ExperimentResult,
    ExperimentSpec,
    Job,
    describe_errors,
)
from arc_common.models.specs import SPLIT_SUM, VARIANT_FAMILY
from clients import searches
from clients.arc_client import ArcClient
from clients.sweeps import SweepReport

# What agents write -> where it belongs in the spec.
ALIASES: dict[str, str] = {
    "id": "experiment_id",
    "name": "experiment_id",
    "experiment": "experiment_id",
    "model": "architecture.variant",
    "arch": "architecture.variant",
    "architecture_name": "architecture.variant",
    "variant": "architecture.variant",
    "family": "architecture.family",
    "pretrained": "architecture.pretrained",
    "num_classes": "architecture.num_classes",
    "dropout": "architecture.dropout",
    "lr": "hyperparameters.optimizer.learning_rate",
    "learning_rate": "hyperparameters.optimizer.learning_rate",
    "optimizer": "hyperparameters.optimizer.type",
    "weight_decay": "hyperparameters.optimizer.weight_decay",
    "momentum": "hyperparameters.optimizer.momentum",
    "batch": "hyperparameters.batch_size",
    "batch_size": "hyperparameters.batch_size",
    "epochs": "hyperparameters.epochs",
    "seed": "hyperparameters.seed",
    "schedule": "hyperparameters.lr_schedule.type",
    "lr_schedule": "hyperparameters.lr_schedule.type",
    "dataset": "dataset.dataset_id",
    "dataset_id": "dataset.dataset_id",
    "data_path": "dataset.data_path",
    "image_size": "dataset.image_size",
    "novelty": "novelty_class",
    "max_training_time": "max_training_time_seconds",
    "time_limit": "max_training_time_seconds",
    "gpu": "gpu_allocation.gpu_indices",
    "gpus": "gpu_allocation.gpu_count",
    "seal_test": "seal_test",
}

# torchvision classifiers agents name most; anything else is checked by the trainer.
KNOWN_VARIANTS = (
    [f"resnet{n}" for n in (18, 34, 50, 101, 152)]
    + [f"efficientnet_b{n}" for n in range(8)]
    + ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]
    + [f"densenet{n}" for n in (121, 161, 169, 201)]
    + ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
    + [f"convnext_{s}" for s in ("tiny", "small", "base", "large")]
    + ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]
    + ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_x_400mf"]
    + ["swin_t", "swin_s", "swin_b", "swin_v2_t"]
    + ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn"]
)

PRIORITY_WORDS = {
    "lowest": 0,
    "low": 2,
    "normal": 5,
    "medium": 5,
    "high": 8,
    "highest": 10,
    "urgent": 10,
}

DEFAULTS: dict[str, Any] = {
    "architecture.family": None,  # inferred from the variant
    "architecture.num_classes": 2,
    "hyperparameters.batch_size": 32,
    "hyperparameters.epochs": 10,
    "hyperparameters.optimizer.learning_rate": 0.001,
    "dataset.dataset_id": "acuvue",
    "dataset.data_path": "datasets/fundus",
}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    suggestion: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}. Suggestion: {self.suggestion}"


@dataclass
class Interpretation:
    spec: ExperimentSpec | None
    problems: list[Problem] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.spec is not None

    def feedback(self) -> str:
        """One message for the agent: what is wrong and what to send instead."""
        if self.ok and not self.assumed:
            return "The proposal is valid."
        lines = [f"- {p}" for p in self.problems]
        lines += [f"- assumed {a}" for a in self.assumed]
        head = (
            "The proposal was accepted with assumptions:"
            if self.ok
            else ("The proposal cannot run yet. Fix every item and resend:")
        )
        return "\n".join([head, *lines])


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value


def _get(source: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(source, dict) or part not in source:
            return None
        source = source[part]
    return source


def _family_of(variant: str) -> str | None:
    for family in sorted(ArchitectureFamily, key=lambda f: -len(f.value)):
        if variant.startswith(family.value):
            return family.value
    return None


def _normalize_variant(text: str) -> str:
    """'ResNet-50' -> 'resnet50', 'MobileNet-V3-Small' -> 'mobilenet_v3_small'."""
    name = text.strip().lower().replace("-", "_").replace(" ", "_")
    if name not in KNOWN_VARIANTS and name.replace("_", "") in KNOWN_VARIANTS:
        return name.replace("_", "")
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:100] or "experiment"


_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt"}
_BOUNDS["less_than_equal"] = "le"


_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
_OPS["less_than_equal"] = "<="


def _inside(kind: str, bound: Any, path: str, value: Any) -> Any:
    """A value the bound lets through: the bound itself when it is closed; else the
    field's default when that passes, or the nearest round value inside."""
    if kind in ("greater_than_equal", "less_than_equal"):
        return bound
    above = kind == "greater_than"
    default = DEFAULTS.get(path)
    if isinstance(default, int | float) and (default > bound if above else default < bound):
        return default
    if isinstance(bound, int) and isinstance(value, int):
        return bound + 1 if above else bound - 1
    step = max(abs(float(bound)) * 0.01, 0.001)
    return round(float(bound) + step if above else float(bound) - step, 6)


def _suggest(path: str, error: ErrorDetails, value: Any) -> str:
    """A fix for one validation error, chosen on pydantic's error type (never its text)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _BOUNDS:
        bound = ctx[_BOUNDS[kind]]
        return (
            f"set {path} to {_inside(kind, bound, path, value)} (it must be {_OPS[kind]} {bound})"
        )
    if kind == "string_pattern_mismatch" and path.endswith("experiment_id"):
        return f"use letters, digits, '.', '_' or '-', e.g. {_slug(str(value))!r}"
    if kind == SPLIT_SUM:
        return "use train_split 0.8, val_split 0.1, test_split 0.1"
    if kind in {"int_parsing", "int_from_float", "int_type"}:
        return f"use a whole number for {path}" + (
            f", e.g. {DEFAULTS[path]}" if DEFAULTS.get(path) is not None else ""
        )
    if kind in {"float_parsing", "float_type"}:
        return f"use a number for {path}"
    if kind in {"enum", "literal_error"}:
        options = re.findall(r"'([^']+)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value).lower(), options, n=1)
        return f"use {close[0]!r}" if close else f"use one of {options}"
    if kind == "missing":
        default = DEFAULTS.get(path)
        return f"add {path}" + (f" (e.g. {default!r})" if default is not None else "")
    if kind == VARIANT_FAMILY:
        return "pick a variant of the family, or change the family"
    return "correct the value"


def interpret(proposal: dict[str, Any], *, defaults: bool = True) -> Interpretation:
    """A proposal as an agent wrote it -> a spec, or every problem with a suggestion."""
    problems: list[Problem] = []
    assumed: list[str] = []
    raw = copy.deepcopy(proposal)
    data: dict[str, Any] = {}
    for key, value in raw.items():
        target = ALIASES.get(key)
        if target is not None and not isinstance(value, dict):
            _set(data, target, value)
        elif key in ExperimentSpec.model_fields:
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        else:
            close = difflib.get_close_matches(
                key, [*ALIASES, *ExperimentSpec.model_fields], n=1, cutoff=0.6
            )
            problems.append(
                Problem(
                    key,
                    "is not a field of an experiment",
                    f"rename it to {close[0]!r}" if close else "remove it",
                )
            )
    # Forgiving readings of common shapes.
    optimizer = _get(data, "hyperparameters.optimizer")
    if isinstance(optimizer, str):
        _set(data, "hyperparameters.optimizer", {"type": optimizer})
    for path in (
        "hyperparameters.optimizer.type",
        "architecture.family",
        "novelty_class",
        "hyperparameters.lr_schedule.type",
    ):
        value = _get(data, path)
        if isinstance(value, str):
            _set(data, path, value.strip().lower())
    priority = data.get("priority")
    if isinstance(priority, str) and priority.lower() in PRIORITY_WORDS:
        data["priority"] = PRIORITY_WORDS[priority.lower()]
        assumed.append(f"priority {data['priority']} for {priority!r}")
    gpu = _get(data, "gpu_allocation.gpu_indices")
    if isinstance(gpu, int | str) and not isinstance(gpu, bool):
        text = str(gpu).upper().removeprefix("GPU")
        if text == "AUTO":
            data["gpu_allocation"].pop("gpu_indices")
        elif text.isdigit():
            _set(data, "gpu_allocation.gpu_indices", [int(text)])
            _set(data, "gpu_allocation.preference", "specific")
    if data.get("source") and _get(data, "architecture.variant") is None:
        # The source's entrypoint builds the model (and gets num_classes and dropout).
        _set(data, "architecture.variant", "custom")
        _set(data, "architecture.family", "custom")
    variant = _get(data, "architecture.variant")
    if isinstance(variant, str) and variant != "custom":
        name = _normalize_variant(variant)
        if name not in KNOWN_VARIANTS:
            close = difflib.get_close_matches(name, KNOWN_VARIANTS, n=1, cutoff=0.75)
            if close:
                problems.append(
                    Problem(
                        "architecture.variant",
                        f"{variant!r} is not a torchvision model",
                        f"use {close[0]!r}",
                    )
                )
        _set(data, "architecture.variant", name)
        if _get(data, "architecture.family") is None:
            family = _family_of(name)
            if family:
                _set(data, "architecture.family", family)
    if defaults:
        for path, value in DEFAULTS.items():
            if value is not None and _get(data, path) is None:
                _set(data, path, value)
                assumed.append(f"{path} = {value!r} (not given)")
    if not data.get("experiment_id"):
        variant_name = _get(data, "architecture.variant") or "model"
        lr = _get(data, "hyperparameters.optimizer.learning_rate")
        data["experiment_id"] = _slug(f"{variant_name}-lr{lr}")
        assumed.append(f"experiment_id = {data['experiment_id']!r} (not given)")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        details = exc.errors(include_url=False)
        for (path, message), error in zip(describe_errors(exc), details, strict=True):
            value = _get(data, path) if path != "(request)" else None
            problems.append(Problem(path, message, _suggest(path, error, value)))
        return Interpretation(None, problems, assumed)
    if problems:
        return Interpretation(None, problems, assumed)
    return Interpretation(spec, problems, assumed)


@dataclass
class Outcome:
    proposal: dict[str, Any]
    interpretation: Interpretation
    job: Job | None = None
    error: str = ""


# The model function a patched proposal trains when it names none.
DEFAULT_ENTRYPOINT = "acuvue.nets:build_model"


class Orchestrator:
    """What the multi-agent orchestrator calls: proposals in, results out."""

    def __init__(self, client: ArcClient) -> None:
        self.client = client

    async def _patched(self, proposal: dict[str, Any], request_id: str) -> dict[str, Any]:
        """A proposal carrying ``patch`` (a unified diff): the patch applied through
        governance, and the proposal's source pointed at the commit it made."""
        if "patch" not in proposal:
            return proposal
        rest = dict(proposal)
        diff = rest.pop("patch")
        message = str(rest.pop("patch_message", ""))
        source = dict(rest.get("source") or {})
        repository = str(source.get("repository") or "models")
        applied = await self.client.tools.apply_patch(
            repository, str(diff), message=message, request_id=request_id
        )
        source.update(repository=repository, revision=applied["commit_sha"])
        source.setdefault("entrypoint", DEFAULT_ENTRYPOINT)
        return rest | {"source": source}

    async def submit(
        self, proposals: list[dict[str, Any]], *, request_id: str = "", **options: Any
    ) -> list[Outcome]:
        outcomes = []
        for index, proposal in enumerate(proposals):
            try:
                patched = await self._patched(proposal, f"{request_id or 'patch'}-{index}")
            except ArcError as exc:
                outcome = Outcome(proposal, Interpretation(None, [], []), error=f"patch: {exc}")
                outcomes.append(outcome)
                continue
            outcomes.append(Outcome(patched, interpret(patched)))
        valid = [o for o in outcomes if o.interpretation.spec is not None]
        if not valid:
            return outcomes
        try:
            jobs = await self.client.submit_many(
                [o.interpretation.spec for o in valid if o.interpretation.spec],
                request_id=request_id,
                **options,
            )
        except ArcError as exc:  # the batch is all-or-nothing
            for outcome in valid:
                outcome.error = str(exc)
            return outcomes
        for outcome, job in zip(valid, jobs, strict=True):
            outcome.job = job
        return outcomes

    async def sweep(
        self, base: dict[str, Any], parameters: dict[str, Any], **fields: Any
    ) -> SweepReport:
        """A sweep over ``parameters`` (path: distribution, as in a sweep file) from the
        proposal ``base``, run to its end; what to do next is in the report's feedback."""
        return await searches.sweep(self.client, interpret(base), base, parameters, **fields)

    async def history(self, proposal: dict[str, Any], **options: Any) -> str:
        """What already ran nearest ``proposal`` (GetHistory), as feedback to act on."""
        return await searches.history(self.client, interpret(proposal), **options)

    async def ablate(
        self, base: dict[str, Any], arms: dict[str, dict[str, Any]], **fields: Any
    ) -> SweepReport:
        """Every arm (name: changes to the base) and the base at every seed (``seeds``),
        run to the end and reported arm by arm against the base (clients.ablation)."""
        return await searches.ablate(self.client, interpret(base), base, arms, **fields)

    async def run(self, proposals: list[dict[str, Any]], **options: Any) -> list[ExperimentResult]:
        """Submit and wait; one result per proposal (failed ones carry the reason)."""
        outcomes = await self.submit(proposals, **options)

        async def finish(outcome: Outcome) -> ExperimentResult:
            if outcome.job is None:
                return ExperimentResult(
                    error_message=outcome.error or outcome.interpretation.feedback()
                )
            job = await self.client.wait(outcome.job.job_id)
            result = job.result or ExperimentResult(job_id=job.job_id, state=job.state)
            if job.failure is not None and job.failure.summary:  # what the agent acts on
                return result.model_copy(update={"error_message": job.failure.summary})
            return result

        return list(await asyncio.gather(*(finish(o) for o in outcomes)))
