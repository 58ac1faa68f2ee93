"""What a new user hit at the edges of `arc` (issue 22): bad YAML is a message and exit 4,
not a traceback; a reader that leaves (`arc ... | head`) is no error; global options work
after the command's name too."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clients import cli
from clients.cli_args import parser
from clients.display import Out


def test_bad_yaml_is_an_invalid_request_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n  lr: [0.1\n")
    assert cli.main(["--home", str(tmp_path), "submit", str(spec)]) == 4
    said = capsys.readouterr().err
    assert "is not valid YAML or JSON (line 2" in said and "Traceback" not in said
    spec.write_text("just a string\n")
    assert cli.main(["--home", str(tmp_path), "submit", str(spec)]) == 4
    assert "holds no proposal" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def reader_left(args: argparse.Namespace, out: Out) -> int:
        raise BrokenPipeError

    monkeypatch.setitem(cli.COMMANDS, "queue", reader_left)
    assert cli.main(["queue"]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--port-base", "6000", "status", "job-1"],
        ["status", "job-1", "--json", "--port-base", "6000"],
        ["--port-base", "6000", "status", "--json", "job-1"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.json, args.port_base, args.job) == (True, 6000, "job-1")


def test_a_global_option_left_out_after_the_command_keeps_its_default() -> None:
    args = parser().parse_args(["patch", "apply", "x.diff", "--repo", "models"])
    assert args.json is False and args.home and args.repo == "models"
