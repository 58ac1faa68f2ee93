"""Repository code in the trainer: the spec's entrypoints imported from the read-only
export of its commit (and from nowhere else in the workspace), the model checked on a
dummy batch before training, and every failure given a class an agent can act on."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arc_common.models import ArchitectureSpec, CodeSource, Failure, FailureClass
from services.executor.trainer.data import DataError
from services.executor.trainer.models import InitMismatch, PretrainedWeightsMissing, UnknownVariant

SPEC_ERRORS = (PretrainedWeightsMissing, UnknownVariant, InitMismatch)


class CodeError(Exception):
    """The repository's code broke its contract (what it returned, not an exception of
    its own): ``file`` and ``line`` say where it is defined."""

    def __init__(self, message: str, *, file: str = "", line: int = 0) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


@dataclass(frozen=True)
class Code:
    root: Path
    source: CodeSource
    build_model: Callable[..., Any]
    loss: Callable[..., Any] | None = None
    transforms: Callable[..., Any] | None = None
    param_groups: Callable[..., Any] | None = None


def _under(path: str | Path, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def _where(obj: Any, root: Path) -> tuple[str, int]:
    try:
        file = inspect.getsourcefile(obj) or ""
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return "", 0
    return (str(Path(file).resolve().relative_to(root)), line) if _under(file, root) else ("", 0)


def load(source_dir: str, source: CodeSource, workspace: str) -> Code:
    """Import the source's entrypoints from ``source_dir`` only."""
    root = Path(source_dir).resolve()
    home = Path(workspace).resolve()
    sys.path[:] = [p for p in sys.path if not _under(p or ".", home)]
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    found: dict[str, Callable[..., Any]] = {}
    for name, entry in source.entries().items():
        module_name, _, attribute = entry.partition(":")
        top = sys.modules.get(module_name.split(".")[0])
        if top is not None and not _under(getattr(top, "__file__", None) or "/", root):
            raise CodeError(
                f"source.{name} {entry!r}: the package name {module_name.split('.')[0]!r} is "
                "taken by the engine or a library; rename the repository's package"
            )
        module = importlib.import_module(module_name)
        value = getattr(module, attribute, None)
        if not callable(value):
            raise CodeError(
                f"source.{name} {entry!r}: {module_name} has no function {attribute!r}",
                file=_where(module, root)[0],
            )
        found[name] = value
    return Code(
        root=root,
        source=source,
        build_model=found["entrypoint"],
        loss=found.get("loss"),
        transforms=found.get("transforms"),
        param_groups=found.get("param_groups"),
    )


def call(function: Callable[..., Any], **offered: Any) -> Any:
    """``function`` with the keyword arguments it accepts among ``offered``."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return function(**offered)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return function(**offered)
    names = {p.name for p in parameters}
    return function(**{k: v for k, v in offered.items() if k in names})


def build(code: Code, spec: ArchitectureSpec, size: int) -> nn.Module:
    """The entrypoint's model, checked to give ``num_classes`` logits for a dummy batch."""
    model = call(code.build_model, **spec.model_dump())
    file, line = _where(code.build_model, code.root)
    entry = code.source.entrypoint
    if not isinstance(model, nn.Module):
        raise CodeError(
            f"source.entrypoint {entry!r} returned {type(model).__name__}, not a torch.nn.Module",
            file=file,
            line=line,
        )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    model.train(was_training)
    expected = (2, spec.num_classes)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != expected:
        raise CodeError(
            f"source.entrypoint {entry!r}: the model gave "
            f"{shape if shape is not None else type(out).__name__} for a batch of 2 images of "
            f"3x{size}x{size}; expected logits of shape {expected} "
            "(architecture.num_classes per image)",
            file=file,
            line=line,
        )
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _out_of_memory(exc: BaseException) -> bool:
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return isinstance(exc, MemoryError) or (
        isinstance(cuda_oom, type) and isinstance(exc, cuda_oom)
    )


def _in_data(frames: list[traceback.FrameSummary], exc: BaseException) -> bool:
    if isinstance(exc, DataError):
        return True
    if not isinstance(exc, OSError):
        return False
    readers = ("/PIL/", "torchvision/datasets", "trainer/data.py")
    return any(reader in f.filename for f in frames for reader in readers)


def classify(exc: BaseException, source_dir: str = "") -> Failure:
    """What kind of failure ``exc`` is, and where it was raised."""
    root = Path(source_dir).resolve() if source_dir else None
    frames = traceback.extract_tb(exc.__traceback__)
    kind, file, line = FailureClass.INFRASTRUCTURE, "", 0
    in_code = [f for f in frames if root is not None and _under(f.filename, root)]
    if isinstance(exc, CodeError):
        kind, file, line = FailureClass.CODE_ERROR, exc.file, exc.line
    elif _out_of_memory(exc):
        kind = FailureClass.OUT_OF_MEMORY
    elif (
        isinstance(exc, SyntaxError)
        and root is not None
        and exc.filename
        and _under(exc.filename, root)
    ):
        kind = FailureClass.CODE_ERROR
        file, line = str(Path(exc.filename).resolve().relative_to(root)), exc.lineno or 0
    elif in_code:
        last = in_code[-1]
        kind, file, line = FailureClass.CODE_ERROR, last.filename, last.lineno or 0
        file = str(Path(file).resolve().relative_to(root)) if root is not None else file
    elif isinstance(exc, SPEC_ERRORS):
        kind = FailureClass.SPEC_INVALID
    elif _in_data(frames, exc):
        kind = FailureClass.DATA_ERROR
    return Failure(
        failure_class=kind,
        exception_type=type(exc).__name__,
        message=str(exc)[:2000],
        file=file,
        line=line,
    )
