"""The command line every service shares: ``--port``, ``--home``, ``--host``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar

from arc_common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def parse_service_args(
    settings_cls: type[S], *, service: str, default_port: int, argv: Sequence[str] | None = None
) -> S:
    """Settings from the environment, overridden by the command line."""
    parser = argparse.ArgumentParser(prog=f"arc-{service.replace('_', '-')}")
    parser.add_argument("--port", type=int, help=f"port to listen on (default {default_port})")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--home", help="workspace directory (default $ARC_HOME or ./.arc)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "port": args.port,
            "host": args.host,
            "home": args.home,
            "port_file": args.port_file,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    settings = settings_cls(**overrides)
    if args.port is None and "port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"port": default_port})
    return settings
