"""proto -> model -> proto round trips for every domain message, with every field set."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from arc.common.v1 import common_pb2
from arc.executor.v1 import executor_pb2
from arc.governance.v1 import governance_pb2
from arc.gpu.v1 import gpu_pb2
from arc.scheduler.v1 import scheduler_pb2
from arc_common import convert, models, packed
from arc_common.errors import InvalidArgumentError

PAIRS: list[tuple[type[BaseModel], type[Message]]] = [
    (models.ArchitectureSpec, common_pb2.ArchitectureSpec),
    (models.OptimizerSpec, common_pb2.OptimizerSpec),
    (models.LrSchedule, common_pb2.LrSchedule),
    (models.Hyperparameters, common_pb2.Hyperparameters),
    (models.DatasetSpec, common_pb2.DatasetSpec),
    (models.PreprocessingStep, common_pb2.PreprocessingStep),
    (models.PreprocessingChain, common_pb2.PreprocessingChain),
    (models.GpuAllocation, common_pb2.GpuAllocation),
    (models.EarlyStopping, common_pb2.EarlyStopping),
    (models.ExperimentSpec, common_pb2.ExperimentSpec),
    (models.TrainingJobConfig, common_pb2.TrainingJobConfig),
    (models.MetricResult, common_pb2.MetricResult),
    (models.CheckpointInfo, common_pb2.CheckpointInfo),
    (models.ExperimentResult, common_pb2.ExperimentResult),
    (models.GpuProcess, gpu_pb2.GpuProcess),
    (models.Gpu, gpu_pb2.Gpu),
    (models.Lease, gpu_pb2.Lease),
    (models.Violation, governance_pb2.Violation),
    (models.Decision, governance_pb2.Decision),
    (models.Transaction, governance_pb2.Transaction),
    (models.PendingRequest, governance_pb2.PendingRequest),
    (models.AuditRecord, governance_pb2.AuditRecord),
    (models.Job, scheduler_pb2.Job),
    (models.Experiment, scheduler_pb2.Experiment),
    (models.SchedulerStatus, scheduler_pb2.SchedulerStatus),
    (models.JobStateChange, scheduler_pb2.StateChange),
    (models.JobEvent, scheduler_pb2.JobEvent),
    (models.StateChange, executor_pb2.StateChange),
    (models.LogExcerpt, executor_pb2.LogExcerpt),
    (models.RunEvent, executor_pb2.RunEvent),
    (models.Run, executor_pb2.Run),
]

# Values that satisfy the models' cross-field rules; everything else is generated.
VALID: dict[str, dict[str, Any]] = {
    "arc.common.v1.ArchitectureSpec": {"variant": "resnet50", "dropout": 0.25, "num_classes": 3},
    "arc.common.v1.OptimizerSpec": {"learning_rate": 0.003, "momentum": 0.9, "weight_decay": 0.01},
    "arc.common.v1.LrSchedule": {"gamma": 0.5},
    "arc.common.v1.DatasetSpec": {
        "train_split": 0.7,
        "val_split": 0.2,
        "test_split": 0.1,
        "data_path": "data/acuvue",
        "image_size": 128,
        "dataset_id": "acuvue_v1",
    },
    "arc.common.v1.GpuAllocation": {
        "preference": common_pb2.GPU_PREFERENCE_SPECIFIC,
        "gpu_indices": [0, 1],
        "gpu_count": 2,
    },
    "arc.common.v1.EarlyStopping": {"monitor": "val_auc", "divergence_factor": 4.0},
    "arc.common.v1.ExperimentSpec": {"experiment_id": "exp-1", "priority": 7},
    "arc.common.v1.TrainingJobConfig": {
        "job_id": "job-1",
        "checkpoint_dir": "runs/job-1/ckpt",
        "log_dir": "runs/job-1/logs",
        "max_retries": 2,
    },
    "arc.common.v1.Hyperparameters": {"seed": 7, "batch_size": 16, "epochs": 3},
    "arc.common.v1.Grouping": {"pattern": r"^(?P<patient>p\d+)_"},
    "arc.common.v1.CodeSource": {
        "repository": "models",
        "revision": "main",
        "entrypoint": "acuvue.nets:build_model",
        "loss": "acuvue.losses:focal",
        "transforms": "acuvue.aug:train_transforms",
        "param_groups": "acuvue.opt:groups",
        "commit": "a" * 40,
        "tree": "b" * 40,
    },
}

STAMP = datetime(2026, 5, 17, 12, 30, 15, 250000, tzinfo=UTC)


def fill(message: Message, depth: int = 0) -> Message:
    """Set every field of ``message`` (recursively) to a non-default value."""
    descriptor: Any = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.FromDatetime(STAMP)  # type: ignore[attr-defined]
        return message
    if descriptor.full_name == "google.protobuf.Struct":
        message.update({"size": 224})  # type: ignore[attr-defined]
        return message
    overrides = VALID.get(descriptor.full_name, {})
    oneofs_done: set[str] = set()
    for field in descriptor.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs_done:
                continue
            oneofs_done.add(field.containing_oneof.name)
        if field.name in overrides:
            value = overrides[field.name]
            if field.is_repeated:
                getattr(message, field.name).extend(value)
            else:
                setattr(message, field.name, value)
            continue
        _fill_field(message, field, depth)
    return message


def _sample(field: Any, n: int = 1) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[min(n, len(field.enum_type.values) - 1)].number
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name.endswith(("variant",)):
            return "resnet18"
        return f"{field.name.replace('_', '-')}-{n}"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.5 + n / 10
    return n + 1


def _fill_field(message: Message, field: Any, depth: int) -> None:
    is_map = (
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )
    if is_map:
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        for n in (1, 2):
            target[f"k{n}"] = _sample(value_field, n)
    elif field.is_repeated:
        target = getattr(message, field.name)
        for n in (1, 2):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                fill(target.add(), depth + 1)
            else:
                target.append(_sample(field, n))
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        fill(getattr(message, field.name), depth + 1)
    else:
        setattr(message, field.name, _sample(field))


def _all_set(message: Message) -> list[str]:
    """Names of fields left at their default (the filler must not miss any)."""
    missing = []
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None:
            continue
        if field.is_repeated:
            if not len(getattr(message, field.name)):
                missing.append(field.name)
        elif field.has_presence:
            if not message.HasField(field.name):
                missing.append(field.name)
        elif getattr(message, field.name) == field.default_value:
            missing.append(field.name)
    return missing


@pytest.mark.parametrize(("model_cls", "proto_cls"), PAIRS, ids=lambda c: c.__name__)
def test_round_trip_every_field(model_cls: type[BaseModel], proto_cls: type[Message]) -> None:
    original = fill(proto_cls())
    assert _all_set(original) == []
    model = convert.to_model(original, model_cls)
    back = convert.to_proto(model, proto_cls)
    assert back == original, f"{proto_cls.__name__} changed in the round trip"


def test_every_model_field_exists_in_its_proto() -> None:
    for model_cls, proto_cls in PAIRS:
        proto_fields = set(proto_cls.DESCRIPTOR.fields_by_name)
        assert set(model_cls.model_fields) == proto_fields, model_cls.__name__


def test_enum_values_match_proto_names() -> None:
    assert convert.enum_to_str(common_pb2.ArchitectureFamily.DESCRIPTOR, 1) == "resnet"
    assert convert.enum_from_str(common_pb2.JobState.DESCRIPTOR, "timed_out") == (
        common_pb2.JOB_STATE_TIMED_OUT
    )
    for model_enum, proto_enum in [
        (models.ArchitectureFamily, common_pb2.ArchitectureFamily),
        (models.JobState, common_pb2.JobState),
        (models.Tool, governance_pb2.Tool),
        (models.Mode, governance_pb2.Mode),
        (models.PreprocessingStepType, common_pb2.PreprocessingStepType),
    ]:
        names = {
            convert.enum_to_str(proto_enum.DESCRIPTOR, v.number)
            for v in proto_enum.DESCRIPTOR.values
            if v.number
        }
        assert names == {m.value for m in model_enum}


def test_enum_value_and_member_convert_model_enums_both_ways() -> None:
    assert convert.enum_value(governance_pb2.Mode, models.Mode.LOCKED) == governance_pb2.MODE_LOCKED
    assert convert.enum_value(common_pb2.JobState, "timed_out") == common_pb2.JOB_STATE_TIMED_OUT
    for mode in models.Mode:
        number = convert.enum_value(governance_pb2.Mode, mode)
        assert convert.enum_member(governance_pb2.Mode, number, models.Mode) is mode
    with pytest.raises(ValueError, match=r"arc\.governance\.v1\.Mode"):
        convert.enum_value(governance_pb2.Mode, "nonsense")
    with pytest.raises(ValueError, match="not set"):
        convert.enum_member(governance_pb2.Mode, governance_pb2.MODE_UNSPECIFIED, models.Mode)


def test_unset_optional_zero_is_kept_apart_from_absent() -> None:
    spec = common_pb2.ExperimentSpec()
    fill(spec)
    spec.priority = 0
    assert convert.to_model(spec, models.ExperimentSpec).priority == 0
    spec.ClearField("priority")
    assert convert.to_model(spec, models.ExperimentSpec).priority is None


def test_a_zero_without_presence_is_not_set_and_with_presence_is() -> None:
    """Only what is set reaches the model: a scalar or enum at zero (-0.0 included) is
    absent, so the model's default applies or a required field is missing; an
    ``optional`` field set to zero is kept, and so is an empty message that was set."""
    spec = common_pb2.ExperimentSpec()
    fill(spec)
    optimizer = spec.hyperparameters.optimizer
    optimizer.weight_decay = -0.0
    optimizer.momentum = 0.0
    optimizer.type = common_pb2.OPTIMIZER_TYPE_UNSPECIFIED
    as_dict = convert.message_to_dict(optimizer)
    assert "weight_decay" not in as_dict and "type" not in as_dict
    assert as_dict["momentum"] == 0.0
    model = convert.to_model(spec, models.ExperimentSpec)
    assert model.hyperparameters.optimizer.type is models.OptimizerType.ADAM
    assert model.hyperparameters.optimizer.momentum == 0.0
    optimizer.learning_rate = -0.0
    with pytest.raises(InvalidArgumentError) as info:
        convert.to_model(spec, models.ExperimentSpec)
    assert "learning_rate" in str(info.value) and "required" in str(info.value).lower()
    spec.ClearField("early_stopping")
    assert "early_stopping" not in convert.message_to_dict(spec)
    spec.early_stopping.SetInParent()
    assert convert.message_to_dict(spec)["early_stopping"] == {}


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 11, 29, 5, 21, 7, 123456, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC),  # before the epoch
        None,
    ],
)
def test_metric_fast_paths_match_the_generic_conversion(when: datetime | None) -> None:
    """A packed batch converts both ways with its bytes kept; the direct path of stored
    single metric events out of WatchJob gives what the generic conversion gives."""
    from services.scheduler.servicer import event_to_proto

    metrics = [
        models.MetricResult(name="val_auc", value=0.75, step=7, epoch=2, split="val", time=when),
        models.MetricResult(name="train_step_loss", value=-1.5e-300, step=2**40),
    ]
    run_event = models.RunEvent(sequence=3, run_id="r", time=when, metrics=packed.pack(metrics))
    message = convert.to_proto(run_event, executor_pb2.RunEvent)
    assert list(message.metrics.metrics) == [
        convert.to_proto(m, common_pb2.MetricResult) for m in metrics
    ]
    assert convert.to_model(message, models.RunEvent) == run_event
    assert (
        packed.unpack(convert.to_model(message, models.RunEvent).metrics or models.PackedMetrics())
        == metrics
    )
    empty = models.RunEvent(sequence=4, run_id="r", metrics=models.PackedMetrics())
    assert convert.to_proto(empty, executor_pb2.RunEvent).WhichOneof("payload") == "metrics"
    for metric in metrics:
        event = models.JobEvent(sequence=9, job_id="j", time=when, metric=metric, source_sequence=3)
        assert event_to_proto(event) == convert.to_proto(event, scheduler_pb2.JobEvent)


def test_a_stored_metric_batch_reaches_each_watcher_as_it_asked() -> None:
    """One stored event holding metrics 5..7: a batch watcher gets one ``metrics`` event
    numbered 7, any other watcher three ``metric`` events numbered 5, 6 and 7; a watch
    resumed after 5 gets only 6 and 7 either way."""
    from services.scheduler.servicer import event_messages

    when = datetime(2026, 11, 29, 12, 0, 0, 250000, tzinfo=UTC)
    metrics = [models.MetricResult(name="train_step_loss", value=1 / s, step=s) for s in (1, 2, 3)]
    stored = models.JobEvent(
        sequence=7, job_id="j", time=when, metrics=packed.pack(metrics), source_sequence=2
    )
    [batch] = event_messages(stored, after=4, batch_metrics=True)
    assert (batch.sequence, batch.source_sequence, batch.time.ToDatetime(UTC)) == (7, 2, when)
    assert [m.step for m in batch.metrics.metrics] == [1, 2, 3]
    singles = event_messages(stored, after=4, batch_metrics=False)
    assert [(e.sequence, e.metric.step, e.source_sequence) for e in singles] == [
        (5, 1, 2),
        (6, 2, 2),
        (7, 3, 2),
    ]
    assert all(e.time.ToDatetime(UTC) == when for e in singles)
    [resumed] = event_messages(stored, after=5, batch_metrics=True)
    assert [m.step for m in resumed.metrics.metrics] == [2, 3]
    assert [e.sequence for e in event_messages(stored, after=5, batch_metrics=False)] == [6, 7]


def test_a_cause_or_kind_from_a_newer_peer_reads_as_unset() -> None:
    change = executor_pb2.StateChange(
        state=common_pb2.JOB_STATE_FAILED, cause=common_pb2.RunEndCause.ValueType(99)
    )
    assert convert.to_model(change, models.StateChange).cause is None
    run = executor_pb2.Run(run_id="r", end_cause=common_pb2.RUN_END_CAUSE_LOST_LEASE)
    assert convert.to_model(run, models.Run).end_cause is models.RunEndCause.LOST_LEASE
    violation = governance_pb2.Violation(
        field="x", constraint="c", kind=governance_pb2.ViolationKind.ValueType(42)
    )
    assert convert.to_model(violation, models.Violation).kind is None


def test_a_message_field_given_as_none_stays_unset() -> None:
    """A tool's report dumps optional messages it has not (a built-in model's source) as
    None: unset in the proto, not an error."""
    message = convert.dict_to_proto({"seed": 3, "source": None}, common_pb2.Provenance)
    assert message.seed == 3 and not message.HasField("source")
