"""What every ``arc`` command shares: the client it talks through, the exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.arc_client import Addresses, ArcClient

# The job `arc watch`, `arc evaluate` or `arc compare` needed ended without completing.
JOB_NOT_COMPLETED = 8


def client_for(args: argparse.Namespace) -> ArcClient:
    return ArcClient(
        Addresses.from_port_base(args.port_base), token=args.token, home=Path(args.home)
    )
