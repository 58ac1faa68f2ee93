"""How the trainer child names its own failure (the executor's end cause comes from it)."""

from __future__ import annotations

import torch

from services.executor.trainer.__main__ import _out_of_memory


def test_running_out_of_host_or_device_memory_is_oom() -> None:
    assert _out_of_memory(MemoryError())
    assert _out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))


def test_any_other_error_is_not_oom() -> None:
    assert not _out_of_memory(RuntimeError("out of memory"))  # only the type counts
    assert not _out_of_memory(ValueError("bad input"))
