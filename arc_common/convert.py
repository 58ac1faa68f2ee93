"""Proto <-> domain model conversion, driven by the descriptors instead of hand-written maps.

Rules (the models follow them, see ``arc_common.models``):
- field names are equal on both sides;
- an enum value ``PREFIX_NAME`` is the string ``"name"``; ``*_UNSPECIFIED`` is "not set";
- a scalar without presence that holds its zero value is "not set", so the model's default
  applies (proto3 cannot tell 0 from absent); fields where 0 is meaningful and the default is
  not are declared ``optional`` in the proto and keep their presence;
- Timestamp <-> aware ``datetime``, Struct <-> ``dict``;
- a MetricBatch <-> ``PackedMetrics``: the batch stays serialized (``arc_common.packed``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel

from arc_common.errors import InvalidArgumentError
from arc_common.models import MetricResult, parse_model

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Message)
V = TypeVar("V", bound=int)

# Descriptors are typed loosely on purpose: protobuf's stubs make every nested descriptor
# Optional and split pure-Python and upb classes, which adds noise without safety here.
_Descriptor = Any

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STRUCT = Struct.DESCRIPTOR.full_name
_METRIC_BATCH = "arc.common.v1.MetricBatch"


_PREFIXES: dict[_Descriptor, str] = {}


def enum_prefix(enum: _Descriptor) -> str:
    """``ARCHITECTURE_FAMILY_`` for ArchitectureFamily (taken from its zero value)."""
    prefix = _PREFIXES.get(enum)
    if prefix is None:
        zero: str = enum.values_by_number[0].name
        prefix = _PREFIXES[enum] = zero.removesuffix("UNSPECIFIED")
    return prefix


def enum_to_str(enum: _Descriptor, number: int) -> str | None:
    if number == 0:
        return None
    value = enum.values_by_number.get(number)
    if value is None:  # a newer client's value this server does not know
        return f"unknown_{number}"
    name: str = value.name
    return name.removeprefix(enum_prefix(enum)).lower()


def enum_from_str(enum: _Descriptor, value: str) -> int:
    name = enum_prefix(enum) + str(value).upper()
    found = enum.values_by_name.get(name)
    if found is None:
        raise ValueError(f"{value!r} is not a value of {enum.full_name}")
    return int(found.number)


E = TypeVar("E", bound=Enum)


def enum_value(enum: _EnumTypeWrapper[V], value: Enum | str) -> V:
    """The proto number of a model value, typed as the generated enum's values:
    ``enum_value(governance_pb2.Mode, Mode.LOCKED)`` is ``MODE_LOCKED``."""
    name = value.value if isinstance(value, Enum) else value
    try:
        return enum.Value(enum_prefix(enum.DESCRIPTOR) + str(name).upper())
    except ValueError:
        raise ValueError(f"{name!r} is not a value of {enum.DESCRIPTOR.full_name}") from None


def enum_member(enum: _EnumTypeWrapper[V], number: V, model_enum: type[E]) -> E:
    """The model value of a proto number, the reverse of ``enum_value``; ValueError when the
    number is unset or has no model value."""
    name = enum_to_str(enum.DESCRIPTOR, number)
    if name is None:
        raise ValueError(f"{enum.DESCRIPTOR.full_name} is not set")
    return model_enum(name)


def enum_field(
    message: Message, name: str, enum_cls: type[E], *, default: E | None = None, path: str = ""
) -> E:
    """A request's enum field as a model enum; unset gives ``default``, unknown values and
    unset-without-default are INVALID_ARGUMENT naming the field (``path`` when nested)."""
    label = path or name
    field = message.DESCRIPTOR.fields_by_name[name]
    value = enum_to_str(field.enum_type, getattr(message, name))
    if value is None and default is not None:
        return default
    allowed = ", ".join(m.name for m in enum_cls)
    if value is None:
        raise InvalidArgumentError(f"{label} is required (one of {allowed})", field=label)
    try:
        return enum_cls(value)
    except ValueError:
        raise InvalidArgumentError(
            f"{label} {getattr(message, name)} is not a known value (one of {allowed})",
            field=label,
        ) from None


def _is_map(field: _Descriptor) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )


def _is_repeated(field: _Descriptor) -> bool:
    return bool(field.is_repeated)


def _scalar_out(field: _Descriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_to_str(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    return value


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A Struct as plain Python; unlike json_format it keeps NaN and infinities, so the
    caller's validation (not the decoder) says what is wrong with them."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def message_to_dict(message: Message) -> Any:
    """A plain dict (or datetime / dict for well-known types) ready for ``model_validate``."""
    descriptor: _Descriptor = message.DESCRIPTOR
    if descriptor.full_name == _TIMESTAMP:
        assert isinstance(message, Timestamp)
        return _EPOCH + timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)
    if descriptor.full_name == _STRUCT:
        assert isinstance(message, Struct)
        return struct_to_dict(message)
    if descriptor.full_name == _METRIC_BATCH:
        return {"count": len(getattr(message, "metrics")), "data": message.SerializeToString()}  # noqa: B009
    out: dict[str, Any] = {}
    # Only the fields that are set (protobuf lists them in C): a field with presence that
    # is set, a non-empty repeated field or map, a scalar or enum that is not zero.
    field: _Descriptor
    for field, value in message.ListFields():
        kind = _kind(field)
        if kind == _SCALAR:
            if value != field.default_value:  # -0.0 is listed, and is "not set" here too
                out[field.name] = value
        elif kind == _PRESENT:
            out[field.name] = _scalar_out(field, value)
        elif kind == _ENUM:
            out[field.name] = enum_to_str(field.enum_type, value)
        elif kind == _REPEATED:
            out[field.name] = [_scalar_out(field, v) for v in value]
        else:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar_out(value_field, v) for k, v in value.items()}
    return out


# How each field converts, worked out once per field (descriptors live as long as the
# process): asking a descriptor for its options on every message was most of the cost.
_SCALAR, _PRESENT, _ENUM, _REPEATED, _MAP = range(5)
_KINDS: dict[_Descriptor, int] = {}
_FIELDS: dict[_Descriptor, dict[str, tuple[_Descriptor, int]]] = {}  # by name, per message


def _kind(field: _Descriptor) -> int:
    kind = _KINDS.get(field)
    if kind is not None:
        return kind
    if _is_map(field):
        kind = _MAP
    elif _is_repeated(field):
        kind = _REPEATED
    elif field.has_presence:
        kind = _PRESENT
    elif field.type == FieldDescriptor.TYPE_ENUM:
        kind = _ENUM
    else:
        kind = _SCALAR
    _KINDS[field] = kind
    return kind


def to_model(message: Message, cls: type[M], *, prefix: str = "") -> M:
    """Proto -> validated model; InvalidArgumentError names every bad field (under ``prefix``)."""
    return parse_model(cls, message_to_dict(message), prefix=prefix)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value if v is not None}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _set_scalar(field: _Descriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_from_str(field.enum_type, value)
    return value


def _fill_message(message: Message, data: Any) -> None:
    descriptor: _Descriptor = message.DESCRIPTOR
    if descriptor.full_name == _TIMESTAMP:
        assert isinstance(message, Timestamp)
        set_timestamp(message, data)
        return
    if descriptor.full_name == _STRUCT:
        assert isinstance(message, Struct)
        message.update(data)
        return
    if descriptor.full_name == _METRIC_BATCH:
        message.MergeFromString(data.get("data", b""))
        return
    fields = _FIELDS.get(descriptor)
    if fields is None:
        fields = _FIELDS[descriptor] = {f.name: (f, _kind(f)) for f in descriptor.fields}
    for name, value in data.items():
        found = fields.get(name)
        if found is None:
            raise KeyError(f"{descriptor.full_name} has no field {name!r}")
        field, kind = found
        if kind == _MAP:
            target = getattr(message, name)
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill_message(target[key], item)
                else:
                    target[key] = _set_scalar(value_field, item)
        elif kind == _REPEATED:
            target = getattr(message, name)
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill_message(target.add(), item)
                else:
                    target.append(_set_scalar(field, item))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if value is None:  # an optional message not given: left unset
                continue
            child = getattr(message, name)
            _fill_message(child, value)
            child.SetInParent()  # set, even when all it holds is empty
        else:
            setattr(message, name, _set_scalar(field, value))


def set_timestamp(message: Timestamp, when: datetime) -> None:
    """``Timestamp.FromDatetime`` without its detours (a naive time is UTC)."""
    delta = (when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH
    message.seconds = delta.days * 86_400 + delta.seconds
    message.nanos = delta.microseconds * 1000


def fill_metric(message: Any, metric: MetricResult) -> None:
    """A metric into its message by direct assignment: the one payload a training sends by
    the thousand (``to_proto`` gives the same message, field by field, more slowly)."""
    message.name = metric.name
    message.value = metric.value
    message.step = metric.step
    message.epoch = metric.epoch
    message.split = metric.split
    if metric.time is not None:
        set_timestamp(message.time, metric.time)


def metric_to_dict(message: Any) -> dict[str, Any]:
    """A metric message as ``message_to_dict`` gives it, by direct reads."""
    out: dict[str, Any] = {
        "name": message.name,
        "value": message.value,
        "step": message.step,
        "epoch": message.epoch,
        "split": message.split,
    }
    if message.HasField("time"):
        out["time"] = _EPOCH + timedelta(
            seconds=message.time.seconds, microseconds=message.time.nanos // 1000
        )
    return out


def to_proto(model: BaseModel, cls: type[P]) -> P:
    """Model -> proto message of ``cls``; unset (None) fields stay unset."""
    message = cls()
    # pydantic's own (compiled) dump: unset fields left out, enums as their str values
    _fill_message(message, model.model_dump(exclude_none=True))
    return message


def dict_to_proto(data: dict[str, Any], cls: type[P]) -> P:
    """A plain dict in model shape (enum values as strings) -> proto message."""
    message = cls()
    _fill_message(message, _plain(data))
    return message
