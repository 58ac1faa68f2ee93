"""The declarative policy: which tools, which parameter values, how much per caller.

A policy file is YAML in the workspace. Loading validates it fully; a broken file raises
``PolicyError`` with the line and the reason, so the caller can keep the old policy.
Evaluation returns every violation at once, each with a value that would pass.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from arc_common.models import Tool, ViolationKind, describe_errors
from arc_common.paths import check_relative_path

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")


class PolicyError(Exception):
    """The policy file cannot be used; ``line`` is 1-based when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class Constraint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None
    one_of: list[str | int | float] | None = None
    path_prefixes: list[str] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _something(self) -> Constraint:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("a constraint needs min, max, one_of, path_prefixes or max_length")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class PatchLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_files: Annotated[int, Field(ge=1)] = 5
    max_lines: Annotated[int, Field(ge=1)] = 400
    path_globs: list[str] = Field(default_factory=lambda: ["**"])
    # File modes other than a plain 100644 file, refused unless allowed here.
    allow_executables: bool = False
    allow_mode_changes: bool = False


class ToolPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed: bool = True
    constraints: dict[str, Constraint] = Field(default_factory=dict)
    patch: PatchLimits | None = None


class CallerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_hours_per_cycle: Annotated[float, Field(ge=0)] | None = None
    max_concurrent_jobs: Annotated[int, Field(ge=0)] | None = None
    calls_per_minute: Annotated[int, Field(ge=0)] | None = None


def _sealed_root(value: str) -> str:
    try:
        return check_relative_path(value)
    except ValueError as exc:
        raise ValueError(f"a sealed dataset {exc} (got {value!r})") from None


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    version: str = "1"
    callers: dict[str, CallerPolicy] = Field(default_factory=dict)
    tools: dict[Tool, ToolPolicy] = Field(default_factory=dict)
    # Datasets (workspace-relative folders with train/, val/, test/) whose test split
    # agents may not read and whose jobs' test figures stay sealed (arc_common.sealing).
    sealed_test: Annotated[
        list[Annotated[str, AfterValidator(_sealed_root)]], Field(max_length=64)
    ] = Field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    gpu_hours_per_cycle: float
    max_concurrent_jobs: int
    calls_per_minute: int


@dataclass(frozen=True)
class PolicyViolation:
    field: str
    constraint: str
    actual: str
    suggested: str = ""
    # A value no rule can be checked against is MALFORMED; every other breach is POLICY.
    kind: ViolationKind = ViolationKind.POLICY


