"""Preprocessing parameters are typed and bounded per step; a malformed metadata file
lists a checkpoint without metrics; the ledger binds a request id to its body."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from pydantic import ValidationError

from arc.executor.v1 import executor_pb2
from arc_common.digest import message_digest
from arc_common.errors import AlreadyExistsError
from arc_common.ledger import RequestLedger
from arc_common.models import PreprocessingChain
from services.executor.tools.checkpoints import list_checkpoints


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"type": "clahe", "params": {"grid": 0}}, "params.grid"),
        ({"type": "clahe", "params": {"grid": 2.5}}, "params.grid"),
        ({"type": "clahe", "params": {"clip_limit": 0}}, "params.clip_limit"),
        ({"type": "resize", "params": {"size": 2**31}}, "params.size"),
        ({"type": "resize", "params": {"size": "abc"}}, "params.size"),
        ({"type": "resize", "params": {"size": True}}, "params.size"),
        ({"type": "center_crop", "params": {"size": -1}}, "params.size"),
        ({"type": "normalize", "params": {"std": [1, 0, 1]}}, "params.std"),
        ({"type": "normalize", "params": {"mean": list(range(100))}}, "params.mean"),
        ({"type": "rotation", "params": {"degrees": 1e300}}, "params.degrees"),
        ({"type": "horizontal_flip", "params": {"p": 2}}, "params.p"),
        ({"type": "random_resized_crop", "params": {"min_scale": 0}}, "params.min_scale"),
        ({"type": "green_channel", "params": {"size": 3}}, "size"),
        ({"type": "resize", "params": {"sise": 3}}, "sise"),
    ],
)
def test_out_of_bounds_step_parameters_are_refused(step: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PreprocessingChain.model_validate({"steps": [step]})
    assert field in str(info.value)
    assert info.value.errors()[0]["loc"] == ("steps", 0, "params")


def test_bounded_step_parameters_pass() -> None:
    chain = PreprocessingChain.model_validate(
        {
            "steps": [
                {"type": "resize", "params": {"size": 32.0}},  # a Struct's number
                {"type": "clahe", "params": {"grid": 8, "clip_limit": 2.0}},
                {"type": "normalize", "params": {"mean": [0.5, 0.5, 0.5], "std": [0.2] * 3}},
                {"type": "green_channel"},
            ]
        }
    )
    assert len(chain.steps) == 4


def test_malformed_metadata_lists_the_checkpoint_without_it(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "j" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"weights")
    (folder / "best.pt.json").write_text('{"path": 3, "epoch": "many"')
    (folder / "last.pt").write_bytes(b"weights")
    (folder / "last.pt.json").write_bytes(b"\xff\xfe")
    listed = list_checkpoints(folder, tmp_path)
    assert [c.path for c in listed] == ["runs/j/checkpoints/best.pt", "runs/j/checkpoints/last.pt"]
    assert all(c.metrics == {} and c.size_bytes == 7 for c in listed)


async def test_a_request_id_is_bound_to_its_body(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "ledger.sqlite3") as db:
        ledger = RequestLedger(db)
        await ledger.open()
        calls: list[str] = []

        async def call(paths: list[str]) -> executor_pb2.DeleteCheckpointResponse:
            calls.append(paths[0])
            return executor_pb2.DeleteCheckpointResponse(deleted_paths=paths)

        first = executor_pb2.DeleteCheckpointRequest(request_id="r", path="runs/a.pt")
        other = executor_pb2.DeleteCheckpointRequest(request_id="r", path="runs/b.pt")
        response = executor_pb2.DeleteCheckpointResponse

        async def once(request: executor_pb2.DeleteCheckpointRequest) -> object:
            return await ledger.once(
                "agent:DeleteCheckpoint:r",
                response,
                lambda: call([request.path]),
                digest=message_digest(request),
                request_id="r",
            )

        assert await once(first) == response(deleted_paths=["runs/a.pt"])
        assert await once(first) == response(deleted_paths=["runs/a.pt"])  # a replay
        with pytest.raises(AlreadyExistsError) as info:
            await once(other)
        assert info.value.field == "request_id"
        assert calls == ["runs/a.pt"]
