"""The baseline of measure 8: the governance service as it is, except that its audit log
keeps nothing (no row, no chain, no anchor). Never a way to run governance: only the
benchmark starts it. ``python -m bench.noaudit_governance`` takes the service's flags."""

from __future__ import annotations

from typing import Any

from services.governance.__main__ import main as serve
from services.governance.audit import AuditLog, AuditRow


class NoAudit(AuditLog):
    def append_nowait(self, **_: Any) -> AuditRow:
        self._head_sequence += 1
        self._durable_sequence = self._head_sequence  # nothing to write, so nothing waits
        return AuditRow(self._head_sequence, "", "", "", "", "", "", "", "", "", "")


def main() -> None:
    serve(audit_log=NoAudit.for_workspace)  # the one thing this baseline changes


if __name__ == "__main__":
    main()
