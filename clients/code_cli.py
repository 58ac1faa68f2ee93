"""``arc patch apply`` and ``arc submit --revision``: the agent loop "patch, then train
that patch" as two commands; and how a job's failure reads in ``arc status``/``watch``."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path

from arc_common import errors
from arc_common.models import CodeSource, ExperimentSpec, Failure, parse_model
from clients.cli_base import client_for
from clients.display import Out


def with_revision(spec: ExperimentSpec, args: argparse.Namespace) -> ExperimentSpec:
    """The spec with ``--revision`` / ``--repository`` / ``--entrypoint`` applied."""
    given = {
        name: value
        for name, value in (
            ("revision", args.revision),
            ("repository", args.repository),
            ("entrypoint", args.entrypoint),
        )
        if value
    }
    if spec.source is None and not args.entrypoint:
        if given:
            raise errors.InvalidArgumentError(
                "--revision and --repository need a spec with source, or --entrypoint",
                field="source",
            )
        return spec
    base = spec.source.model_dump() if spec.source else {"repository": "models"}
    # Validated again, as the scheduler will: a bad revision is refused here by name; the
    # commit is the scheduler's to set.
    fields = base | given | {"commit": "", "tree": ""}
    checked = parse_model(CodeSource, fields, prefix="source")
    return spec.model_copy(update={"source": checked})


def failure_lines(failure: Failure | None) -> list[str]:
    if failure is None or failure.failure_class is None:
        return []
    where = f" at {failure.file}:{failure.line}" if failure.file else ""
    lines = [f"{'failure':12} {failure.failure_class.value.upper()}{where}"]
    if failure.summary:
        lines.append(f"{'':12} {failure.summary}")
    return lines


def _read(file: str) -> str:
    return sys.stdin.read() if file == "-" else Path(file).read_text()


async def cmd_patch(args: argparse.Namespace, out: Out) -> int:
    text = await asyncio.to_thread(_read, args.file)
    request_id = args.request_id or "patch-" + hashlib.sha256(text.encode()).hexdigest()[:24]
    async with client_for(args) as client:
        applied = await client.tools.apply_patch(
            args.repo, text, message=args.message, request_id=request_id
        )
    if out.json:
        out.data(applied)
        return 0
    files = ", ".join(applied["files_changed"])
    print(
        f"{applied['commit_sha']}  {args.repo}: {files} "
        f"(+{applied['lines_added']} -{applied['lines_removed']})"
    )
    print(f"train it: arc submit SPEC --revision {applied['commit_sha']}")
    return 0