class Policy:
    def __init__(self, document: PolicyDocument, digest: str) -> None:
        self.document = document
        self.version = f"{document.version}+{digest[:12]}"

    @classmethod
    def parse(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            reason = getattr(exc, "problem", None) or str(exc)
            raise PolicyError(
                f"{source} is not valid YAML: {reason}",
                line=mark.line + 1 if mark is not None else None,
            ) from None
        if not isinstance(raw, dict):
            raise PolicyError(f"{source} must be a mapping with 'tools' and 'callers'", line=1)
        try:
            document = PolicyDocument.model_validate(raw)
        except ValidationError as exc:
            path, message = describe_errors(exc)[0]
            loc = exc.errors()[0]["loc"]
            raise PolicyError(f"{source}: {path}: {message}", line=_line_of(text, loc)) from None
        return cls(document, hashlib.sha256(text.encode()).hexdigest())

    @classmethod
    def load(cls, path: Path) -> Policy:
        return cls.parse(path.read_text(), source=str(path))

    def tool(self, tool: Tool) -> ToolPolicy | None:
        return self.document.tools.get(tool)

    def limits(self, caller: str) -> Limits:
        default = self.document.callers.get("default", CallerPolicy())
        own = self.document.callers.get(caller, CallerPolicy())

        def pick(name: str, fallback: float) -> float:
            value = getattr(own, name)
            if value is None:
                value = getattr(default, name)
            return fallback if value is None else float(value)

        return Limits(
            gpu_hours_per_cycle=pick("gpu_hours_per_cycle", math.inf),
            max_concurrent_jobs=int(pick("max_concurrent_jobs", 1_000_000)),
            calls_per_minute=int(pick("calls_per_minute", 1_000_000)),
        )

    def evaluate(self, tool: Tool, parameters: dict[str, Any]) -> list[PolicyViolation]:
        """Every violation of the tool's rules by these parameters."""
        rules = self.tool(tool)
        if rules is None or not rules.allowed:
            return [
                PolicyViolation(
                    field="tool",
                    constraint="tool is denied by the policy"
                    if rules is not None
                    else "tool is not listed in the policy",
                    actual=tool.value,
                )
            ]
        violations: list[PolicyViolation] = []
        for path, constraint in rules.constraints.items():
            found, value = lookup(parameters, path)
            if not found or value is None:
                continue
            for index, item in enumerate(value if isinstance(value, list) else [value]):
                field = f"{path}[{index}]" if isinstance(value, list) else path
                violations.extend(_check(field, constraint, item))
        if rules.patch is not None:
            violations.extend(
                check_patch(
                    rules.patch,
                    str(parameters.get("patch", "")),
                    files=parameters.get("files"),
                    changes=parameters.get("changes"),
                )
            )
        return violations


def lookup(data: Any, path: str) -> tuple[bool, Any]:
    current = data
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


def _fmt(value: float) -> str:
    return f"{value:g}"


def _check(field: str, constraint: Constraint, value: Any) -> list[PolicyViolation]:
    out: list[PolicyViolation] = []
    if constraint.min is not None or constraint.max is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(
                PolicyViolation(
                    field, "must be a number", repr(value), kind=ViolationKind.MALFORMED
                )
            )
        elif not math.isfinite(value):
            suggestion = constraint.max if constraint.max is not None else constraint.min
            out.append(
                PolicyViolation(
                    field,
                    "must be finite",
                    str(value),
                    _fmt(suggestion or 0.0),
                    kind=ViolationKind.MALFORMED,
                )
            )
        else:
            if constraint.min is not None and value < constraint.min:
                out.append(
                    PolicyViolation(
                        field, f">= {_fmt(constraint.min)}", _fmt(value), _fmt(constraint.min)
                    )
                )
            if constraint.max is not None and value > constraint.max:
                out.append(
                    PolicyViolation(
                        field, f"<= {_fmt(constraint.max)}", _fmt(value), _fmt(constraint.max)
                    )
                )
    if constraint.one_of is not None and value not in constraint.one_of:
        allowed = ", ".join(str(v) for v in constraint.one_of)
        out.append(
            PolicyViolation(field, f"one of [{allowed}]", str(value), str(constraint.one_of[0]))
        )
    if constraint.path_prefixes is not None:
        text = str(value)
        if not any(text.startswith(prefix) for prefix in constraint.path_prefixes):
            name = text.rstrip("/").rsplit("/", 1)[-1] or "dataset"
            out.append(
                PolicyViolation(
                    field,
                    "path under one of [" + ", ".join(constraint.path_prefixes) + "]",
                    text,
                    constraint.path_prefixes[0].rstrip("/") + "/" + name,
                )
            )
    if constraint.max_length is not None and len(str(value)) > constraint.max_length:
        out.append(
            PolicyViolation(
                field,
                f"at most {constraint.max_length} characters",
                f"{len(str(value))} characters",
                str(value)[: constraint.max_length],
            )
        )
    return out


@dataclass(frozen=True)
class PatchStats:
    files: list[str]
    added: int
    removed: int


def patch_stats(patch: str) -> PatchStats:
    """Files and changed lines of a unified diff (from its headers and hunks)."""
    files: list[str] = []
    added = removed = 0
    source = ""
    for line in patch.splitlines():
        if line.startswith("--- "):
            source = line[4:].split("\t", 1)[0].strip()
        elif line.startswith("+++ "):
            target = line[4:].split("\t", 1)[0].strip()
            # A deleted file has target /dev/null: the path is the source's.
            path = source if target == "/dev/null" else target
            files.append(path.removeprefix("a/").removeprefix("b/"))
        elif line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    return PatchStats(list(dict.fromkeys(files)), added, removed)


def check_patch(
    limits: PatchLimits, patch: str, *, files: Any = None, changes: Any = None
) -> list[PolicyViolation]:
    """``files`` and ``changes``: every old and new path and its modes, as git parsed the
    patch (the executor sends them); checked together with the paths of the patch text."""
    stats = patch_stats(patch)
    given = files if isinstance(files, list) else []
    paths = list(dict.fromkeys([*stats.files, *(str(f) for f in given)]))
    out: list[PolicyViolation] = []
    if len(paths) > limits.max_files:
        out.append(
            PolicyViolation(
                "patch",
                f"at most {limits.max_files} files",
                f"{len(paths)} files",
                f"split into patches of at most {limits.max_files} files",
            )
        )
    lines = stats.added + stats.removed
    if lines > limits.max_lines:
        out.append(
            PolicyViolation(
                "patch",
                f"at most {limits.max_lines} changed lines",
                f"{lines} lines",
                f"split into patches of at most {limits.max_lines} lines",
            )
        )
    for path in paths:
        if not any(fnmatch.fnmatch(path, glob) for glob in limits.path_globs):
            out.append(
                PolicyViolation(
                    "patch.files",
                    "paths matching [" + ", ".join(limits.path_globs) + "]",
                    path,
                )
            )
    for change in changes if isinstance(changes, list) else []:
        if not isinstance(change, dict):
            out.append(PolicyViolation("patch.changes", "path and modes", str(change)[:200]))
            continue
        old, new = str(change.get("old_mode", "")), str(change.get("new_mode", ""))
        path = str(change.get("path", ""))
        if new == "100755" and old != new and not limits.allow_executables:
            out.append(PolicyViolation("patch.changes", "no executable files", f"{path} {new}"))
        elif old not in ("", "000000") and new not in ("", "000000", old):
            if not limits.allow_mode_changes:
                out.append(
                    PolicyViolation("patch.changes", "no mode changes", f"{path} {old}->{new}")
                )
        elif new not in ("", "000000", "100644", "100755"):
            out.append(PolicyViolation("patch.changes", "regular files only", f"{path} {new}"))
    return out


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or its closest parent)."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line
