"""What every model shares: the two base classes, identifiers and workspace paths, and
the turning of a pydantic error into an InvalidArgumentError naming every field."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from arc_common.errors import InvalidArgumentError
from arc_common.paths import check_relative_path

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SPLIT_TOLERANCE = 1e-6

WorkspacePath = Annotated[str, AfterValidator(check_relative_path)]


def _optional_path(value: str) -> str:
    return check_relative_path(value) if value else value


Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class _Spec(BaseModel):
    """Inputs: strict, immutable, finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Resource(BaseModel):
    """Outputs: what services report; metric values may be NaN (a diverged loss)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_CTX_BOUND = re.compile(r"^(gt|ge|lt|le|min_length|max_length|pattern)$")


def describe_errors(exc: ValidationError, *, prefix: str = "") -> list[tuple[str, str]]:
    """Every problem as (dotted field path, message with the bound and the value given)."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = err["msg"].removeprefix("Value error, ")
        bounds = {k: v for k, v in (err.get("ctx") or {}).items() if _CTX_BOUND.match(k)}
        if err["type"] not in {"value_error", "missing"} and "input" in err:
            shown = repr(err["input"])
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message = f"{message} (got {shown})"
        elif bounds and "input" in err:
            message = f"{message} (got {err['input']!r})"
        problems.append((path or "(request)", message))
    return problems


def invalid_argument(exc: ValidationError, *, prefix: str = "") -> InvalidArgumentError:
    """One InvalidArgumentError that lists every field problem, first field named."""
    problems = describe_errors(exc, prefix=prefix)
    text = "; ".join(f"{path}: {message}" for path, message in problems)
    return InvalidArgumentError(
        text, field=problems[0][0] if problems else None, violations=problems
    )


M = TypeVar("M", bound=BaseModel)


def parse_model(cls: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate ``data`` into ``cls``; raise InvalidArgumentError naming every bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise invalid_argument(exc, prefix=prefix) from None
