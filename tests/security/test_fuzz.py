"""Generated requests for every RPC of every service: never INTERNAL or UNKNOWN, never a
crashed service. Strategies are built from the proto descriptors, so a new field or RPC is
fuzzed without touching this file. Free-form parameters (a tool call's ``parameters``, a
preprocessing step's ``params``) are drawn from the names the tools and the policy read,
with hostile values; raw bodies that are not the method's message are sent too."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from arc.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.security.suite import ProcessSuite

LONG = bool(os.environ.get("ARC_TEST_LONG"))
EXAMPLES = 10_000 if LONG else int(os.environ.get("ARC_FUZZ", "500"))
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

SERVICES = [
    ("scheduler", scheduler_pb2, scheduler_pb2_grpc, "SchedulerService"),
    ("gpu_manager", gpu_pb2, gpu_pb2_grpc, "GpuManagerService"),
    ("governance", governance_pb2, governance_pb2_grpc, "GovernanceService"),
    ("executor", executor_pb2, executor_pb2_grpc, "ExecutorService"),
]

STUBS = {name: getattr(module, f"{service}Stub") for name, _, module, service in SERVICES}

# Calls that would change the suite for every later example are steered off.
SKIP = {"SetMode"}

TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "..",
            "../../etc/passwd",
            "/etc/passwd",
            "datasets/fundus",
            "runs/x/checkpoints/best.pt",
            "$(touch /tmp/arc-fuzz)",
            "a;b|c&&d",
            "x" * 300,
            "\x00",
            "resnet18",
            "GPU0",
            "job-1",
        ]
    ),
)
FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -1.0, 1e-3, 0.5, 1.0, 1e308]),
)

# Names a tool, the trainer's transforms or the policy read out of a Struct.
PARAMETER_NAMES = [
    # preprocessing steps
    "size", "grid", "clip_limit", "p", "degrees", "brightness", "contrast", "saturation",
    "min_scale", "mean", "std",
    # tool calls as governance sees them
    "gpu_allocation", "gpu_count", "gpu_indices", "max_training_time_seconds",
    "hyperparameters", "optimizer", "learning_rate", "batch_size", "epochs", "architecture",
    "family", "dataset", "data_path", "checkpoint_path", "input_path", "output_path",
    "bootstrap_samples", "num_images", "output_dir", "dataset_ids", "direction", "action",
    "path", "checkpoint_dir", "keep_best", "metric", "repository", "patch", "message",
    "files", "chain", "steps", "type", "params",
]  # fmt: skip
HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**53, 2**63 - 1, -(2**63), 1e308, -1e308, 0.5, 1e-320]
).map(float) | st.floats(allow_nan=True, allow_infinity=True)
HOSTILE_LEAF = st.one_of(
    TEXT,
    HOSTILE_NUMBERS,
    st.booleans(),
    st.none(),
    st.sampled_from(["abc", "nan", "inf", "-1", "1e999", "resnet", "push", "delete"]),
)
PARAMETERS = st.recursive(
    HOSTILE_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(PARAMETER_NAMES) | TEXT, children, max_size=5),
    ),
    max_leaves=12,
).map(lambda value: value if isinstance(value, dict) else {"value": value})


def _ints(field: Any) -> st.SearchStrategy[int]:
    bits = (
        64
        if field.type
        in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
        else 32
    )
    bound = 2 ** (bits - 1) - 1
    return st.one_of(st.integers(-bound - 1, bound), st.sampled_from([0, 1, -1, 5, 10, 11]))


def message_strategy(descriptor: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = field_strategy(field, depth)
        if value is not None:
            fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def field_strategy(field: Any, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full = field.message_type.full_name
        base: st.SearchStrategy[Any]
        if field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            inner = scalar(value) if value.type != FieldDescriptor.TYPE_MESSAGE else None
            return st.dictionaries(TEXT, inner, max_size=3) if inner is not None else None
        if full == "google.protobuf.Timestamp":
            base = st.fixed_dictionaries(
                {"seconds": st.integers(0, 4_000_000_000), "nanos": st.integers(0, 999_999_999)}
            )
        elif full == "google.protobuf.Struct":
            base = PARAMETERS
        elif depth >= 3:
            return None
        else:
            base = message_strategy(field.message_type, depth + 1)
    else:
        base = scalar(field)
    if field.is_repeated:
        return st.lists(base, max_size=3)
    return base


def scalar(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOAT
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 100)
        )
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return _ints(field)


def build(cls: type[Message], data: dict[str, Any]) -> Message:
    message = cls()
    _fill(message, data)
    return message


def _fill(message: Message, data: dict[str, Any]) -> None:
    descriptor: Any = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.seconds, message.nanos = data["seconds"], data["nanos"]  # type: ignore[attr-defined]
        return
    if descriptor.full_name == "google.protobuf.Struct":
        message.update(data)  # type: ignore[attr-defined]
        return
    for name, value in data.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                target[key] = item
        elif field.is_repeated:
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(target, value)
            target.SetInParent()
        else:
            setattr(message, name, value)


def rpcs() -> list[tuple[str, str, Any, Any, Any]]:
    out = []
    for name, pb2, _grpc, service in SERVICES:
        for method in pb2.DESCRIPTOR.services_by_name[service].methods:
            if method.name in SKIP:
                continue
            request = getattr(pb2, method.input_type.name)
            out.append((name, method.name, request, method.output_type, method.server_streaming))
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    home = tmp_path_factory.mktemp("fuzz")
    processes = ProcessSuite(home)
    asyncio.run(processes.start())
    yield processes
    processes.stop()


def call(stub: Any, token: str, method: str, request: Message, streaming: bool) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")]
    try:
        if streaming:
            stream = getattr(stub, method)(request, metadata=metadata, timeout=2)
            next(iter(stream), None)
            stream.cancel()
        else:
            getattr(stub, method)(request, metadata=metadata, timeout=20)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        if streaming and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return grpc.StatusCode.OK  # a live stream that simply had nothing new
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("service", "method", "request_cls", "_out", "streaming"),
    rpcs(),
    ids=[f"{r[0]}.{r[1]}" for r in rpcs()],
)
def test_generated_requests_never_internal(
    suite: ProcessSuite,
    service: str,
    method: str,
    request_cls: type[Message],
    _out: Any,
    streaming: bool,
) -> None:
    seen: dict[str, int] = {}
    token = TokenStore.load(suite.home).token_for(Role.OPERATOR)
    channel = grpc.insecure_channel(f"127.0.0.1:{suite.ports()[service]}")
    stub = STUBS[service](channel)

    @settings(
        # Reproducible in `make test`; `make test-long` (or ARC_FUZZ_RANDOM) explores anew.
        derandomize=not (LONG or os.environ.get("ARC_FUZZ_RANDOM")),
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(message_strategy(request_cls.DESCRIPTOR))
    def run(data: dict[str, Any]) -> None:
        request = build(request_cls, data)
        code = call(stub, token, method, request, streaming)
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code not in BAD, f"{service}.{method} answered {code.name} to {request}"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{service}.{method} hung on {request}"

    with channel:
        run()
    assert all(suite.alive().values()), suite.alive()
    assert not Path("/tmp/arc-fuzz").exists()
    print(f"{service}.{method}: {seen}")


# Bytes that are not a valid message: truncated lengths, bad tags, absurd nesting,
# and whatever hypothesis draws.
RAW_BODIES = st.one_of(
    st.binary(max_size=256),
    st.sampled_from([b"\x0a\x64ab", b"\xff\xff\xff\xff\x0f", b"\x08", b"\x0a" * 200, b"\x07\x01"]),
)
RAW_EXAMPLES = 10_000 if LONG else max(EXAMPLES // 5, 50)


@pytest.mark.parametrize(
    ("service", "method", "_request", "_out", "streaming"),
    rpcs(),
    ids=[f"{r[0]}.{r[1]}" for r in rpcs()],
)
def test_raw_bodies_are_invalid_argument_after_authentication(
    suite: ProcessSuite, service: str, method: str, _request: Any, _out: Any, streaming: bool
) -> None:
    pb2, service_name = next((m, svc) for n, m, _, svc in SERVICES if n == service)
    full = f"/{pb2.DESCRIPTOR.services_by_name[service_name].full_name}/{method}"
    token = TokenStore.load(suite.home).token_for(Role.OPERATOR)
    seen: dict[str, int] = {}
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()[service]}") as channel:
        unary = channel.unary_unary(full)
        stream = channel.unary_stream(full)

        def send(body: bytes, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
            try:
                if streaming:
                    replies = stream(body, metadata=metadata, timeout=2)
                    next(iter(replies), None)
                    replies.cancel()
                else:
                    unary(body, metadata=metadata, timeout=20)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                if streaming and code in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    return grpc.StatusCode.OK
                return code
            return grpc.StatusCode.OK

        @settings(
            derandomize=not (LONG or os.environ.get("ARC_FUZZ_RANDOM")),
            max_examples=RAW_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(RAW_BODIES)
        def run(body: bytes) -> None:
            anonymous = send(body, [])
            assert anonymous == grpc.StatusCode.UNAUTHENTICATED, (
                f"{method} answered {anonymous.name} to a caller without a token: {body!r}"
            )
            code = send(body, [("authorization", f"Bearer {token}")])
            seen[code.name] = seen.get(code.name, 0) + 1
            assert code not in BAD, f"{service}.{method} answered {code.name} to {body!r}"
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} hung on {body!r}"

        run()
    assert all(suite.alive().values()), suite.alive()
    print(f"raw {service}.{method}: {seen}")
